"""Chat sessions across replicas of the real model sharing one Redis: a session moves between
them, and a replica killed mid-turn leaves the session as it was, free again within the lock's expiry."""

from __future__ import annotations

import json
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import LiveServer, ServedProcess, free_port, iter_sse, make_settings, served_env, start_replicas
from tests.redis_server import RedisServer


def new_session() -> str:
    return f"replicas-{uuid.uuid4().hex}"


def chat(client: httpx.Client, content: str, session_id: str, **fields: Any) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": content}], "session_id": session_id, "max_tokens": 6, **fields}
    return client.post("/v1/chat", json={"temperature": 0, **body})


def history(client: httpx.Client, session_id: str) -> list[dict[str, str]]:
    response = client.get(f"/v1/chat/sessions/{session_id}")
    assert response.status_code == 200, response.text
    messages: list[dict[str, str]] = response.json()["messages"]
    return messages


def test_a_session_started_on_one_replica_continues_and_is_deleted_on_another(
    model_dir: Path, redis_server: RedisServer
) -> None:
    a, b = start_replicas(model_dir, redis_server.settings(), rate_limit={"enabled": False})
    session_id = new_session()
    try:
        with a.client() as on_a, b.client() as on_b:
            first = chat(on_a, "My name is Ada.", session_id)
            assert first.status_code == 200, first.text
            second = chat(on_b, "What is my name?", session_id)
            assert second.status_code == 200, second.text
            alone = on_b.post("/v1/chat", json={"messages": [{"role": "user", "content": "What is my name?"}]})
            # B's prompt held A's turn.
            assert second.json()["usage"]["prompt_tokens"] > alone.json()["usage"]["prompt_tokens"]
            stored = history(on_a, session_id)
            assert [m["content"] for m in stored] == [
                "My name is Ada.",
                first.json()["message"]["content"],
                "What is my name?",
                second.json()["message"]["content"],
            ]
            assert on_b.delete(f"/v1/chat/sessions/{session_id}").status_code == 204
            assert on_a.get(f"/v1/chat/sessions/{session_id}").json()["error"]["code"] == "session_not_found"
    finally:
        a.stop()
        b.stop()


def test_a_replica_killed_mid_turn_leaves_the_session_as_it_was_and_usable(
    model_dir: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    state = redis_server.settings(lock_ttl_s=2)
    port = free_port()
    env = served_env(
        model_dir,
        APP__PORT=str(port),
        RATE_LIMIT__ENABLED="false",
        STATE__BACKEND="redis",
        STATE__REDIS_URL=state["redis_url"],
        STATE__KEY_PREFIX=state["key_prefix"],
        STATE__LOCK_TTL_S="2",
    )
    a = ServedProcess([sys.executable, "-m", "app"], env, tmp_path, port).wait_healthy()
    b: LiveServer | None = None
    session_id = new_session()
    lock = f"{state['key_prefix']}sessions:lock:{session_id}"
    redis = redis_server.client()
    try:
        b = LiveServer(make_settings(model_dir, state=state, rate_limit={"enabled": False})).start().wait_healthy()
        with a.client() as on_a:
            assert chat(on_a, "My name is Ada.", session_id).status_code == 200
            long_turn = {
                "messages": [{"role": "user", "content": "Count from 1 to 500, separated by commas."}],
                "session_id": session_id,
                "max_tokens": 1000,
                "temperature": 0,
                "stream": True,
            }
            with on_a.stream("POST", "/v1/chat", json=long_turn) as response:
                assert response.status_code == 200
                # Held in a name: a dropped iterator would close the connection (a client that left).
                events = iter_sse(response)
                event = next(event for event, _ in events if event != "comment")
                assert event == "token"
                assert redis.exists(lock)  # the turn runs, holding the session
                assert a.stop(signal.SIGKILL) == -signal.SIGKILL

        with b.client() as on_b:
            before = history(on_b, session_id)
            assert len(before) == 2 and before[0] == {"role": "user", "content": "My name is Ada."}
            # B waits for the dead replica's lock to expire (within 2 s), then runs the turn.
            after = chat(on_b, "What is my name?", session_id)
            assert after.status_code == 200, after.text
            assert history(on_b, session_id) == [
                *before,
                {"role": "user", "content": "What is my name?"},
                {"role": "assistant", "content": after.json()["message"]["content"]},
            ]
            assert json.loads(after.text)["session_id"] == session_id
    finally:
        a.stop(signal.SIGKILL)
        if b is not None:
            b.stop()
