"""Token budgets: a token bucket per caller counted in model tokens, and a daily quota per key.

`TokenBudget` is the interface; the in-memory budget here serves one process, the Redis one
(app/core/redis_token_budget.py) every replica sharing a Redis. Both refuse with the same
errors and messages, built here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cachetools import TTLCache
from pydantic import SecretStr

from app.core.config import NamedKey, RateLimitSettings
from app.core.errors import QuotaExceeded, TokenRateLimited, TokensOverBudget
from app.core.rate_limit import MAX_TRACKED_CLIENTS, Decision, TokenBucket

DAY_S = 86_400
HEADER_SUFFIX = "-Tokens"


@dataclass(frozen=True)
class KeyLimits:
    tokens_per_minute: int
    """0: no per-minute budget."""
    tokens_per_day: int
    """0: no daily quota."""


@dataclass(frozen=True)
class BudgetLimits:
    """The budget every caller gets, and the keys' own entries that override it."""

    default: KeyLimits
    keys: Mapping[str, KeyLimits] = field(default_factory=dict)

    @classmethod
    def from_settings(
        cls, settings: RateLimitSettings, api_keys: Sequence[SecretStr | NamedKey]
    ) -> BudgetLimits | None:
        """The limits these settings ask for, or None when no budget and no quota is configured."""
        keys = {
            entry.name: KeyLimits(
                settings.tokens_per_minute if entry.tokens_per_minute is None else entry.tokens_per_minute,
                entry.tokens_per_day or 0,
            )
            for entry in api_keys
            if isinstance(entry, NamedKey) and (entry.tokens_per_minute is not None or entry.tokens_per_day)
        }
        if not settings.enabled or (settings.tokens_per_minute == 0 and not keys):
            return None
        return cls(KeyLimits(settings.tokens_per_minute, 0), keys)

    def of(self, key: str | None) -> KeyLimits:
        return self.keys.get(key, self.default) if key is not None else self.default


@dataclass
class Reservation:
    """Tokens held for one generation until it settles."""

    identity: str
    key: str | None
    tokens: int
    day: int
    """The UTC day (days since 1970) whose quota holds the reserve; the Redis budget may say
    "the day it settles on" (its ANY_DAY) for a reservation that holds nothing yet."""
    settled: bool = False


class TokenBudget(Protocol):
    """Reserve before admission, settle when the answer ends: what was used stays charged,
    the rest of the reserve is returned. The minute bucket refills continuously (capacity =
    tokens per minute); the daily quota resets at 00:00 UTC."""

    async def reserve(self, identity: str, key: str | None, tokens: int) -> Reservation:
        """Hold `tokens` for `identity` (the bucket's owner) and `key` (the quota's owner), or
        raise: TokensOverBudget when no wait would do, TokenRateLimited / QuotaExceeded (429,
        with Retry-After) when waiting would."""
        ...

    def nothing(self, identity: str, key: str | None) -> Reservation:
        """A reservation of no tokens, for an answer expected to cost nothing (a shared one)."""
        ...

    async def settle(self, reservation: Reservation, used: int) -> None:
        """Charge `used` tokens for this reservation: the rest comes back (more than reserved,
        as for a follower that had to generate alone, is charged, even into debt). Once only;
        never raises."""
        ...

    async def headers(self, identity: str, key: str | None) -> dict[str, str]:
        """X-RateLimit-{Limit,Remaining,Reset}-Tokens of the caller's minute budget, if it has
        one (and it can be read now)."""
        ...


def check_fits(limits: KeyLimits, tokens: int) -> None:
    """TokensOverBudget when `tokens` is more than the whole budget: no wait would do."""
    if limits.tokens_per_day and tokens > limits.tokens_per_day:
        raise TokensOverBudget(
            f"this request reserves {tokens} tokens (prompt + max_tokens) but the key's daily quota "
            f"is {limits.tokens_per_day}; lower max_tokens or shorten the prompt",
            param="max_tokens",
        )
    if limits.tokens_per_minute and tokens > limits.tokens_per_minute:
        raise TokensOverBudget(
            f"this request reserves {tokens} tokens (prompt + max_tokens) but the budget holds at most "
            f"{limits.tokens_per_minute} per minute; lower max_tokens or shorten the prompt",
            param="max_tokens",
        )


def quota_exceeded(limits: KeyLimits, spent: int, tokens: int, retry_s: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"the daily token quota of {limits.tokens_per_day} is spent ({spent} used, this request "
        f"reserves {tokens}); it resets at 00:00 UTC, in {retry_s} s",
        retry_after=retry_s,
    )


def token_rate_limited(limits: KeyLimits, tokens: int, decision: Decision) -> TokenRateLimited:
    retry_s = decision.retry_after_s
    return TokenRateLimited(
        f"token rate limit exceeded: this request reserves {tokens} tokens (prompt + max_tokens), "
        f"{decision.remaining} of {limits.tokens_per_minute} per minute are left; retry in {retry_s} s",
        retry_after=retry_s,
    )


def full_bucket_headers(limits: KeyLimits) -> dict[str, str]:
    """The headers of a bucket nobody has drawn from lately (no state is kept for it)."""
    per_minute = limits.tokens_per_minute
    return Decision(True, per_minute, per_minute, 0, 0).headers(HEADER_SUFFIX)


class MemoryTokenBudget:
    """This process's budgets (see TokenBudget): buckets on a monotonic clock, the quota's
    day on the wall clock."""

    def __init__(
        self,
        default_per_minute: int,
        keys: Mapping[str, KeyLimits],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._limits = BudgetLimits(KeyLimits(default_per_minute, 0), dict(keys))
        self._clock = clock
        self._wall_clock = wall_clock
        # Every bucket refills completely within a minute, after which forgetting it changes nothing.
        self._buckets: TTLCache[str, TokenBucket] = TTLCache(MAX_TRACKED_CLIENTS, 60.0, timer=clock)
        self._spent_today: dict[str, tuple[int, int]] = {}
        """Key name -> (UTC day number, tokens charged that day); only keys with a quota."""

    @classmethod
    def from_settings(
        cls,
        settings: RateLimitSettings,
        api_keys: Sequence[SecretStr | NamedKey],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> MemoryTokenBudget | None:
        """The budget these settings ask for, or None when no budget and no quota is configured."""
        limits = BudgetLimits.from_settings(settings, api_keys)
        if limits is None:
            return None
        return cls(limits.default.tokens_per_minute, limits.keys, clock, wall_clock)

    def limits(self, key: str | None) -> KeyLimits:
        return self._limits.of(key)

    async def reserve(self, identity: str, key: str | None, tokens: int) -> Reservation:
        limits = self.limits(key)
        day, spent = self._day_spent(key)
        check_fits(limits, tokens)
        if limits.tokens_per_day and spent + tokens > limits.tokens_per_day:
            retry_s = max(1, math.ceil(DAY_S - self._wall_clock() % DAY_S))
            raise quota_exceeded(limits, spent, tokens, retry_s)
        if limits.tokens_per_minute:
            decision = self._bucket(identity, limits).take(self._clock(), tokens)
            if not decision.allowed:
                raise token_rate_limited(limits, tokens, decision)
        if limits.tokens_per_day and key is not None:
            self._spent_today[key] = (day, spent + tokens)
        return Reservation(identity, key, tokens, day)

    def nothing(self, identity: str, key: str | None) -> Reservation:
        return Reservation(identity, key, 0, self._day_spent(key)[0])

    async def settle(self, reservation: Reservation, used: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        unused = reservation.tokens - used
        if unused == 0:
            return
        key = reservation.key
        limits = self.limits(key)
        if limits.tokens_per_minute:
            bucket = self._buckets.get(reservation.identity)
            if bucket is not None or unused < 0:
                bucket = bucket or self._new_bucket(limits)
                bucket.give_back(self._clock(), unused)
                self._buckets[reservation.identity] = bucket
        if limits.tokens_per_day and key is not None:
            day, spent = self._day_spent(key)
            if day == reservation.day:  # yesterday's reserve is no part of today's quota
                self._spent_today[key] = (day, max(0, spent - unused))

    async def headers(self, identity: str, key: str | None) -> dict[str, str]:
        limits = self.limits(key)
        if not limits.tokens_per_minute:
            return {}
        bucket = self._buckets.get(identity)
        if bucket is None:  # a full bucket; no need to hold one
            return full_bucket_headers(limits)
        return bucket.take(self._clock(), 0.0).headers(HEADER_SUFFIX)

    def _bucket(self, identity: str, limits: KeyLimits) -> TokenBucket:
        bucket = self._buckets.get(identity)
        if bucket is None:
            bucket = self._new_bucket(limits)
        self._buckets[identity] = bucket
        return bucket

    def _new_bucket(self, limits: KeyLimits) -> TokenBucket:
        capacity = float(limits.tokens_per_minute)
        return TokenBucket(capacity, capacity / 60.0, capacity, self._clock())

    def _day_spent(self, key: str | None) -> tuple[int, int]:
        today = int(self._wall_clock() // DAY_S)
        if key is None:
            return today, 0
        day, spent = self._spent_today.get(key, (today, 0))
        return (today, spent) if day == today else (today, 0)
