"""The Redis token budget on a real redis-server: reserve and settle (give-back, debt), the daily
quota on Redis's day, and what an outage does under each state.on_error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.core.errors import QuotaExceeded, StateUnavailable, TokenRateLimited, TokensOverBudget
from app.core.redis_state import RedisState
from app.core.redis_token_budget import RedisTokenBudget
from app.core.token_budget import DAY_S, BudgetLimits, KeyLimits
from tests.conftest import until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def state(redis_server: RedisServer) -> AsyncIterator[RedisState]:
    state = redis_server.connect()
    yield state
    await state.close()


def budget(state: RedisState, per_minute: int = 0, **keys: KeyLimits) -> RedisTokenBudget:
    return RedisTokenBudget(BudgetLimits(KeyLimits(per_minute, 0), keys), state)


async def remaining(tokens: RedisTokenBudget, identity: str = "key:a", key: str = "a") -> int:
    return int((await tokens.headers(identity, key))["X-RateLimit-Remaining-Tokens"])


def redis_now(server: RedisServer) -> float:
    seconds, micros = server.client().time()
    return seconds + micros / 1e6


async def test_reserves_fit_until_the_bucket_cannot_hold_one_and_retry_after_is_when_it_can(
    state: RedisState,
) -> None:
    tokens = budget(state, per_minute=200)
    assert await tokens.headers("key:a", "a") == {
        "X-RateLimit-Limit-Tokens": "200",
        "X-RateLimit-Remaining-Tokens": "200",
        "X-RateLimit-Reset-Tokens": "0",
    }
    for _ in range(4):
        await tokens.reserve("key:a", "a", 50)
    assert await tokens.headers("key:a", "a") == {
        "X-RateLimit-Limit-Tokens": "200",
        "X-RateLimit-Remaining-Tokens": "0",
        "X-RateLimit-Reset-Tokens": "60",
    }
    with pytest.raises(TokenRateLimited, match="0 of 200 per minute are left") as refused:
        await tokens.reserve("key:a", "a", 50)
    assert refused.value.retry_after == 15  # 50 tokens at 200 per minute
    await tokens.reserve("key:b", "b", 200)  # another caller has its own bucket


async def test_settle_returns_what_was_not_used_once_and_never_above_capacity(
    state: RedisState, redis_server: RedisServer
) -> None:
    tokens = budget(state, per_minute=200)
    held = await tokens.reserve("key:a", "a", 104)
    await tokens.settle(held, 14)
    await tokens.settle(held, 14)  # a second settle changes nothing
    assert await remaining(tokens) == 186
    await tokens.settle(await tokens.reserve("key:a", "a", 10), 0)
    assert await remaining(tokens) == 186  # the whole reserve back, no more
    bucket = state.key("tokens", "key:a")
    assert 0 < redis_server.client().pttl(bucket) <= 5000  # 14 short at 200 a minute: full in 4.2 s
    await tokens.settle(await tokens.reserve("key:c", "c", 10), 0)
    assert not redis_server.client().exists(state.key("tokens", "key:c"))  # full again: nothing kept


async def test_a_settle_whose_caller_is_cancelled_still_gives_back(redis_server: RedisServer) -> None:
    prefix = redis_server.settings()["key_prefix"]
    first_state = redis_server.connect(key_prefix=prefix)
    held = await budget(first_state, per_minute=200).reserve("key:a", "a", 104)
    await first_state.close()
    # A connection of its own, not yet open: the settle's first wait is for the connection,
    # before anything reaches Redis, and that is where its caller is cancelled.
    fresh_state = redis_server.connect(key_prefix=prefix)
    settling = asyncio.ensure_future(budget(fresh_state, per_minute=200).settle(held, 0))
    await asyncio.sleep(0)
    settling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await settling
    await until(lambda: not redis_server.client().exists(fresh_state.key("tokens", "key:a")))  # all back: full
    await fresh_state.close()


async def test_using_more_than_reserved_is_charged_into_debt(state: RedisState) -> None:
    tokens = budget(state, per_minute=60)
    await tokens.settle(tokens.nothing("key:a", "a"), 90)  # a shared answer that had to generate alone
    assert await tokens.headers("key:a", "a") == {
        "X-RateLimit-Limit-Tokens": "60",
        "X-RateLimit-Remaining-Tokens": "0",
        "X-RateLimit-Reset-Tokens": "90",  # 30 of debt and 60 to refill, at one token per second
    }
    with pytest.raises(TokenRateLimited) as refused:
        await tokens.reserve("key:a", "a", 10)
    assert refused.value.retry_after == 40


async def test_a_reserve_over_the_whole_budget_is_refused_for_good(state: RedisState) -> None:
    tokens = budget(state, per_minute=200, a=KeyLimits(0, 100))
    with pytest.raises(TokensOverBudget, match="at most 200 per minute"):
        await tokens.reserve("ip:1.2.3.4", None, 201)
    with pytest.raises(TokensOverBudget, match="daily quota is 100"):
        await tokens.reserve("key:a", "a", 101)


async def test_the_daily_quota_counts_redis_s_utc_day(state: RedisState, redis_server: RedisServer) -> None:
    tokens = budget(state, a=KeyLimits(0, 100))
    held = await tokens.reserve("key:a", "a", 60)
    before = redis_now(redis_server)
    with pytest.raises(QuotaExceeded, match=r"\(60 used, this request reserves 60\)") as refused:
        await tokens.reserve("key:a", "a", 60)
    after = redis_now(redis_server)
    assert DAY_S - after % DAY_S - 1 <= (refused.value.retry_after or 0) <= DAY_S - before % DAY_S + 1
    await tokens.settle(held, 40)  # 20 back: 60 left today
    await tokens.reserve("key:a", "a", 60)
    quota = state.key("quota", "a")
    today = int(redis_now(redis_server) // DAY_S)
    client = redis_server.client()
    assert client.hgetall(quota) == {b"day": str(today).encode(), b"spent": b"100"}
    assert abs(client.ttl(quota) - ((today + 1) * DAY_S + 60 - redis_now(redis_server))) <= 2

    client.hset(quota, "day", today - 1)  # what was spent is yesterday's now
    await tokens.reserve("key:a", "a", 100)
    with pytest.raises(QuotaExceeded):
        await tokens.reserve("key:a", "a", 1)


async def test_yesterdays_reserve_settled_today_does_not_touch_todays_quota(
    state: RedisState, redis_server: RedisServer
) -> None:
    tokens = budget(state, a=KeyLimits(0, 100))
    held = await tokens.reserve("key:a", "a", 100)
    held.day -= 1  # reserved before midnight
    await tokens.settle(held, 0)
    with pytest.raises(QuotaExceeded):
        await tokens.reserve("key:a", "a", 1)


async def test_a_refused_reserve_charges_neither_bucket_nor_quota(state: RedisState, redis_server: RedisServer) -> None:
    tokens = budget(state, a=KeyLimits(100, 1000))
    await tokens.reserve("key:a", "a", 80)
    with pytest.raises(TokenRateLimited):
        await tokens.reserve("key:a", "a", 80)
    assert redis_server.client().hget(state.key("quota", "a"), "spent") == b"80"
    assert await remaining(tokens) == 20


async def test_an_outage_fails_closed_or_open_and_a_settle_never_raises(own_redis: RedisServer) -> None:
    closed_state, open_state = own_redis.connect(), own_redis.connect(on_error="fail_open")
    closed = budget(closed_state, per_minute=100, a=KeyLimits(100, 1000))
    opened = budget(open_state, per_minute=100, a=KeyLimits(100, 1000))
    held = await closed.reserve("key:a", "a", 10)
    own_redis.stop()
    with pytest.raises(StateUnavailable):
        await closed.reserve("key:a", "a", 10)
    assert await closed.headers("key:a", "a") == {}
    await closed.settle(held, 0)  # the give-back is lost, quietly
    unlimited = await opened.reserve("key:a", "a", 10)
    assert unlimited.settled  # nothing was held, so nothing is to be given back
    assert await opened.headers("key:a", "a") == {}

    own_redis.start()  # an empty Redis: a full bucket, nothing spent today
    for tokens in (closed, opened):
        await tokens.reserve("key:a", "a", 10)
    assert await remaining(closed) == await remaining(opened) == 90
    for state in (closed_state, open_state):
        await state.close()
