"""The token budget every replica shares: minute buckets and daily quotas in Redis.

A reserve is one atomic script: the quota is checked, then the bucket is charged (the same
bucket Lua as the request-rate limiter, cost = tokens), then the quota is charged, so a
refused reserve charges nothing and no replica can slip between the check and the charge.
A settle is one script too: the unused rest goes back to the bucket (never above capacity;
more used than reserved is charged, even into debt) and to the quota of the day it was
reserved on.

The quota's day is Redis's (TIME), like the bucket's clock: every replica agrees on when
00:00 UTC is. A quota is a hash {day, spent} per key name; a stored day other than today
counts as nothing spent, and the key expires a minute after its day ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr

from app.core.config import NamedKey, RateLimitSettings
from app.core.errors import StateUnavailable
from app.core.redis_bucket import BUCKET_LUA, TAKE_SCRIPT, OutagePolicy, bucket_args, decision_of
from app.core.redis_state import RedisState
from app.core.token_budget import (
    HEADER_SUFFIX,
    BudgetLimits,
    KeyLimits,
    Reservation,
    check_fits,
    quota_exceeded,
    token_rate_limited,
)

OPERATION = "token_budget"
ANY_DAY = -1
"""The day of a reservation that holds nothing yet (a shared answer's): whatever it does use
is charged to the day it settles on."""

QUOTA_LUA = """
local DAY_S = 86400
local function today()
  return math.floor(tonumber(redis.call('TIME')[1]) / DAY_S)
end
local function spent_on(key, day)
  local stored = redis.call('HMGET', key, 'day', 'spent')
  if tonumber(stored[1]) == day then return tonumber(stored[2]) or 0 end
  return 0
end
local function set_spent(key, day, spent)
  redis.call('HSET', key, 'day', day, 'spent', spent)
  redis.call('EXPIREAT', key, (day + 1) * DAY_S + 60)
end
"""

RESERVE_SCRIPT = (
    BUCKET_LUA
    + QUOTA_LUA
    + """
-- KEYS: bucket, quota. ARGV: tokens per minute (0: no bucket), refill per second, tokens,
-- tokens per day (0: no quota).
-- Returns {'ok', day} | {'quota', day, spent, seconds to 00:00 UTC} | {'rate', day, bucket reply...}
local capacity, refill = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens, per_day = tonumber(ARGV[3]), tonumber(ARGV[4])
local day = today()
local spent = 0
if per_day > 0 then
  spent = spent_on(KEYS[2], day)
  if spent + tokens > per_day then
    local time = redis.call('TIME')
    local wall = tonumber(time[1]) + tonumber(time[2]) / 1000000
    return {'quota', day, spent, math.max(1, math.ceil(DAY_S - wall % DAY_S))}
  end
end
if capacity > 0 then
  local decision = bucket(KEYS[1], capacity, refill, tokens, false)
  if decision[1] == 0 then
    return {'rate', day, decision[1], decision[2], decision[3], decision[4]}
  end
end
if per_day > 0 then
  set_spent(KEYS[2], day, spent + tokens)
end
return {'ok', day}
"""
)

SETTLE_SCRIPT = (
    BUCKET_LUA
    + QUOTA_LUA
    + """
-- KEYS: bucket, quota. ARGV: tokens per minute (0: no bucket), refill per second, unused
-- (negative: used more than reserved), tokens per day (0: no quota), the reservation's day.
local capacity, refill = tonumber(ARGV[1]), tonumber(ARGV[2])
local unused, per_day, day = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if capacity > 0 then
  bucket(KEYS[1], capacity, refill, -unused, true)
end
if per_day > 0 then
  local now = today()
  -- yesterday's reserve is no part of today's quota
  if day == now or day < 0 then
    set_spent(KEYS[2], now, math.max(0, spent_on(KEYS[2], now) - unused))
  end
end
return 1
"""
)


class RedisTokenBudget:
    """Like MemoryTokenBudget, in Redis (keys `tokens:<identity>`, `quota:<key name>`).

    When Redis does not answer: a reserve follows `state.on_error` (fail_closed raises
    StateUnavailable, a 503; fail_open holds nothing and lets the request through); a settle
    gives up quietly, whatever `on_error` says, since the answer is already out (the failure
    is counted and logged by RedisState; the caller stays charged its whole reserve, the strict
    side); headers are left out."""

    def __init__(self, limits: BudgetLimits, state: RedisState) -> None:
        self._limits = limits
        self._state = state
        self._outage = OutagePolicy(state.settings.on_error, "token budgets")
        self._settling: set[asyncio.Future[None]] = set()
        """Settles under way, held so that none is collected before it ends."""

    @classmethod
    def from_settings(
        cls, settings: RateLimitSettings, api_keys: Sequence[SecretStr | NamedKey], state: RedisState
    ) -> RedisTokenBudget | None:
        """The budget these settings ask for, or None when no budget and no quota is configured."""
        limits = BudgetLimits.from_settings(settings, api_keys)
        return None if limits is None else cls(limits, state)

    async def reserve(self, identity: str, key: str | None, tokens: int) -> Reservation:
        limits = self._limits.of(key)
        check_fits(limits, tokens)
        per_day = limits.tokens_per_day if key is not None else 0
        if not limits.tokens_per_minute and not per_day:
            return Reservation(identity, key, tokens, ANY_DAY)
        args = [*self._bucket_args(limits), tokens, per_day]
        try:
            reply = await self._state.script(OPERATION, RESERVE_SCRIPT, self._keys(identity, key), args)
        except StateUnavailable:
            if self._outage.let_through():
                return Reservation(identity, key, tokens, ANY_DAY, settled=True)
            raise
        self._outage.answered()
        verdict, day = reply[0], int(reply[1])
        if verdict == b"quota":
            raise quota_exceeded(limits, int(reply[2]), tokens, int(reply[3]))
        if verdict == b"rate":
            raise token_rate_limited(limits, tokens, decision_of(reply[2:], limits.tokens_per_minute))
        return Reservation(identity, key, tokens, day)

    def nothing(self, identity: str, key: str | None) -> Reservation:
        return Reservation(identity, key, 0, ANY_DAY)

    async def settle(self, reservation: Reservation, used: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        unused = reservation.tokens - used
        limits = self._limits.of(reservation.key)
        per_day = limits.tokens_per_day if reservation.key is not None else 0
        if unused == 0 or (not limits.tokens_per_minute and not per_day):
            return
        args = [*self._bucket_args(limits), unused, per_day, reservation.day]
        call = asyncio.ensure_future(self._settle(self._keys(reservation.identity, reservation.key), args))
        self._settling.add(call)
        call.add_done_callback(self._settling.discard)
        # A settle runs as its answer ends, often because its client left and its task is being
        # cancelled: the give-back goes on regardless (bounded by state.timeout_s), only the
        # waiting for it stops.
        await asyncio.shield(call)

    async def _settle(self, keys: list[str], args: list[Any]) -> None:
        with contextlib.suppress(StateUnavailable):
            await self._state.script(OPERATION, SETTLE_SCRIPT, keys, args)

    async def headers(self, identity: str, key: str | None) -> dict[str, str]:
        limits = self._limits.of(key)
        # Headers are a courtesy, not worth another wait on a store whose last call failed
        # (typically this request's own reserve, just before): left out until a call succeeds.
        if not limits.tokens_per_minute or not self._state.up:
            return {}
        args = bucket_args(*self._bucket_args(limits), 0)
        try:
            reply = await self._state.script(OPERATION, TAKE_SCRIPT, self._keys(identity, key)[:1], args)
        except StateUnavailable:
            return {}
        return decision_of(reply, limits.tokens_per_minute).headers(HEADER_SUFFIX)

    def _keys(self, identity: str, key: str | None) -> list[str]:
        # Without a key name there is no quota; the second key is then never touched.
        return [self._state.key("tokens", identity), self._state.key("quota", key or "")]

    @staticmethod
    def _bucket_args(limits: KeyLimits) -> tuple[float, float]:
        capacity = float(limits.tokens_per_minute)
        return capacity, capacity / 60.0
