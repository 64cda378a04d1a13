"""POST /v1/generate over the fake engine: body shape, parameters as the engine gets them, and the SSE
events (token, then one done or one error); keep-alives, admission errors, clients that leave."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.errors import EngineOverloaded, GenerationTimeout
from tests.api.conftest import fake_settings, release, running_app
from tests.conftest import assert_error, iter_sse, metric_value
from tests.fakes import ScriptedEngine

REPLY = "one two three four five six seven eight"


@pytest.fixture(autouse=True)
def scripted(engine: ScriptedEngine) -> None:
    engine.reply = lambda prompt: REPLY


def events_of(api: TestClient, body: dict[str, Any], **headers: str) -> list[tuple[str, Any]]:
    """The named events of a native stream (keep-alive comments left out), data parsed."""
    with api.stream("POST", "/v1/generate", json={**body, "stream": True}, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no" and response.headers["cache-control"] == "no-cache"
        return [(event, json.loads(data)) for event, data in iter_sse(response) if event != "comment"]


def test_response_shape_and_usage(api: TestClient) -> None:
    response = api.post("/v1/generate", json={"prompt": "Count:", "max_tokens": 3}, headers={"X-Request-ID": "r-1"})
    assert response.status_code == 200
    assert response.json() == {
        "generated_text": "one two three",
        "prompt": "Count:",
        "model": "scripted-model",
        "tokens_generated": 3,
        "finish_reason": "length",
        "cached": False,
        "usage": {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9},
        "request_id": "r-1",
    }
    assert response.headers["x-request-id"] == "r-1" and float(response.headers["x-process-time"]) >= 0
    assert response.headers["x-cache"] == "MISS"


def test_a_short_answer_finishes_with_stop(api: TestClient) -> None:
    body = api.post("/v1/generate", json={"prompt": "Count:", "max_tokens": 100}).json()
    assert body["finish_reason"] == "stop" and body["tokens_generated"] == 8


def test_parameters_reach_the_engine_with_config_defaults_and_caps(api: TestClient, engine: ScriptedEngine) -> None:
    body = {"prompt": "Hi", "max_tokens": 10**6, "temperature": 0.5, "top_p": 0.9, "top_k": 7,
            "repetition_penalty": 1.3, "stop": "six", "seed": 42}  # fmt: skip
    assert api.post("/v1/generate", json=body).json()["generated_text"] == "one two three four five "
    params = engine.submitted[-1].params
    assert params.max_tokens == 1024  # model.max_tokens in config.yml
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty, params.seed) == (
        0.5, 0.9, 7, 1.3, 42,
    )  # fmt: skip
    assert params.stop == ("six",)
    api.post("/v1/generate", json={"prompt": "Hi"})
    defaults = engine.submitted[-1].params
    assert (defaults.max_tokens, defaults.temperature, defaults.seed) == (256, 0.7, None)  # config.yml defaults


def test_max_tokens_is_capped_by_the_room_left_in_the_context(api: TestClient, engine: ScriptedEngine) -> None:
    prompt = "x" * 4090  # the fake model's window is 4096 byte tokens
    assert api.post("/v1/generate", json={"prompt": prompt, "max_tokens": 500}).status_code == 200
    assert engine.submitted[-1].params.max_tokens == 6


def test_stream_is_token_events_then_one_done_equal_to_the_plain_answer(api: TestClient) -> None:
    body = {"prompt": "Count:", "max_tokens": 6}
    events = events_of(api, body)
    names = [name for name, _ in events]
    assert names[-1] == "done" and names.count("done") == 1 and set(names[:-1]) == {"token"}
    assert len(names) >= 4  # streamed as it comes, not held to the end
    streamed = "".join(data["text"] for name, data in events if name == "token")
    done = events[-1][1]
    plain = api.post("/v1/generate", json=body).json()
    assert streamed == done["generated_text"] == plain["generated_text"] == "one two three four five six"
    assert {k: v for k, v in done.items() if k != "request_id"} == {k: v for k, v in plain.items() if k != "request_id"}


def test_without_output_redaction_every_token_is_its_own_event(engine: ScriptedEngine) -> None:
    """The output PII filter holds back a word that could still grow into a match; off, nothing waits."""
    settings = fake_settings(rate_limit={"enabled": False}, pii={"redact_output": False})
    with running_app(engine, settings) as (_, api):
        events = events_of(api, {"prompt": "Count:", "max_tokens": 5})
    assert [data["text"] for name, data in events if name == "token"] == ["one", " two", " three", " four", " five"]


def test_failure_mid_stream_is_one_error_event(api: TestClient, engine: ScriptedEngine) -> None:
    engine.fail_after_tokens, engine.mid_stream_error = 4, GenerationTimeout("generation took too long")
    events = events_of(api, {"prompt": "Count:"}, **{"X-Request-ID": "cut-1"})
    names = [name for name, _ in events]
    assert names[0] == "token" and names[-1] == "error" and names.count("error") == 1 and "done" not in names
    assert "".join(data["text"] for name, data in events if name == "token").startswith("one two three")
    assert events[-1][1] == {
        "error": {
            "type": "timeout_error",
            "code": "generation_timeout",
            "message": "generation took too long",
            "param": None,
            "request_id": "cut-1",
        }
    }


def test_unexpected_failure_mid_stream_is_an_error_event_without_details(
    api: TestClient, engine: ScriptedEngine
) -> None:
    engine.fail_after_tokens = 2  # a RuntimeError: a bug, whose text must not reach the client
    events = events_of(api, {"prompt": "Count:"})
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["code"] == "internal_error" and "scripted" not in json.dumps(events[-1][1])


@pytest.mark.parametrize("stream", [False, True])
def test_admission_error_is_plain_json_even_when_streamed(
    api: TestClient, engine: ScriptedEngine, stream: bool
) -> None:
    engine.fail_on_submit = EngineOverloaded("too many requests are waiting; retry shortly")
    response = api.post("/v1/generate", json={"prompt": "Count:", "stream": stream})
    assert_error(response, 503, code="overloaded")
    assert response.headers["retry-after"] == "1"


def test_deadline_before_the_first_token_is_504(api: TestClient, engine: ScriptedEngine) -> None:
    engine.fail_after_tokens, engine.mid_stream_error = 0, GenerationTimeout("generation took too long")
    assert_error(api.post("/v1/generate", json={"prompt": "Count:"}), 504, code="generation_timeout")


@pytest.fixture
def held(engine: ScriptedEngine) -> Iterator[tuple[TestClient, ScriptedEngine]]:
    """A keep-alive every few milliseconds, and an engine that holds every generation at its gate."""
    settings = fake_settings(rate_limit={"enabled": False}, engine={"sse_ping_s": 0.01})
    with running_app(engine, settings) as (_, api):
        engine.gate = asyncio.Event()  # after start-up: the warm-up generation must pass
        yield api, engine


def test_keep_alive_comments_flow_while_the_engine_holds_the_request(held: tuple[TestClient, ScriptedEngine]) -> None:
    api, engine = held
    assert engine.gate is not None
    with api.stream("POST", "/v1/generate", json={"prompt": "Count:", "max_tokens": 2, "stream": True}) as response:
        events = iter_sse(response)
        assert next(events)[0] == "comment"  # nothing generated yet, the connection is kept alive
        release(api, engine.gate)
        names = [event for event, _ in events if event != "comment"]
    assert names[-1] == "done"


def test_a_client_that_leaves_mid_stream_aborts_its_generation(api: TestClient, engine: ScriptedEngine) -> None:
    before = metric_value(api, "llm_requests_rejected_total", reason="cancelled")
    with api.stream("POST", "/v1/generate", json={"prompt": "Count:", "stream": True}) as response:
        assert next(event for event, _ in iter_sse(response)) == "token"
    assert engine.aborted == [engine.submitted[-1].request_id] and engine.running == 0
    assert metric_value(api, "llm_requests_rejected_total", reason="cancelled") == before + 1
    assert api.get("/health").status_code == 200
