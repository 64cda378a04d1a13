"""Idempotency-Key across replicas sharing Redis: an answer given by one is replayed byte for
byte by another, which generates nothing; Redis down is a 503 the client can retry."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import fake_settings, release, running_replicas
from tests.conftest import assert_error, poll
from tests.fakes import ScriptedEngine
from tests.redis_server import RedisServer

SAMPLED = {"prompt": "Tell me something", "temperature": 0.9}
"""Not cacheable: only the stored answer can spare a repeat its generation."""
KEY = {"Idempotency-Key": "order-42"}

Replica = tuple[ScriptedEngine, TestClient]


def replicas(state: dict[str, Any], count: int = 2, **sections: Any) -> AbstractContextManager[list[Replica]]:
    return running_replicas(fake_settings(state=state, rate_limit={"enabled": False}, **sections), count)


@pytest.fixture
def pair(redis_server: RedisServer) -> Iterator[list[Replica]]:
    with replicas(redis_server.settings()) as pairs:
        yield pairs


@pytest.mark.parametrize("body", [SAMPLED, {**SAMPLED, "stream": True}], ids=["json", "stream"])
def test_an_answer_given_by_one_replica_is_replayed_by_another(pair: list[Replica], body: dict[str, Any]) -> None:
    (engine_a, a), (engine_b, b) = pair
    first = a.post("/v1/generate", json=body, headers=KEY)
    assert first.status_code == 200, first.text
    again = b.post("/v1/generate", json=body, headers=KEY)
    assert again.status_code == 200, again.text
    assert again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len(engine_a.submitted) == 1 and not engine_b.submitted


def test_a_key_reused_on_another_replica_with_another_body_is_422(pair: list[Replica]) -> None:
    (_, a), (engine_b, b) = pair
    assert a.post("/v1/generate", json=SAMPLED, headers=KEY).status_code == 200
    other = b.post("/v1/generate", json={**SAMPLED, "prompt": "Something else"}, headers=KEY)
    assert_error(other, 422, "idempotency_key_reused", "Idempotency-Key")
    assert not engine_b.submitted


def test_a_repeat_on_another_replica_while_the_first_runs_is_409(pair: list[Replica]) -> None:
    (engine_a, a), (engine_b, b) = pair
    engine_a.gate = asyncio.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(a.post, "/v1/generate", json=SAMPLED, headers=KEY)
        try:
            assert poll(lambda: len(engine_a.submitted) == 1, timeout_s=10)
            running = b.post("/v1/generate", json=SAMPLED, headers=KEY)
            assert_error(running, 409, "idempotency_in_progress")
            assert "retry-after" in running.headers
        finally:
            release(a, engine_a.gate)
        answer = first.result(timeout=10)
    assert answer.status_code == 200
    assert b.post("/v1/generate", json=SAMPLED, headers=KEY).content == answer.content
    assert not engine_b.submitted


def test_with_wait_a_repeat_on_another_replica_waits_for_the_first_answer(redis_server: RedisServer) -> None:
    with replicas(redis_server.settings(), idempotency={"wait": True}) as [(engine_a, a), (engine_b, b)]:
        engine_a.gate = asyncio.Event()
        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(a.post, "/v1/generate", json=SAMPLED, headers=KEY)
            assert poll(lambda: len(engine_a.submitted) == 1, timeout_s=10)
            second = pool.submit(b.post, "/v1/generate", json=SAMPLED, headers=KEY)
            release(a, engine_a.gate)
            answers = [first.result(timeout=10), second.result(timeout=10)]
        assert [answer.status_code for answer in answers] == [200, 200]
        assert answers[1].content == answers[0].content and answers[1].headers["idempotent-replayed"] == "true"
        assert not engine_b.submitted


def test_redis_down_refuses_a_keyed_request_with_503_and_serves_one_without_a_key(own_redis: RedisServer) -> None:
    with replicas(own_redis.settings(timeout_s=0.3), count=1) as [(engine, client)]:
        own_redis.stop()
        refused = client.post("/v1/generate", json=SAMPLED, headers=KEY)
        assert_error(refused, 503, "state_unavailable")
        assert "retry-after" in refused.headers
        assert not engine.submitted
        assert client.post("/v1/generate", json=SAMPLED).status_code == 200
        own_redis.start()
        first = client.post("/v1/generate", json=SAMPLED, headers=KEY)
        assert first.status_code == 200
        assert client.post("/v1/generate", json=SAMPLED, headers=KEY).content == first.content
