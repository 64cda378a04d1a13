"""Idempotency-Key on the generating POSTs: one generation per key and body, its answer replayed."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.idempotency import Idempotency
from app.core.config import IdempotencySettings
from app.core.errors import EngineOverloaded
from app.core.idempotency import MemoryIdempotencyStore
from tests.api.conftest import FakeClock, fake_settings, release, running_app
from tests.conftest import assert_error, metric_value, poll
from tests.fakes import ScriptedEngine

SAMPLED = {"prompt": "Tell me something", "temperature": 0.9}
"""Not cacheable: a repeat without the key would generate again."""
KEY = {"Idempotency-Key": "order-42"}

GENERATING = [
    ("/v1/generate", SAMPLED),
    ("/v1/chat", {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0.9}),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.9}),
    ("/v1/completions", {"model": "m", "prompt": "Hi", "temperature": 0.9}),
    ("/v1/responses", {"model": "m", "input": "Hi", "temperature": 0.9}),
    ("/generate", {"inputs": "Hi", "parameters": {"temperature": 0.9}}),
    ("/generate_stream", {"inputs": "Hi", "parameters": {"temperature": 0.9}}),
    ("/", {"inputs": "Hi", "parameters": {"temperature": 0.9}}),
]


@pytest.mark.parametrize(("path", "body"), GENERATING)
def test_a_repeat_gets_the_stored_answer_and_generates_nothing(
    api: TestClient, engine: ScriptedEngine, path: str, body: dict[str, Any]
) -> None:
    first = api.post(path, json=body, headers=KEY)
    assert first.status_code == 200, first.text
    generated = metric_value(api, "tokens_generated_total")
    again = api.post(path, json=body, headers=KEY)
    assert again.status_code == 200
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert len(engine.submitted) == 1
    assert metric_value(api, "tokens_generated_total") == generated


def test_without_the_key_every_request_generates(api: TestClient, engine: ScriptedEngine) -> None:
    api.post("/v1/generate", json=SAMPLED)
    api.post("/v1/generate", json=SAMPLED)
    assert len(engine.submitted) == 2


def test_a_streamed_answer_is_replayed_as_the_same_stream(api: TestClient, engine: ScriptedEngine) -> None:
    body = {**SAMPLED, "stream": True}
    first = api.post("/v1/generate", json=body, headers=KEY)
    again = api.post("/v1/generate", json=body, headers=KEY)
    assert first.headers["content-type"].startswith("text/event-stream")
    assert again.headers["content-type"] == first.headers["content-type"]
    assert "event: done" in again.text and again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert len(engine.submitted) == 1


def test_the_same_key_with_another_body_is_422(api: TestClient, engine: ScriptedEngine) -> None:
    api.post("/v1/generate", json=SAMPLED, headers=KEY)
    other = api.post("/v1/generate", json={**SAMPLED, "prompt": "Something else"}, headers=KEY)
    assert_error(other, 422, "idempotency_key_reused", "Idempotency-Key")
    elsewhere = api.post("/v1/completions", json={"model": "m", "prompt": "Tell me something"}, headers=KEY)
    assert_error(elsewhere, 422, "idempotency_key_reused")
    assert len(engine.submitted) == 1


def test_a_repeat_while_the_first_runs_is_409_then_replayed(api: TestClient, engine: ScriptedEngine) -> None:
    engine.gate = asyncio.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(api.post, "/v1/generate", json=SAMPLED, headers=KEY)
        try:
            assert poll(lambda: len(engine.submitted) == 1, timeout_s=10)
            running = api.post("/v1/generate", json=SAMPLED, headers=KEY)
            assert_error(running, 409, "idempotency_in_progress")
            assert running.headers["retry-after"] == "1"
        finally:
            release(api, engine.gate)
        answer = first.result(timeout=10)
    assert answer.status_code == 200
    assert api.post("/v1/generate", json=SAMPLED, headers=KEY).content == answer.content
    assert len(engine.submitted) == 1


def test_with_wait_a_repeat_waits_for_the_first_answer(engine: ScriptedEngine) -> None:
    settings = fake_settings(rate_limit={"enabled": False}, idempotency={"wait": True})
    with running_app(engine, settings) as (_, client), ThreadPoolExecutor(max_workers=2) as pool:
        engine.gate = asyncio.Event()
        first = pool.submit(client.post, "/v1/generate", json=SAMPLED, headers=KEY)
        assert poll(lambda: len(engine.submitted) == 1, timeout_s=10)
        second = pool.submit(client.post, "/v1/generate", json=SAMPLED, headers=KEY)
        release(client, engine.gate)
        answers = [first.result(timeout=10), second.result(timeout=10)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].content == answers[1].content and answers[1].headers["idempotent-replayed"] == "true"
    assert len(engine.submitted) == 1


def test_keys_are_scoped_per_api_key(engine: ScriptedEngine) -> None:
    keys = [{"name": "alice", "key": "alice-key-1"}, {"name": "bob", "key": "bob-key-22"}]
    settings = fake_settings(rate_limit={"enabled": False}, security={"api_keys": keys})
    with running_app(engine, settings) as (_, client):
        for api_key in ("alice-key-1", "bob-key-22", "alice-key-1"):
            response = client.post("/v1/generate", json=SAMPLED, headers={**KEY, "X-API-Key": api_key})
            assert response.status_code == 200
        assert_error(client.post("/v1/generate", json=SAMPLED, headers={**KEY, "X-API-Key": "wrong-key-3"}), 401)
    assert len(engine.submitted) == 2


def test_errors_are_not_stored(api: TestClient, engine: ScriptedEngine) -> None:
    engine.fail_on_submit = EngineOverloaded("queue full")
    assert_error(api.post("/v1/generate", json=SAMPLED, headers=KEY), 503, "overloaded")
    assert_error(api.post("/v1/generate", json={"prompt": ""}, headers=KEY), 422)
    engine.fail_on_submit = None
    ok = api.post("/v1/generate", json=SAMPLED, headers=KEY)
    assert ok.status_code == 200 and "idempotent-replayed" not in ok.headers
    assert len(engine.submitted) == 1


def test_a_stream_that_ended_in_an_error_is_not_stored(api: TestClient, engine: ScriptedEngine) -> None:
    engine.fail_after_tokens = 1
    body = {**SAMPLED, "stream": True}
    failed = api.post("/v1/generate", json=body, headers=KEY)
    assert failed.status_code == 200 and "event: error" in failed.text
    engine.fail_after_tokens = None
    again = api.post("/v1/generate", json=body, headers=KEY)
    assert "event: done" in again.text and "idempotent-replayed" not in again.headers
    assert len(engine.submitted) == 2


def test_a_replayed_chat_turn_is_appended_once(api: TestClient, engine: ScriptedEngine) -> None:
    body = {"messages": [{"role": "user", "content": "Remember me"}], "session_id": "s-1", "temperature": 0.9}
    first = api.post("/v1/chat", json=body, headers=KEY)
    again = api.post("/v1/chat", json=body, headers=KEY)
    assert first.status_code == again.status_code == 200 and again.content == first.content
    history = api.get("/v1/chat/sessions/s-1").json()["messages"]
    assert [m["role"] for m in history] == ["user", "assistant"]


def test_a_stored_answer_expires_after_the_ttl(engine: ScriptedEngine) -> None:
    clock = FakeClock()
    settings = fake_settings(rate_limit={"enabled": False}, idempotency={"ttl_seconds": 60})
    with running_app(engine, settings) as (app, client):
        app.state.idempotency = Idempotency(
            MemoryIdempotencyStore(IdempotencySettings(ttl_seconds=60), clock=clock), wait=False, wait_s=1
        )
        client.post("/v1/generate", json=SAMPLED, headers=KEY)
        clock.now += 59
        assert client.post("/v1/generate", json=SAMPLED, headers=KEY).headers["idempotent-replayed"] == "true"
        clock.now += 2
        assert "idempotent-replayed" not in client.post("/v1/generate", json=SAMPLED, headers=KEY).headers
    assert len(engine.submitted) == 2


def test_disabled_the_key_is_ignored(engine: ScriptedEngine) -> None:
    with running_app(engine, fake_settings(rate_limit={"enabled": False}, idempotency={"enabled": False})) as (_, c):
        c.post("/v1/generate", json=SAMPLED, headers=KEY)
        assert "idempotent-replayed" not in c.post("/v1/generate", json=SAMPLED, headers=KEY).headers
    assert len(engine.submitted) == 2


@pytest.mark.parametrize("value", [b"x" * 256, "caf\u00e9".encode(), b"tab\tin"])
def test_a_malformed_key_is_refused_naming_the_header(api: TestClient, value: bytes) -> None:
    headers = {"Idempotency-Key": value}
    assert_error(api.post("/v1/generate", json=SAMPLED, headers=headers), 422, "validation_error", "Idempotency-Key")
    openai = api.post("/v1/completions", json={"model": "m", "prompt": "Hi"}, headers=headers)
    assert_error(openai, 400, "invalid_request", "Idempotency-Key")


def test_the_header_is_documented_on_every_generating_route(api: TestClient) -> None:
    document = api.get("/openapi.json").json()
    for path, _ in GENERATING:
        operation = document["paths"][path]["post"]
        [header] = [p for p in operation["parameters"] if p["name"] == "Idempotency-Key"]
        assert header["in"] == "header" and not header["required"]
        [string] = [s for s in header["schema"]["anyOf"] if s["type"] == "string"]
        assert string["maxLength"] == 255 and string["pattern"]
        assert {"409", "422"} <= set(operation["responses"]), path
