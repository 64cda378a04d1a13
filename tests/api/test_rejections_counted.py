"""Every rejection is counted once in llm_requests_rejected_total{reason}, however it reaches the client."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from app.core.errors import EngineOverloaded, GenerationTimeout
from tests.conftest import assert_error, iter_sse, metric_value
from tests.fakes import ScriptedEngine


def rejected(api: TestClient, reason: str) -> float:
    return metric_value(api, "llm_requests_rejected_total", reason=reason)


@pytest.mark.parametrize("stream", [False, True])
def test_an_admission_error_is_a_plain_error_counted_once(
    api: TestClient, engine: ScriptedEngine, stream: bool
) -> None:
    engine.fail_on_submit = EngineOverloaded("too many requests are waiting")
    before = rejected(api, "overloaded")
    response = api.post("/v1/generate", json={"prompt": "hello", "stream": stream})
    assert_error(response, 503, code="overloaded")
    assert response.headers["retry-after"] == "1"
    assert rejected(api, "overloaded") == before + 1


def test_an_error_during_generation_is_counted_once(api: TestClient, engine: ScriptedEngine) -> None:
    engine.fail_after_tokens, engine.mid_stream_error = 1, GenerationTimeout("generation took too long")
    before = rejected(api, "timeout"), rejected(api, "cancelled")
    assert_error(api.post("/v1/generate", json={"prompt": "hello"}), 504, code="generation_timeout")
    assert (rejected(api, "timeout"), rejected(api, "cancelled")) == (before[0] + 1, before[1])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/generate", {"prompt": "hello"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hello"}]}),
        ("/generate_stream", {"inputs": "hello"}),
        ("/v1/responses", {"input": "hello"}),
    ],
)
def test_an_error_told_inside_a_stream_is_counted_once(
    api: TestClient, engine: ScriptedEngine, path: str, body: dict[str, object]
) -> None:
    engine.fail_after_tokens, engine.mid_stream_error = 1, GenerationTimeout("generation took too long")
    before = rejected(api, "timeout"), rejected(api, "cancelled")
    with api.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        events = list(iter_sse(response))
    assert any("generation" in data and "long" in data for _, data in events), events
    assert (rejected(api, "timeout"), rejected(api, "cancelled")) == (before[0] + 1, before[1])


def test_an_engine_failure_is_no_cancellation(api: TestClient, engine: ScriptedEngine) -> None:
    engine.fail_after_tokens = 1  # a RuntimeError: told as generation_failed, no rejection reason
    before = rejected(api, "cancelled")
    with api.stream("POST", "/v1/generate", json={"prompt": "hello", "stream": True}) as response:
        errors = [json.loads(data) for event, data in iter_sse(response) if event == "error"]
    assert [e["error"]["code"] for e in errors] == ["internal_error"]
    assert rejected(api, "cancelled") == before


def test_validation_and_undecodable_bodies_are_counted(api: TestClient) -> None:
    before = rejected(api, "validation")
    assert_error(api.post("/v1/generate", json={"prompt": "hi", "temperature": "hot"}), 422)
    not_utf8 = b'{"prompt": "\xff"}'
    assert_error(api.post("/v1/generate", content=not_utf8, headers={"content-type": "application/json"}), 400)
    assert_error(api.post("/v1/generate", content=b"x" * 2_000_000), 413, code="payload_too_large")
    assert rejected(api, "validation") == before + 3


def test_a_method_the_route_lacks_is_405_in_the_error_shape(api: TestClient) -> None:
    response = api.get("/v1/generate")
    assert_error(response, 405, code="method_not_allowed")
    assert response.headers["allow"] == "POST"
