"""Two replicas sharing one Redis (a real redis-server), each an app over its own scripted engine:
an answer made on one is a hit on the other, identical requests over both generate once, and a
Redis outage is a cache miss, never an error."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient

from tests.api.conftest import fake_settings, release, running_app
from tests.conftest import metric_value, poll
from tests.fakes import ScriptedEngine
from tests.redis_server import RedisServer

GREEDY = {"prompt": "Write one sentence.", "max_tokens": 8, "temperature": 0}


@contextmanager
def two_replicas(
    server: RedisServer, **state: Any
) -> Iterator[tuple[tuple[TestClient, ScriptedEngine], tuple[TestClient, ScriptedEngine]]]:
    settings = fake_settings(rate_limit={"enabled": False}, state=server.settings(**state))
    engine_a, engine_b = ScriptedEngine(), ScriptedEngine()
    with running_app(engine_a, settings) as (_, a), running_app(engine_b, settings) as (_, b):
        yield (a, engine_a), (b, engine_b)


def cache_stats(api: TestClient) -> dict[str, Any]:
    stats: dict[str, Any] = api.get("/status").json()["cache"]
    return stats


def test_an_answer_made_on_one_replica_is_a_hit_on_the_other(redis_server: RedisServer) -> None:
    with two_replicas(redis_server) as ((a, engine_a), (b, engine_b)):
        first = a.post("/v1/generate", json=GREEDY)
        assert first.headers["x-cache"] == "MISS" and first.json()["cached"] is False
        second = b.post("/v1/generate", json=GREEDY)
        assert second.status_code == 200, second.text
        assert second.headers["x-cache"] == "HIT" and second.json()["cached"] is True
        assert second.json()["generated_text"] == first.json()["generated_text"]
        assert second.json()["usage"] == first.json()["usage"]
        assert (len(engine_a.submitted), len(engine_b.submitted)) == (1, 0)
        assert metric_value(b, "tokens_generated_total") == 0
        assert metric_value(b, "llm_cache_requests_total", result="hit") == 1
        assert (cache_stats(b)["hits"], cache_stats(b)["size"]) == (1, 1)


def test_identical_requests_over_two_replicas_generate_once(redis_server: RedisServer) -> None:
    with two_replicas(redis_server) as ((a, engine_a), (b, engine_b)):
        engine_a.gate = asyncio.Event()  # the leader generates only once the others have joined it

        def send(api: TestClient) -> tuple[str, dict[str, Any]]:
            response = api.post("/v1/generate", json=GREEDY)
            assert response.status_code == 200, response.text
            return response.headers["x-cache"], response.json()

        with ThreadPoolExecutor(max_workers=5) as pool:
            leading = pool.submit(send, a)
            assert poll(lambda: engine_a.running == 1, timeout_s=10)
            sent = [leading, *(pool.submit(send, api) for api in (a, a, b, b))]
            try:
                # A: two followers of its own request; B: one follows A through Redis, one follows it.
                assert poll(lambda: [cache_stats(api)["hits"] for api in (a, b)] == [2, 2], timeout_s=10)
                assert not any(future.done() for future in sent)
            finally:
                release(a, engine_a.gate)  # whatever happened, no request is left hanging
            results = [future.result(timeout=10) for future in sent]
    assert sorted(header for header, _ in results) == ["HIT", "HIT", "HIT", "HIT", "MISS"]
    assert len({answer["generated_text"] for _, answer in results}) == 1
    assert (len(engine_a.submitted), len(engine_b.submitted)) == (1, 0)


def test_a_leader_that_fails_on_one_replica_leaves_the_other_to_generate(redis_server: RedisServer) -> None:
    with two_replicas(redis_server) as ((a, engine_a), (b, engine_b)):
        engine_a.gate = asyncio.Event()
        engine_a.fail_after_tokens = 0
        with ThreadPoolExecutor(max_workers=2) as pool:
            leading = pool.submit(a.post, "/v1/generate", json=GREEDY)
            assert poll(lambda: engine_a.running == 1, timeout_s=10)
            following = pool.submit(b.post, "/v1/generate", json=GREEDY)
            try:
                assert poll(lambda: cache_stats(b)["hits"] == 1, timeout_s=10)  # B follows A's generation
            finally:
                release(a, engine_a.gate)
            assert leading.result(timeout=10).status_code == 500
            followed = following.result(timeout=10)
    assert followed.status_code == 200 and followed.json()["generated_text"]
    assert len(engine_b.submitted) == 1


def test_redis_down_is_a_miss_not_an_error_and_recovery_needs_nothing(own_redis: RedisServer) -> None:
    with two_replicas(own_redis) as ((a, engine_a), (b, engine_b)):
        own_redis.stop()
        answers = [a.post("/v1/generate", json=GREEDY) for _ in range(2)]
        assert [response.status_code for response in answers] == [200, 200]
        assert [response.headers["x-cache"] for response in answers] == ["MISS", "HIT"]  # the local layer
        assert metric_value(a, "llm_state_backend_errors_total", operation="cache") >= 1
        other = b.post("/v1/generate", json=GREEDY)
        assert other.status_code == 200 and other.headers["x-cache"] == "MISS"

        own_redis.start()
        fresh = {**GREEDY, "prompt": "Write another sentence."}
        assert b.post("/v1/generate", json=fresh).headers["x-cache"] == "MISS"
        assert a.post("/v1/generate", json=fresh).headers["x-cache"] == "HIT"  # shared again
        assert (len(engine_a.submitted), len(engine_b.submitted)) == (1, 2)
