"""Chat sessions shared by two replicas (two apps over one Redis and one key prefix): a session
moves between them, turns never interleave, a failed turn changes nothing, an outage is a 503."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.errors import GenerationTimeout
from tests.api.conftest import fake_settings, release, running_app
from tests.conftest import assert_error, iter_sse, metric_value, poll
from tests.fakes import ScriptedEngine, decode_prompt
from tests.redis_server import RedisServer

KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key"}


class Replica:
    def __init__(self, engine: ScriptedEngine, client: TestClient) -> None:
        self.engine = engine
        self.client = client

    def chat(self, content: str, session_id: str, key: str = "alice", **fields: Any) -> Any:
        body = {"messages": [{"role": "user", "content": content}], "session_id": session_id, **fields}
        return self.client.post("/v1/chat", json=body, headers=auth(key))

    def history(self, session_id: str, key: str = "alice") -> list[dict[str, str]]:
        response = self.client.get(f"/v1/chat/sessions/{session_id}", headers=auth(key))
        assert response.status_code == 200, response.text
        messages: list[dict[str, str]] = response.json()["messages"]
        return messages


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[key]}"}


def start(stack: ExitStack, state: dict[str, Any], **sections: Any) -> Replica:
    settings = fake_settings(
        rate_limit={"enabled": False},
        security={"api_keys": [{"name": name, "key": key} for name, key in KEYS.items()]},
        state=state,
        **sections,
    )
    engine = ScriptedEngine()
    _, client = stack.enter_context(running_app(engine, settings))
    return Replica(engine, client)


@pytest.fixture
def pair(redis_server: RedisServer) -> Iterator[tuple[Replica, Replica]]:
    state = redis_server.settings(lock_ttl_s=2)
    with ExitStack() as stack:
        yield start(stack, state), start(stack, state, engine={"queue_timeout_s": 1})


def test_a_session_continues_on_another_replica_and_is_deleted_there(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    a.engine.reply = lambda prompt: "Nice to meet you, Ada."
    assert a.chat("My name is Ada.", "moving").status_code == 200
    answer = b.chat("What is my name?", "moving")
    assert answer.status_code == 200, answer.text
    prompt = decode_prompt(b.engine.submitted[-1])
    assert "My name is Ada." in prompt and "Nice to meet you, Ada." in prompt  # A's turn, in B's prompt
    assert a.history("moving") == b.history("moving")
    assert [m["role"] for m in b.history("moving")] == ["user", "assistant", "user", "assistant"]
    assert b.client.get("/status", headers=auth("alice")).json()["sessions"]["active"] >= 1
    assert poll(lambda: metric_value(b.client, "llm_chat_sessions") >= 1, timeout_s=5)

    assert b.client.delete("/v1/chat/sessions/moving", headers=auth("alice")).status_code == 204
    assert_error(a.client.get("/v1/chat/sessions/moving", headers=auth("alice")), 404, code="session_not_found")
    assert_error(b.client.delete("/v1/chat/sessions/moving", headers=auth("alice")), 404, code="session_not_found")


def test_a_session_belongs_to_its_key_on_every_replica(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    assert a.chat("Hello", "private").status_code == 200
    assert_error(b.client.get("/v1/chat/sessions/private", headers=auth("bob")), 404, code="session_not_found")
    assert_error(b.client.delete("/v1/chat/sessions/private", headers=auth("bob")), 404, code="session_not_found")
    assert_error(b.chat("Let me in", "private", key="bob"), 404, code="session_not_found")
    assert len(b.history("private")) == 2


def test_a_failed_or_abandoned_turn_leaves_the_history_as_it_was(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    assert a.chat("Hello", "kept").status_code == 200
    before = a.history("kept")

    b.engine.fail_after_tokens, b.engine.mid_stream_error = 2, GenerationTimeout("too slow")
    assert_error(b.chat("Tell me more.", "kept"), 504, code="generation_timeout")
    assert a.history("kept") == before

    body = {"messages": [{"role": "user", "content": "A long story."}], "session_id": "kept", "stream": True}
    with a.client.stream("POST", "/v1/chat", json=body, headers=auth("alice")) as response:
        assert next(event for event, _ in iter_sse(response) if event == "token") == "token"
    assert a.engine.aborted == [a.engine.submitted[-1].request_id]  # the client left mid-answer
    assert b.history("kept") == before

    b.engine.fail_after_tokens = None
    assert b.chat("Still there?", "kept").status_code == 200  # both turns let the session go
    assert len(a.history("kept")) == len(before) + 2


def test_turns_on_two_replicas_never_interleave(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    assert a.chat("First.", "one-at-a-time").status_code == 200
    a.engine.gate = asyncio.Event()
    a.engine.reply = lambda prompt: "Answer from A."
    with ThreadPoolExecutor(max_workers=2) as pool:
        on_a = pool.submit(a.chat, "Second, on A.", "one-at-a-time")
        try:
            assert poll(lambda: len(a.engine.submitted) == 2, timeout_s=10)
            # B waits for A's turn at most engine.queue_timeout_s (1 s here), then gives up.
            busy = b.chat("Meanwhile, on B.", "one-at-a-time")
            assert_error(busy, 409, code="session_busy")
            assert busy.headers["retry-after"] == "1"
            assert b.engine.submitted == []
            b.engine.reply = lambda prompt: "Answer from B."
            on_b = pool.submit(lambda: b.chat("Third, on B.", "one-at-a-time", stream=True))
        finally:
            release(a.client, a.engine.gate)
        assert on_a.result(timeout=10).status_code == 200
        assert on_b.result(timeout=10).status_code == 200
    # B started only after A's turn was stored: A's answer is in B's prompt, and in that order.
    assert "Answer from A." in decode_prompt(b.engine.submitted[-1])
    contents = [m["content"] for m in a.history("one-at-a-time")]
    assert contents[2:] == ["Second, on A.", "Answer from A.", "Third, on B.", "Answer from B."]


def test_redis_down_is_503_for_sessions_and_recovers(own_redis: RedisServer) -> None:
    state = own_redis.settings(lock_ttl_s=2, timeout_s=0.3)
    with ExitStack() as stack:
        a = start(stack, state)
        assert a.chat("Hello", "outage").status_code == 200
        own_redis.stop()
        for response in (
            a.chat("Are you there?", "outage"),
            a.chat("Streamed?", "outage", stream=True),  # refused before the stream starts: JSON
            a.client.get("/v1/chat/sessions/outage", headers=auth("alice")),
            a.client.delete("/v1/chat/sessions/outage", headers=auth("alice")),
        ):
            assert_error(response, 503, code="state_unavailable")
            assert int(response.headers["retry-after"]) >= 1
        stateless = {"messages": [{"role": "user", "content": "No session"}]}
        assert a.client.post("/v1/chat", json=stateless, headers=auth("alice")).status_code == 200
        assert a.client.get("/status", headers=auth("alice")).status_code == 200

        own_redis.start()  # empty: the test's Redis keeps nothing on disk
        assert poll(lambda: a.chat("Back again?", "outage").status_code == 200, timeout_s=10)
        assert a.history("outage")[0]["content"] == "Back again?"
        assert a.client.delete("/v1/chat/sessions/outage", headers=auth("alice")).status_code == 204


def test_redis_lost_before_the_commit_is_503_not_500(own_redis: RedisServer) -> None:
    state = own_redis.settings(lock_ttl_s=2, timeout_s=0.3)
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=1) as pool:
        a = start(stack, state)
        a.engine.gate = asyncio.Event()
        turn = pool.submit(a.chat, "Hello", "cut-off")
        assert poll(lambda: len(a.engine.submitted) == 1, timeout_s=10)
        own_redis.stop()
        release(a.client, a.engine.gate)
        assert_error(turn.result(timeout=10), 503, code="state_unavailable")
        own_redis.start()
        a.engine.gate = None
        assert poll(lambda: a.chat("Hello again", "cut-off").status_code == 200, timeout_s=10)


def test_a_stream_refused_by_the_store_says_so_in_json(own_redis: RedisServer) -> None:
    """A busy session answers a streamed turn before its stream starts: a JSON 409, not an event."""
    state = own_redis.settings(lock_ttl_s=2)
    with ExitStack() as stack:
        a = start(stack, state, engine={"queue_timeout_s": 0.2})
        own_redis.client().set(state["key_prefix"] + "sessions:lock:held", "another-replica", px=5000)
        response = a.chat("Hi", "held", stream=True)
        assert_error(response, 409, code="session_busy")
        assert json.loads(response.text)["error"]["param"] == "session_id"
