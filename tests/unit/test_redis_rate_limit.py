"""The Redis request-rate limiter on a real redis-server: the memory bucket's numbers, one burst
for every replica together, refill and expiry on Redis's clock, and state.on_error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from app.core.config import RateLimitSettings
from app.core.errors import StateUnavailable
from app.core.rate_limit import MemoryRateLimiter
from app.core.redis_rate_limit import RedisRateLimiter
from app.core.redis_state import RedisState
from tests.conftest import until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def state(redis_server: RedisServer) -> AsyncIterator[RedisState]:
    state = redis_server.connect()
    yield state
    await state.close()


def limits(per_minute: float, burst: int) -> RateLimitSettings:
    return RateLimitSettings(requests_per_minute=per_minute, burst_size=burst)


async def test_a_burst_then_refusals_answer_as_the_memory_bucket_does(state: RedisState) -> None:
    settings = limits(60, 3)
    shared = RedisRateLimiter(settings, state)
    local = MemoryRateLimiter(settings, clock=lambda: 1000.0)
    for _ in range(5):
        assert await shared.hit("ip:1") == await local.hit("ip:1")
    refused = await shared.hit("ip:1")
    assert refused is not None and not refused.allowed
    assert (refused.limit, refused.remaining, refused.reset_s, refused.retry_after_s) == (3, 0, 3, 1)
    other = await shared.hit("ip:2")  # another identity has its own bucket
    assert other is not None and other.allowed and other.remaining == 2


async def test_replicas_hitting_at_once_share_one_burst(redis_server: RedisServer) -> None:
    prefix = redis_server.settings()["key_prefix"]
    replicas = [redis_server.connect(key_prefix=prefix) for _ in range(2)]
    limiters = [RedisRateLimiter(limits(1, 6), state) for state in replicas]
    decisions = await asyncio.gather(*(limiters[n % 2].hit("key:a") for n in range(20)))
    assert sum(1 for decision in decisions if decision is not None and decision.allowed) == 6
    for state in replicas:
        await state.close()


async def test_tokens_come_back_at_the_sustained_rate(state: RedisState, redis_server: RedisServer) -> None:
    limiter = RedisRateLimiter(limits(60, 3), state)
    for _ in range(3):
        await limiter.hit("ip:1")
    # Two seconds pass for this bucket: as if it had been drawn from that much earlier.
    redis_server.client().hincrbyfloat(state.key("rate", "ip:1"), "ts", -2.0)
    decision = await limiter.hit("ip:1")
    assert decision is not None and decision.allowed and decision.remaining == 1 and decision.reset_s == 2

    fast = RedisRateLimiter(limits(600, 1), state)  # one token every 0.1 s, on Redis's clock
    assert (first := await fast.hit("ip:fast")) is not None and first.allowed
    refused = await fast.hit("ip:fast")
    assert refused is not None and not refused.allowed and refused.retry_after_s == 1

    for _ in range(250):  # one token comes back within 0.1 s; give up after 5 s
        await asyncio.sleep(0.02)
        if (decision := await fast.hit("ip:fast")) is not None and decision.allowed:
            break
    else:
        pytest.fail("no token came back")


async def test_the_key_expires_when_the_bucket_would_be_full(state: RedisState, redis_server: RedisServer) -> None:
    client = redis_server.client()
    limiter = RedisRateLimiter(limits(60, 3), state)
    key = state.key("rate", "ip:1")
    assert not client.exists(key)  # never drawn from: full, and nothing stored
    await limiter.hit("ip:1")
    assert 0 < client.pttl(key) <= 1000  # one token short, at one a second
    await limiter.hit("ip:1")
    assert 1000 < client.pttl(key) <= 2000

    quick = RedisRateLimiter(limits(600, 1), state)
    await quick.hit("ip:quick")
    quick_key = state.key("rate", "ip:quick")
    assert 0 < client.pttl(quick_key) <= 100
    await until(lambda: not client.exists(quick_key))


async def test_fail_closed_raises_and_fail_open_lets_through_with_one_warning(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    closed_state = own_redis.connect()
    open_state = own_redis.connect(on_error="fail_open")
    closed, opened = RedisRateLimiter(limits(60, 3), closed_state), RedisRateLimiter(limits(60, 3), open_state)
    assert await closed.hit("ip:1") is not None and await opened.hit("ip:2") is not None
    own_redis.stop()
    with caplog.at_level(logging.WARNING, logger="app.state"):
        with pytest.raises(StateUnavailable):
            await closed.hit("ip:1")
        assert await opened.hit("ip:2") is None
        assert await opened.hit("ip:2") is None
    lifted = [record for record in caplog.records if record.getMessage().startswith("limits not enforced")]
    assert len(lifted) == 1 and vars(lifted[0])["limits"] == "rate limits"

    own_redis.start()
    assert await closed.hit("ip:1") is not None and await opened.hit("ip:2") is not None
    own_redis.stop()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="app.state"):
        assert await opened.hit("ip:2") is None
    assert any(record.getMessage().startswith("limits not enforced") for record in caplog.records)  # a new outage
    for state in (closed_state, open_state):
        await state.close()
