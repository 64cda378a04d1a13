"""The response cache and single flight shared through Redis (a real redis-server): answers and
leases seen by two caches under one key prefix, as two replicas see them; the local layer; what a
failed, departed or crashed leader leaves behind; Redis down, hung and back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from app.core.cache import Follower, ResponseCache
from app.core.config import CacheSettings, StateSettings
from app.core.metrics import LLMMetrics
from app.core.redis_cache import JsonCodec, RedisResponseCache
from app.core.redis_state import RedisState
from app.services.generation import Completion
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio

KEY = "a" * 64
ANSWER = Completion("Once upon a time.", "stop", prompt_tokens=5, completion_tokens=4, cached=True)
PATIENCE_S = 30.0
"""Far longer than any of these tests waits: a follower that returns did not run out of patience."""


@asynccontextmanager
async def replicas(
    server: RedisServer,
    count: int = 2,
    metrics: LLMMetrics | None = None,
    cache: dict[str, Any] | None = None,
    **state: Any,
) -> AsyncIterator[list[RedisResponseCache[Completion]]]:
    """`count` caches sharing one key prefix of their own, each with its own connection.

    Redis calls get 5 s unless a test says otherwise: on a busy 2-core machine a healthy call
    can miss the default half second, and the cache then takes Redis for down (a miss)."""
    section = StateSettings.model_validate(server.settings(**{"timeout_s": 5.0, **state}))
    connections = [RedisState(section, metrics) for _ in range(count)]
    try:
        yield [RedisResponseCache(CacheSettings(**(cache or {})), conn, JsonCodec(Completion)) for conn in connections]
    finally:
        for connection in connections:
            await connection.close()


def errors(metrics: LLMMetrics) -> float:
    return metrics.registry.get_sample_value("llm_state_backend_errors_total", {"operation": "cache"}) or 0.0


async def lead(cache: RedisResponseCache[Completion], key: str = KEY) -> Any:
    seat = await cache.board(key)
    assert seat.leads and seat.answer is None
    return seat


async def gone(server: RedisServer, key: str, real_s: float = 5.0) -> None:
    """Until Redis no longer has `key` (a release runs in the background)."""
    deadline = time.monotonic() + real_s
    while server.client().exists(key):
        assert time.monotonic() < deadline, f"{key} is still there"
        await asyncio.sleep(0.01)


async def test_an_answer_made_on_one_replica_is_a_hit_on_the_other(redis_server: RedisServer) -> None:
    async with replicas(redis_server) as (a, b):
        leader = await lead(a)
        await leader.land(ANSWER)
        leader.leave()
        seat = await b.board(KEY)
        assert seat.answer == ANSWER and not seat.leads
        assert b.local.get(KEY) == ANSWER  # kept locally too
        assert (b.stats().hits, b.stats().misses, b.stats().size) == (1, 0, 1)
        assert (a.stats().hits, a.stats().misses) == (0, 1)
        assert redis_server.client().exists(a.lease_key(KEY)) == 0


async def test_the_local_layer_answers_without_redis(redis_server: RedisServer) -> None:
    async with replicas(redis_server) as (a, b):
        leader = await lead(a)
        await leader.land(ANSWER)
        leader.leave()
        assert (await b.board(KEY)).answer == ANSWER
        redis_server.client().delete(a.answer_key(KEY))  # Redis forgot it; both replicas still know it
        assert (await a.board(KEY)).answer == ANSWER
        assert (await b.board(KEY)).answer == ANSWER


async def test_the_shared_answer_expires_after_the_cache_ttl(redis_server: RedisServer) -> None:
    async with replicas(redis_server, count=1, cache={"ttl_seconds": 600}) as (a,):
        leader = await lead(a)
        await leader.land(ANSWER)
        leader.leave()
        assert 590_000 < redis_server.client().pttl(a.answer_key(KEY)) <= 600_000
    async with replicas(redis_server, count=2, cache={"ttl_seconds": 0.2}) as (a, b):
        leader = await lead(a)
        await leader.land(ANSWER)
        leader.leave()
        await gone(redis_server, a.answer_key(KEY))
        (await lead(b)).leave()  # nothing to replay: B generates


async def test_a_local_answer_expires_with_its_clock_and_is_fetched_again(redis_server: RedisServer) -> None:
    now = [1000.0]
    async with replicas(redis_server) as (a, _):
        b = RedisResponseCache(CacheSettings(ttl_seconds=60), a._state, JsonCodec(Completion), clock=lambda: now[0])
        leader = await lead(a)
        await leader.land(ANSWER)
        leader.leave()
        assert (await b.board(KEY)).answer == ANSWER and b.stats().size == 1
        now[0] += 61
        assert b.stats().size == 0
        assert (await b.board(KEY)).answer == ANSWER  # from Redis again, which still has it


async def test_identical_requests_on_two_replicas_share_the_leaders_answer(redis_server: RedisServer) -> None:
    async with replicas(redis_server) as (a, b):
        leader = await lead(a)
        assert redis_server.client().exists(a.lease_key(KEY)) == 1
        first, second = await b.board(KEY), await b.board(KEY)
        assert not first.leads and not second.leads and first.answer is None
        assert isinstance(second, Follower)  # follows B's first request, not Redis
        waiting = [asyncio.create_task(seat.wait(PATIENCE_S)) for seat in (first, second)]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in waiting)
        await leader.land(ANSWER)
        leader.leave()
        assert await asyncio.gather(*waiting) == [ANSWER, ANSWER]
        first.leave()
        second.leave()
        assert (b.stats().hits, b.stats().misses) == (2, 0)
        assert b.local.get(KEY) == ANSWER
        assert redis_server.client().exists(a.lease_key(KEY)) == 0


@pytest.mark.parametrize("ending", ["failed", "left"])
async def test_when_the_leader_fails_or_leaves_followers_on_other_replicas_generate_alone(
    redis_server: RedisServer, ending: str
) -> None:
    """A failed generation and a client that left end the same way: the run closes without an
    answer (GenerationService calls `leave` for both)."""
    async with replicas(redis_server) as (a, b):
        leader = await lead(a)
        follower = await b.board(KEY)
        local_follower = await b.board(KEY)
        waiting = [asyncio.create_task(seat.wait(PATIENCE_S)) for seat in (follower, local_follower)]
        await asyncio.sleep(0.05)
        leader.leave()
        assert await asyncio.wait_for(asyncio.gather(*waiting), 5) == [None, None]
        await gone(redis_server, a.lease_key(KEY))
        follower.leave()
        (await lead(b)).leave()  # nobody follows the gone leader any more


async def test_a_crashed_leaders_lease_expires_and_frees_its_followers(redis_server: RedisServer) -> None:
    async with replicas(redis_server, lock_ttl_s=0.3) as (a, b):
        # A replica that took the lease and died: nobody renews it or deletes it.
        redis_server.client().set(a.lease_key(KEY), "crashed", px=300)
        follower = await b.board(KEY)
        assert not follower.leads
        assert await asyncio.wait_for(follower.wait(PATIENCE_S), 5) is None
        follower.leave()


async def test_a_running_leader_keeps_its_lease(redis_server: RedisServer) -> None:
    async with replicas(redis_server, lock_ttl_s=0.3) as (a, b):
        leader = await lead(a)
        follower = await b.board(KEY)
        waiting = asyncio.create_task(follower.wait(PATIENCE_S))
        await asyncio.sleep(0.9)  # three lease lifetimes
        assert not waiting.done() and redis_server.client().exists(a.lease_key(KEY)) == 1
        await leader.land(ANSWER)
        leader.leave()
        assert await waiting == ANSWER


async def test_a_follower_waits_no_longer_than_its_patience(redis_server: RedisServer) -> None:
    async with replicas(redis_server) as (a, b):
        leader = await lead(a)
        follower = await b.board(KEY)
        assert await asyncio.wait_for(follower.wait(0.1), 5) is None
        follower.leave()
        assert b.local.flight(KEY) is None  # its local followers do not wait on either
        leader.leave()


async def test_a_cancelled_boarding_leaves_no_lease_or_flight(redis_server: RedisServer) -> None:
    async with replicas(redis_server) as (a, b):
        boarding = asyncio.create_task(a.board(KEY))
        await asyncio.sleep(0)  # it took off locally and is waiting for Redis
        boarding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await boarding
        assert a.local.flight(KEY) is None
        await gone(redis_server, a.lease_key(KEY))
        (await lead(b)).leave()


async def test_an_unreadable_shared_answer_is_a_miss_and_is_replaced(redis_server: RedisServer) -> None:
    async with replicas(redis_server) as (a, b):
        redis_server.client().set(a.answer_key(KEY), b'{"text": 1, "unknown": true}')
        leader = await lead(a)
        await leader.land(ANSWER)
        leader.leave()
        assert (await b.board(KEY)).answer == ANSWER


async def test_redis_down_is_a_miss_with_single_flight_per_replica_then_recovers(own_redis: RedisServer) -> None:
    metrics = LLMMetrics("m")
    async with replicas(own_redis, metrics=metrics) as (a, b):
        own_redis.stop()
        leader = await lead(a)  # no error reaches the caller
        assert errors(metrics) == 1
        follower = await a.board(KEY)
        assert isinstance(follower, Follower)  # identical requests here still share one generation
        waiting = asyncio.create_task(follower.wait(PATIENCE_S))
        await leader.land(ANSWER)  # the store is skipped: Redis is known to be down
        leader.leave()
        assert await waiting == ANSWER and errors(metrics) == 1
        assert (await a.board(KEY)).answer == ANSWER  # the local layer still serves

        own_redis.start()
        leader = await lead(b)
        await leader.land(ANSWER)
        leader.leave()
        assert own_redis.client().exists(b.answer_key(KEY)) == 1
        assert errors(metrics) == 1


async def test_a_hung_redis_costs_one_timeout_per_call(own_redis: RedisServer) -> None:
    metrics = LLMMetrics("m")
    async with replicas(own_redis, metrics=metrics, timeout_s=0.3) as (a, b):
        assert await a._state.ping()
        own_redis.freeze()
        try:
            started = time.monotonic()
            leader = await lead(a)
            await leader.land(ANSWER)
            leader.leave()
            assert time.monotonic() - started < 0.3 + 0.5  # one call, bounded; the store was skipped
            assert errors(metrics) == 1
        finally:
            own_redis.thaw()
        leader = await lead(b)  # Redis answers again: B generates and shares
        await leader.land(ANSWER)
        leader.leave()
        assert (await a.board("b" * 64)).leads
        assert own_redis.client().exists(b.answer_key(KEY)) == 1


async def test_a_follower_whose_redis_goes_away_generates_alone(own_redis: RedisServer) -> None:
    async with replicas(own_redis) as (a, b):
        leader = await lead(a)
        follower = await b.board(KEY)
        waiting = asyncio.create_task(follower.wait(PATIENCE_S))
        await asyncio.sleep(0.05)
        own_redis.stop()
        assert await asyncio.wait_for(waiting, 5) is None
        follower.leave()
        leader.leave()


async def test_the_memory_backend_seats_requests_the_same_way() -> None:
    cache: ResponseCache[Completion] = ResponseCache(4, 60)
    leader = await cache.board(KEY)
    follower = await cache.board(KEY)
    assert leader.leads and isinstance(follower, Follower)
    waiting = asyncio.create_task(follower.wait(PATIENCE_S))
    await leader.land(ANSWER)
    leader.leave()
    assert await waiting == ANSWER
    assert (await cache.board(KEY)).answer == ANSWER
    assert (cache.stats().hits, cache.stats().misses) == (2, 1)
