"""The token budget: reserve, settle, the minute bucket's refill and the daily quota's UTC day, on a fake clock."""

from __future__ import annotations

import pytest

from app.core.config import NamedKey, RateLimitSettings
from app.core.errors import QuotaExceeded, TokenRateLimited, TokensOverBudget
from app.core.token_budget import DAY_S, KeyLimits, MemoryTokenBudget


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


pytestmark = pytest.mark.anyio

MIDNIGHT = 20_000 * DAY_S
"""Some 00:00 UTC."""


def budget(clock: Clock, per_minute: int = 0, **keys: KeyLimits) -> MemoryTokenBudget:
    return MemoryTokenBudget(per_minute, keys, clock=clock, wall_clock=clock)


async def test_reserves_fit_until_the_bucket_cannot_hold_one_and_retry_after_is_when_it_can() -> None:
    clock = Clock(MIDNIGHT + 100)
    tokens = budget(clock, per_minute=200)
    for _ in range(4):
        await tokens.reserve("key:a", "a", 50)
    assert await tokens.headers("key:a", "a") == {
        "X-RateLimit-Limit-Tokens": "200",
        "X-RateLimit-Remaining-Tokens": "0",
        "X-RateLimit-Reset-Tokens": "60",
    }
    with pytest.raises(TokenRateLimited) as refused:
        await tokens.reserve("key:a", "a", 50)
    assert refused.value.retry_after == 15  # 50 tokens at 200 per minute
    clock.now += 14
    with pytest.raises(TokenRateLimited) as refused:
        await tokens.reserve("key:a", "a", 50)
    assert refused.value.retry_after == 1
    clock.now += 1
    await tokens.reserve("key:a", "a", 50)
    await tokens.reserve("key:b", "b", 200)  # another caller has its own bucket


async def test_settle_returns_what_was_not_used_once() -> None:
    clock = Clock(MIDNIGHT)
    tokens = budget(clock, per_minute=200)
    held = await tokens.reserve("key:a", "a", 104)
    await tokens.settle(held, 14)
    await tokens.settle(held, 14)  # a second settle changes nothing
    assert (await tokens.headers("key:a", "a"))["X-RateLimit-Remaining-Tokens"] == "186"
    await tokens.reserve("key:a", "a", 186)
    with pytest.raises(TokenRateLimited):
        await tokens.reserve("key:a", "a", 1)


async def test_using_more_than_reserved_is_charged_into_debt() -> None:
    clock = Clock(MIDNIGHT)
    tokens = budget(clock, per_minute=60)
    await tokens.settle(tokens.nothing("key:a", "a"), 90)  # a shared answer that had to generate alone
    with pytest.raises(TokenRateLimited) as refused:
        await tokens.reserve("key:a", "a", 10)
    assert refused.value.retry_after == 40  # 30 of debt + 10, at one token per second


async def test_a_reserve_over_the_whole_budget_is_refused_for_good() -> None:
    tokens = budget(Clock(MIDNIGHT), per_minute=200, a=KeyLimits(0, 100))
    with pytest.raises(TokensOverBudget, match="at most 200 per minute"):
        await tokens.reserve("ip:1.2.3.4", None, 201)
    with pytest.raises(TokensOverBudget, match="daily quota is 100"):
        await tokens.reserve("key:a", "a", 101)


async def test_the_daily_quota_rolls_over_at_utc_midnight() -> None:
    clock = Clock(MIDNIGHT + DAY_S - 30)
    tokens = budget(clock, a=KeyLimits(0, 100))
    held = await tokens.reserve("key:a", "a", 60)
    with pytest.raises(QuotaExceeded) as refused:
        await tokens.reserve("key:a", "a", 60)
    assert refused.value.retry_after == 30
    await tokens.settle(held, 40)  # 20 back: 60 left today
    await tokens.reserve("key:a", "a", 60)
    clock.now += 30
    await tokens.reserve("key:a", "a", 100)  # a new day, the whole quota
    with pytest.raises(QuotaExceeded) as refused:
        await tokens.reserve("key:a", "a", 1)
    assert refused.value.retry_after == DAY_S


async def test_yesterdays_reserve_settled_today_does_not_touch_todays_quota() -> None:
    clock = Clock(MIDNIGHT - 1)
    tokens = budget(clock, a=KeyLimits(0, 100))
    held = await tokens.reserve("key:a", "a", 100)
    clock.now += 2
    await tokens.reserve("key:a", "a", 100)
    await tokens.settle(held, 0)
    with pytest.raises(QuotaExceeded):
        await tokens.reserve("key:a", "a", 1)


async def test_a_key_entry_overrides_the_default_budget() -> None:
    keys: list[object] = [
        NamedKey(name="big", key="big-secret-key", tokens_per_minute=1000),
        NamedKey(name="none", key="none-secret-key", tokens_per_minute=0),
        NamedKey(name="plain", key="plain-secret-key"),
    ]
    tokens = MemoryTokenBudget.from_settings(RateLimitSettings(tokens_per_minute=100), keys)  # type: ignore[arg-type]
    assert tokens is not None
    assert tokens.limits("big") == KeyLimits(1000, 0)
    assert tokens.limits("none") == KeyLimits(0, 0)
    assert tokens.limits("plain") == tokens.limits(None) == KeyLimits(100, 0)
    await tokens.reserve("key:none", "none", 10**9)  # no budget for this key
    assert await tokens.headers("key:none", "none") == {}


async def test_no_budget_is_built_unless_one_is_configured() -> None:
    assert MemoryTokenBudget.from_settings(RateLimitSettings(), []) is None
    quota_only = [NamedKey(name="a", key="a-secret-key", tokens_per_day=5)]
    assert MemoryTokenBudget.from_settings(RateLimitSettings(), quota_only) is not None
    assert MemoryTokenBudget.from_settings(RateLimitSettings(enabled=False, tokens_per_minute=10), quota_only) is None
