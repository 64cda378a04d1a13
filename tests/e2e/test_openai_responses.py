"""OpenAI's Responses API (the openai SDK's own README example) and ChatOpenAI on it."""

from __future__ import annotations

import openai
import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from tests.conftest import RESPONSE_EVENTS_FIRST, RESPONSE_EVENTS_LAST_INCOMPLETE, LiveServer

SERVED = "smollm2-135m-instruct"
STORY = "Write a one-sentence bedtime story about a unicorn."


@pytest.fixture
def sdk(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="any-key", max_retries=0)


def test_response_equals_the_chat_completion(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(
        model="gpt-5.5", instructions="Be brief.", input=STORY, max_output_tokens=10, temperature=0
    )
    assert response.id.startswith("resp_") and response.object == "response" and response.model == SERVED
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.usage is not None and response.usage.output_tokens == 10
    chat = sdk.chat.completions.create(
        model="x",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": STORY}],
        max_tokens=10,
        temperature=0,
    )
    assert response.output_text == chat.choices[0].message.content


def test_readme_streaming_example_events(sdk: openai.OpenAI) -> None:
    stream = sdk.responses.create(model="gpt-5.5", input=STORY, stream=True, max_output_tokens=8, temperature=0)
    events = list(stream)
    types = [event.type for event in events]
    assert types[:4] == RESPONSE_EVENTS_FIRST
    assert types[-4:] == RESPONSE_EVENTS_LAST_INCOMPLETE
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) >= 3
    final = events[-1]
    assert final.type == "response.incomplete" and final.response.output_text == "".join(deltas)
    whole = sdk.responses.create(model="x", input=STORY, max_output_tokens=8, temperature=0)
    assert whole.output_text == "".join(deltas)


def test_input_messages_with_text_parts(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(
        model="x",
        input=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]},
        ],
        max_output_tokens=6,
        temperature=0,
    )
    assert response.output_text and response.output[0].type == "message"


def test_stored_responses_raise_bad_request_in_the_sdk(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="x", input="Hi", previous_response_id="resp_123")
    assert caught.value.param == "previous_response_id"


def test_chat_openai_on_the_responses_api(server: LiveServer) -> None:
    llm = ChatOpenAI(
        base_url=f"{server.url}/v1", api_key="any-key", model="x", temperature=0, max_tokens=8, max_retries=0,
        use_responses_api=True,
    )  # fmt: skip
    messages = [SystemMessage("Be brief."), HumanMessage("What is the capital of France?")]
    answer = llm.invoke(messages)
    assert answer.text and answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] <= 8
    assert "".join(chunk.text for chunk in llm.stream(messages)) == answer.text
