"""The official openai SDK (sync and async) and LangChain's ChatOpenAI against the server, unchanged
but for base_url and key."""

from __future__ import annotations

import asyncio

import openai
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from tests.conftest import LiveServer

SERVED = "smollm2-135m-instruct"
QUESTION = "What is the capital of France?"


@pytest.fixture
def sdk(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="any-key", max_retries=0)


@pytest.fixture
def async_sdk(server: LiveServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="any-key", max_retries=0)


def test_sdk_chat_completion(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
        max_completion_tokens=8,
        temperature=0,
        seed=1,
        user="alice",
    )
    assert completion.id.startswith("chatcmpl-") and completion.model == SERVED
    assert completion.choices[0].message.role == "assistant" and completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 8


def test_sdk_chat_stream_prints_tokens_as_they_arrive(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=8,
        temperature=0,
        seed=5,  # still greedy; a cache key of its own, so the model streams it token by token
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 3
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8 and chunks[-1].choices == []
    whole = sdk.chat.completions.create(
        model="any", messages=[{"role": "user", "content": QUESTION}], max_tokens=8, temperature=0
    )
    assert "".join(pieces) == whole.choices[0].message.content


def test_sdk_legacy_completions_and_n(sdk: openai.OpenAI) -> None:
    completion = sdk.completions.create(model="x", prompt="Once upon a time", max_tokens=5, temperature=0, n=2)
    assert completion.object == "text_completion" and [c.index for c in completion.choices] == [0, 1]
    streamed = "".join(
        c.choices[0].text
        for c in sdk.completions.create(model="x", prompt="Once upon a time", max_tokens=5, temperature=0, stream=True)
        if c.choices
    )
    assert streamed == completion.choices[0].text


def test_sdk_models(sdk: openai.OpenAI) -> None:
    assert [m.id for m in sdk.models.list()] == [SERVED]
    assert sdk.models.retrieve(SERVED).id == SERVED
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("gpt-4")


def test_sdk_raises_bad_request_error_with_openai_error_object(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="x", messages=[], max_tokens=4)
    error = caught.value
    assert error.status_code == 400 and error.type == "invalid_request_error" and error.param == "messages"
    assert isinstance(error.body, dict) and set(error.body) == {"type", "code", "message", "param", "request_id"}
    assert error.request_id == error.body["request_id"]
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}], temperature=5)


def test_async_sdk_streaming_and_not(async_sdk: openai.AsyncOpenAI) -> None:
    async def run() -> tuple[str, str]:
        messages: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
        whole = await async_sdk.chat.completions.create(model="x", messages=messages, max_tokens=6, temperature=0)
        stream = await async_sdk.chat.completions.create(
            model="x", messages=messages, max_tokens=6, temperature=0, stream=True
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await async_sdk.close()
        return whole.choices[0].message.content or "", "".join(pieces)

    whole, streamed = asyncio.run(run())
    assert whole and whole == streamed


@pytest.fixture
def chat_openai(server: LiveServer) -> ChatOpenAI:
    return ChatOpenAI(base_url=f"{server.url}/v1", api_key="any-key", model="any", temperature=0, max_tokens=8,
                      max_retries=0)  # fmt: skip


def test_langchain_chat_openai_invoke_stream_and_async(chat_openai: ChatOpenAI) -> None:
    messages = [SystemMessage("Be brief."), HumanMessage(QUESTION)]
    answer = chat_openai.invoke(messages)
    assert isinstance(answer.content, str) and answer.content
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] <= 8
    assert answer.response_metadata["model_name"] == SERVED
    chunks = list(chat_openai.stream(messages))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(str(c.content) for c in chunks) == answer.content
    assert asyncio.run(chat_openai.ainvoke(messages)).content == answer.content
