"""POST /v1/responses over the fake engine: the response object, the named and numbered stream events,
an error event mid-stream, and what the endpoint refuses (400, as OpenAI)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.errors import GenerationTimeout
from tests.conftest import RESPONSE_EVENTS_FIRST, RESPONSE_EVENTS_LAST_INCOMPLETE, assert_error, iter_sse
from tests.fakes import ScriptedEngine, decode_prompt

REPLY = "Once there was a unicorn who slept."


@pytest.fixture(autouse=True)
def scripted(engine: ScriptedEngine) -> None:
    engine.reply = lambda prompt: REPLY


def stream_events(api: TestClient, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with api.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        return [(event, json.loads(data)) for event, data in iter_sse(response) if event != "comment"]


def test_response_object(api: TestClient, engine: ScriptedEngine) -> None:
    body = {"model": "gpt-5.5", "instructions": "Be brief.", "input": "A story?", "max_output_tokens": 3}
    data = api.post("/v1/responses", json=body).json()
    assert data["id"].startswith("resp_") and data["object"] == "response" and data["model"] == "scripted-model"
    assert data["status"] == "incomplete" and data["incomplete_details"] == {"reason": "max_output_tokens"}
    [message] = data["output"]
    assert message["type"] == "message" and message["role"] == "assistant" and message["status"] == "incomplete"
    assert message["content"][0]["type"] == "output_text" and message["content"][0]["text"] == "Once there was"
    assert data["usage"]["output_tokens"] == 3 and data["instructions"] == "Be brief."
    assert decode_prompt(engine.submitted[-1]) == "<|system|>Be brief.\n<|user|>A story?\n<|assistant|>"

    finished = api.post("/v1/responses", json={"input": "A story?"}).json()
    assert finished["status"] == "completed" and finished["incomplete_details"] is None


def test_input_messages_with_text_parts(api: TestClient, engine: ScriptedEngine) -> None:
    body = {
        "input": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]},
        ]
    }
    assert api.post("/v1/responses", json=body).status_code == 200
    assert decode_prompt(engine.submitted[-1]) == "<|system|>Be brief.\n<|user|>Name a colour.\n<|assistant|>"


def test_stream_events_in_order_and_numbered(api: TestClient) -> None:
    events = stream_events(api, {"input": "A story?", "max_output_tokens": 4})
    types = [event for event, _ in events]
    assert types[:4] == RESPONSE_EVENTS_FIRST
    assert types[-4:] == RESPONSE_EVENTS_LAST_INCOMPLETE
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [data["type"] for _, data in events] == types  # the event name repeats the data's type
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    deltas = "".join(data["delta"] for event, data in events if event == "response.output_text.delta")
    final = events[-1][1]["response"]
    assert deltas == "Once there was a" == final["output"][0]["content"][0]["text"]
    assert events[0][1]["response"]["status"] == "in_progress" and events[0][1]["response"]["output"] == []


def test_failure_mid_stream_is_one_error_event(api: TestClient, engine: ScriptedEngine) -> None:
    engine.fail_after_tokens, engine.mid_stream_error = 3, GenerationTimeout("generation took too long")
    events = stream_events(api, {"input": "A story?"})
    assert any(event == "response.output_text.delta" for event, _ in events)
    last_event, last = events[-1]
    assert last_event == "error" and last["code"] == "generation_timeout" and last["request_id"]
    assert not any(event in ("response.completed", "response.incomplete") for event, _ in events)


def test_stored_responses_and_bad_input_are_400(api: TestClient) -> None:
    response = api.post("/v1/responses", json={"input": "Hi", "previous_response_id": "resp_123"})
    assert_error(response, 400, param="previous_response_id")
    assert_error(api.post("/v1/responses", json={"input": []}), 400, param="input")
    image = [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]
    assert_error(api.post("/v1/responses", json={"input": image}), 400)
    assert_error(api.post("/v1/responses", json={"input": "x" * 40_000}), 413, code="prompt_too_long")
