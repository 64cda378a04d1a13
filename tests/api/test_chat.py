"""POST /v1/chat and the session resource: history in the prompt, atomic turns, deletion."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.core.errors import EngineOverloaded, GenerationTimeout
from tests.api.conftest import fake_settings, release, running_app
from tests.conftest import assert_error, iter_sse, poll
from tests.fakes import ScriptedEngine, decode_prompt


def chat(api: TestClient, content: str, session_id: str | None = None, **fields: Any) -> Any:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": content}], "max_tokens": 6, **fields}
    if session_id is not None:
        body["session_id"] = session_id
    return api.post("/v1/chat", json=body)


def history(api: TestClient, session_id: str) -> list[dict[str, str]]:
    response = api.get(f"/v1/chat/sessions/{session_id}")
    assert response.status_code == 200, response.text
    messages: list[dict[str, str]] = response.json()["messages"]
    return messages


@pytest.fixture
def app_and_client(engine: ScriptedEngine) -> Any:
    # A session left held would make the next turn wait this long, then answer 409.
    with running_app(engine, fake_settings(rate_limit={"enabled": False}, engine={"queue_timeout_s": 2})) as pair:
        yield pair


def test_chat_without_session(api: TestClient, engine: ScriptedEngine) -> None:
    engine.reply = lambda prompt: "Four, of course."
    response = chat(api, "What is 2+2?")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "message", "model", "tokens_generated", "finish_reason", "cached", "session_id", "usage", "request_id",
    }  # fmt: skip
    assert body["message"] == {"role": "assistant", "content": "Four, of course."}
    assert body["session_id"] is None and body["model"] == "scripted-model" and body["finish_reason"] == "stop"
    prompt = decode_prompt(engine.submitted[-1])
    assert prompt == "<|user|>What is 2+2?\n<|assistant|>"  # the tokenizer's own chat template
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 3, "total_tokens": len(prompt) + 3}
    assert body["request_id"] == response.headers["x-request-id"]


def test_session_history_grows_turn_by_turn_and_is_used(api: TestClient, engine: ScriptedEngine) -> None:
    engine.reply = lambda prompt: f"Answer number {prompt.count('<|user|>')}."
    first = chat(api, "My name is Ada.", "ada").json()
    assert first["session_id"] == "ada"
    stored = api.get("/v1/chat/sessions/ada").json()
    assert stored["session_id"] == "ada"
    assert stored["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Answer number 1."},
    ]
    assert stored["expires_at"] > time.time()

    second = chat(api, "What is my name?", "ada").json()
    assert second["message"]["content"] == "Answer number 2."
    assert decode_prompt(engine.submitted[-1]) == (
        "<|user|>My name is Ada.\n<|assistant|>Answer number 1.\n<|user|>What is my name?\n<|assistant|>"
    )
    assert [m["content"] for m in history(api, "ada")[2:]] == ["What is my name?", "Answer number 2."]


def test_client_messages_of_a_turn_are_kept_in_order(api: TestClient, engine: ScriptedEngine) -> None:
    messages = [
        {"role": "system", "content": "Answer with one word."},
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ]
    assert api.post("/v1/chat", json={"messages": messages, "session_id": "multi"}).status_code == 200
    assert decode_prompt(engine.submitted[-1]) == (
        "<|system|>Answer with one word.\n<|user|>Name a color.\n<|assistant|>Blue.\n<|user|>Another one?\n"
        "<|assistant|>"
    )
    assert history(api, "multi")[:4] == messages


def test_delete_forgets_the_session(api: TestClient) -> None:
    assert chat(api, "Hello", "gone-soon").status_code == 200
    response = api.delete("/v1/chat/sessions/gone-soon")
    assert response.status_code == 204 and response.content == b""
    assert_error(api.get("/v1/chat/sessions/gone-soon"), 404, code="session_not_found")
    assert_error(api.delete("/v1/chat/sessions/gone-soon"), 404, code="session_not_found")


def test_unknown_or_malformed_session_id(api: TestClient) -> None:
    assert_error(api.get("/v1/chat/sessions/never-made"), 404, code="session_not_found")
    assert_error(api.delete("/v1/chat/sessions/never-made"), 404, code="session_not_found")
    assert_error(api.get("/v1/chat/sessions/bad%20id"), 422)


FAILURES = {
    "context too long": (lambda engine: None, {"content": "1 " * 3000}, 400, "context_length_exceeded"),
    "prompt too long": (lambda engine: None, {"content": "x" * 40_000}, 413, "prompt_too_long"),
    "engine overloaded": (
        lambda engine: setattr(engine, "fail_on_submit", EngineOverloaded("full")),
        {},
        503,
        "overloaded",
    ),
    "deadline mid-answer": (
        lambda engine: (
            setattr(engine, "fail_after_tokens", 2),
            setattr(engine, "mid_stream_error", GenerationTimeout("too slow")),
        ),
        {},
        504,
        "generation_timeout",
    ),
}


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
def test_failed_turn_leaves_history_as_it_was(api: TestClient, engine: ScriptedEngine, failure: Any) -> None:
    arrange, fields, status, code = failure
    assert chat(api, "Hello", "kept").status_code == 200
    before = history(api, "kept")
    arrange(engine)
    assert_error(chat(api, fields.get("content", "Tell me more."), "kept"), status, code=code)
    assert history(api, "kept") == before

    engine.fail_on_submit, engine.fail_after_tokens = None, None
    assert chat(api, "Still there?", "kept").status_code == 200  # the session's turn lock was released
    assert len(history(api, "kept")) == len(before) + 2


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
def test_failed_first_turn_creates_no_session(api: TestClient, engine: ScriptedEngine, failure: Any) -> None:
    arrange, fields, status, code = failure
    arrange(engine)
    assert_error(chat(api, fields.get("content", "Hello"), "never-born"), status, code=code)
    assert_error(api.get("/v1/chat/sessions/never-born"), 404, code="session_not_found")


def test_unexpected_failure_mid_answer_leaves_history_as_it_was(api: TestClient, engine: ScriptedEngine) -> None:
    assert chat(api, "Hello", "bug").status_code == 200
    before = history(api, "bug")
    engine.fail_after_tokens = 2  # a plain RuntimeError: a bug, not a ServiceError
    response = chat(api, "Tell me more.", "bug")
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
    assert "Traceback" not in response.text and "scripted failure" not in response.text
    assert history(api, "bug") == before


def test_unexpected_failure_still_echoes_the_request_id(api: TestClient, engine: ScriptedEngine) -> None:
    engine.fail_after_tokens = 2
    response = api.post("/v1/generate", json={"prompt": "hi"}, headers={"X-Request-ID": "trace-500"})
    assert_error(response, 500, code="internal_error")
    assert response.headers["x-request-id"] == "trace-500"


def stream_turn(api: TestClient, content: str, session_id: str) -> list[tuple[str, Any]]:
    body = {"messages": [{"role": "user", "content": content}], "session_id": session_id, "stream": True}
    with api.stream("POST", "/v1/chat", json=body) as response:
        assert response.status_code == 200
        return [(event, json.loads(data)) for event, data in iter_sse(response) if event != "comment"]


def test_chat_stream_commits_the_turn(api: TestClient, engine: ScriptedEngine) -> None:
    engine.reply = lambda prompt: "Hello there, streamed friend."
    events = stream_turn(api, "Hi!", "sse")
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"token"}
    done = events[-1][1]
    streamed = "".join(data["text"] for name, data in events if name == "token")
    assert streamed == "Hello there, streamed friend." and done["session_id"] == "sse"
    assert done["message"] == {"role": "assistant", "content": streamed}
    assert history(api, "sse")[-1] == {"role": "assistant", "content": streamed}


def test_failure_mid_stream_leaves_history_as_it_was(api: TestClient, engine: ScriptedEngine) -> None:
    assert chat(api, "Hello", "cut").status_code == 200
    before = history(api, "cut")
    engine.fail_after_tokens, engine.mid_stream_error = 2, GenerationTimeout("too slow")
    events = stream_turn(api, "Tell me more.", "cut")
    names = [name for name, _ in events]
    assert names[0] == "token" and names[-1] == "error" and "done" not in names
    assert events[-1][1]["error"]["code"] == "generation_timeout"
    assert history(api, "cut") == before


def test_disconnect_mid_stream_keeps_history_and_aborts(app_and_client: Any, engine: ScriptedEngine) -> None:
    _, api = app_and_client
    assert chat(api, "Hello", "left").status_code == 200
    before = history(api, "left")
    body = {"messages": [{"role": "user", "content": "Tell me a story."}], "session_id": "left", "stream": True}
    with api.stream("POST", "/v1/chat", json=body) as response:
        events = iter_sse(response)
        assert next(event for event, _ in events if event == "token") == "token"
    # leaving the block closed the connection; the client waits until the app has handled that
    leaving = engine.submitted[-1].request_id
    assert engine.aborted == [leaving]
    assert history(api, "left") == before
    # Were the session still held, this turn would wait and end in 409 session_busy.
    assert chat(api, "Are you there?", "left").status_code == 200


def test_a_turn_waits_for_the_running_one_then_is_busy(engine: ScriptedEngine) -> None:
    settings = fake_settings(rate_limit={"enabled": False}, engine={"queue_timeout_s": 0.2})
    with running_app(engine, settings) as (_, api), ThreadPoolExecutor(max_workers=1) as pool:
        engine.gate = asyncio.Event()
        first = pool.submit(chat, api, "Hello", "one-turn")
        try:
            assert poll(lambda: len(engine.submitted) == 1, timeout_s=10)
            busy = chat(api, "Me too", "one-turn")
            assert_error(busy, 409, code="session_busy", param="session_id")
            assert busy.headers["retry-after"] == "1"
            assert len(engine.submitted) == 1
        finally:
            release(api, engine.gate)
        assert first.result(timeout=10).status_code == 200
        assert chat(api, "Me too", "one-turn").status_code == 200
        assert [m["content"] for m in history(api, "one-turn")][::2] == ["Hello", "Me too"]


def test_session_ids_are_not_shared_between_apps(engine: ScriptedEngine) -> None:
    """Sessions live in the app that made them (each test app starts empty)."""
    settings = fake_settings(rate_limit={"enabled": False})
    with running_app(engine, settings) as (_, first):
        assert chat(first, "Hello", "mine").status_code == 200
    with running_app(ScriptedEngine(), settings) as (_, second):
        assert_error(second.get("/v1/chat/sessions/mine"), 404, code="session_not_found")


def test_app_state_holds_one_session_store(app_and_client: tuple[FastAPI, TestClient]) -> None:
    app, api = app_and_client
    assert chat(api, "Hello", "counted").status_code == 200
    assert len(app.state.sessions) == 1
    assert api.get("/status").json()["sessions"]["active"] == 1
