"""The usage stores: totals, and today's counts that start afresh at 00:00 UTC; the Redis store
summed over replicas, and what an outage costs (a real redis-server)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from app.core.config import StateSettings
from app.core.errors import StateUnavailable
from app.core.metrics import LLMMetrics
from app.core.redis_state import RedisState
from app.core.redis_usage import DAY_KEPT_S, RedisUsageStore
from app.core.usage import DAY_S, MemoryUsageStore, UsageCounts, UsageStore
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio

StoreFactory = Callable[[Callable[[], float]], UsageStore]


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    if request.param == "memory":
        yield lambda clock: MemoryUsageStore(wall_clock=clock)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    state = server.connect()
    yield lambda clock: RedisUsageStore(state, wall_clock=clock)
    await state.close()


async def test_today_rolls_over_at_utc_midnight_and_the_total_keeps_counting(make_store: StoreFactory) -> None:
    now = [20_000 * DAY_S - 1.0]
    store = make_store(lambda: now[0])
    await store.add("alice", UsageCounts(requests=1, prompt_tokens=5, completion_tokens=7))
    await store.add("alice", UsageCounts(rate_limited=1))
    await store.add("bob", UsageCounts(requests=1, cached_requests=1))
    yesterday = UsageCounts(requests=1, prompt_tokens=5, completion_tokens=7, rate_limited=1)
    assert await store.read("alice") == (yesterday, yesterday)
    now[0] += 1
    assert await store.read("alice") == (UsageCounts(), yesterday)
    await store.add("alice", UsageCounts(requests=1, completion_tokens=3))
    assert await store.read("alice") == (
        UsageCounts(requests=1, completion_tokens=3),
        UsageCounts(requests=2, prompt_tokens=5, completion_tokens=10, rate_limited=1),
    )
    assert await store.read("nobody") == (UsageCounts(), UsageCounts())


def replicas(server: RedisServer, metrics: LLMMetrics | None = None) -> tuple[RedisState, RedisState]:
    """Two connections under one key prefix: what two replicas of one deployment have."""
    section = StateSettings.model_validate(server.settings(timeout_s=0.3))
    return RedisState(section, metrics), RedisState(section, metrics)


async def test_usage_added_on_two_replicas_is_summed_on_either(redis_server: RedisServer) -> None:
    state_a, state_b = replicas(redis_server)
    a, b = RedisUsageStore(state_a), RedisUsageStore(state_b)
    await a.add("alice", UsageCounts(requests=1, prompt_tokens=4, completion_tokens=6))
    await b.add("alice", UsageCounts(requests=1, prompt_tokens=2, completion_tokens=3, cached_requests=1))
    await b.add("alice", UsageCounts(rate_limited=1))
    both = UsageCounts(requests=2, prompt_tokens=6, completion_tokens=9, cached_requests=1, rate_limited=1)
    assert await a.read("alice") == (both, both)
    assert await b.read("alice") == (both, both)
    await state_a.close()
    await state_b.close()


async def test_a_days_counts_expire_and_the_total_does_not(redis_server: RedisServer) -> None:
    state = redis_server.connect()
    await RedisUsageStore(state, wall_clock=lambda: 20_000 * DAY_S).add("alice", UsageCounts(requests=1))
    client = redis_server.client()
    assert 0 < client.ttl(state.key("usage", "alice", "day", "20000")) <= DAY_KEPT_S
    assert client.ttl(state.key("usage", "alice", "total")) == -1
    await state.close()


async def test_redis_down_loses_the_counts_and_refuses_reads_then_recovers(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = LLMMetrics("m")
    state_a, state_b = replicas(own_redis, metrics)
    a, b = RedisUsageStore(state_a), RedisUsageStore(state_b)
    await a.add("alice", UsageCounts(requests=1))
    own_redis.stop()
    await a.add("alice", UsageCounts(requests=1))  # lost, and not raised
    await a.add("alice", UsageCounts(completion_tokens=1))
    with pytest.raises(StateUnavailable):
        await b.read("alice")
    errors = metrics.registry.get_sample_value("llm_state_backend_errors_total", {"operation": "usage"})
    assert errors == 3
    assert len([r for r in caplog.records if r.getMessage().startswith("usage is not counted")]) == 1
    own_redis.start()  # empty: this redis-server keeps nothing on disk
    await b.add("alice", UsageCounts(requests=1))
    assert await a.read("alice") == (UsageCounts(requests=1), UsageCounts(requests=1))
    await state_a.close()
    await state_b.close()
