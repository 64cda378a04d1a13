"""Two replicas of the real model sharing one Redis: turns racing on both never interleave; with
Redis stopped mid-run every feature gives its documented answer (README, "Running several
replicas"), none a 500 and none hanging; with Redis back, everything works without a restart."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import assert_error, free_port, metric_value, start_replicas
from tests.e2e.test_replicas_sessions import chat, history, new_session
from tests.redis_server import RedisServer

BOUND_S = 5.0
"""Far above the few Redis calls of one request (each bounded by state.timeout_s, 0.5 s here),
far below a hung connection."""


def within_bound(call: Callable[[], httpx.Response]) -> httpx.Response:
    started = time.monotonic()
    response = call()
    assert time.monotonic() - started < BOUND_S, f"{response.request.url} took longer than {BOUND_S} s"
    assert response.status_code != 500, response.text
    return response


def test_turns_racing_on_two_replicas_never_interleave(model_dir: Path, redis_server: RedisServer) -> None:
    a, b = start_replicas(model_dir, redis_server.settings(), rate_limit={"enabled": False})
    session_id = new_session()
    try:
        with a.client() as on_a, b.client() as on_b:
            assert chat(on_a, "Hello there.", session_id).status_code == 200
            questions = {"A": "Tell me about rivers.", "B": "Tell me about mountains."}
            with ThreadPoolExecutor(2) as pool:
                racing = {
                    name: pool.submit(chat, client, questions[name], session_id, max_tokens=24)
                    for name, client in (("A", on_a), ("B", on_b))
                }
                answers = {name: future.result() for name, future in racing.items()}
            # The second turn waited for the first (both answer), whichever replica got the lock first.
            assert {name: r.status_code for name, r in answers.items()} == {"A": 200, "B": 200}, answers
            stored = history(on_b, session_id)
            assert [m["role"] for m in stored] == ["user", "assistant"] * 3
            contents = [m["content"] for m in stored]
            for name, response in answers.items():
                asked_at = contents.index(questions[name])
                assert contents[asked_at + 1] == response.json()["message"]["content"]
            earlier, later = sorted(answers.values(), key=lambda r: contents.index(questions_of(r, questions)))
            # The later turn's prompt held the earlier turn, question and answer.
            assert later.json()["usage"]["prompt_tokens"] > earlier.json()["usage"]["prompt_tokens"]
    finally:
        a.stop()
        b.stop()


def questions_of(response: httpx.Response, questions: dict[str, str]) -> str:
    sent = response.request.read()
    return next(q for q in questions.values() if q.encode() in sent)


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """Redis as deployed (deploy/): its append-only file keeps the sessions across a restart."""
    server = RedisServer(free_port(), data_dir=tmp_path).start()
    yield server
    server.stop()


def test_redis_stopped_mid_run_gives_the_documented_answers_and_returns_by_itself(
    model_dir: Path, persistent_redis: RedisServer
) -> None:
    # fail_open, so that what each feature does shows past the rate limiter (fail_closed, the
    # default, answers every limited request 503 state_unavailable: tests/api/test_shared_limits.py).
    state = persistent_redis.settings(timeout_s=0.5, on_error="fail_open")
    a, b = start_replicas(model_dir, state, rate_limit={"requests_per_minute": 6000, "burst_size": 1000})
    session_id = new_session()
    stateless: dict[str, Any] = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
    try:
        with a.client() as on_a, b.client() as on_b:
            assert chat(on_a, "My name is Ada.", session_id).status_code == 200
            before = history(on_b, session_id)
            persistent_redis.stop()
            for client in (on_a, on_b):
                assert within_bound(lambda c=client: c.post("/v1/chat", json=stateless)).status_code == 200
                for refused in (
                    within_bound(lambda c=client: chat(c, "What is my name?", session_id)),
                    within_bound(lambda c=client: c.get(f"/v1/chat/sessions/{session_id}")),
                    within_bound(
                        lambda c=client: c.post(
                            "/v1/generate",
                            json={"prompt": "Count to three.", "max_tokens": 4},
                            headers={"Idempotency-Key": uuid.uuid4().hex},
                        )
                    ),
                    within_bound(lambda c=client: c.get("/v1/usage")),
                ):
                    assert_error(refused, 503, "state_unavailable")
                    assert int(refused.headers["retry-after"]) > 0
                health = within_bound(lambda c=client: c.get("/health"))
                assert health.status_code == 200 and health.json()["state"] == "unavailable"
                assert metric_value(client, "llm_state_backend_up") == 0
                assert metric_value(client, "llm_state_backend_errors_total", operation="sessions") > 0

            persistent_redis.start()
            assert on_a.get("/health").json()["state"] == "ok"
            again = chat(on_b, "What is my name?", session_id)
            assert again.status_code == 200, again.text
            assert history(on_a, session_id) == [
                *before,
                {"role": "user", "content": "What is my name?"},
                {"role": "assistant", "content": again.json()["message"]["content"]},
            ]
            assert "x-ratelimit-limit" in on_b.post("/v1/chat", json=stateless).headers
            assert metric_value(on_b, "llm_state_backend_up") == 1
    finally:
        a.stop()
        b.stop()
