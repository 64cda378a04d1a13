"""The token bucket in Redis: one atomic Lua script per check, on Redis's own clock.

Every replica runs the same script against the same key, so N replicas grant one burst
between them, not N. Time comes from `redis.call('TIME')`: replicas' clocks may disagree,
Redis's cannot disagree with itself. The arithmetic is `TokenBucket.take`'s, so a shared
bucket answers exactly as the in-memory one would.

A bucket is a hash {tokens, ts}; an absent key is a full bucket, which is why the key
expires (PEXPIRE) at the moment it would be full again: idle callers cost no memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from app.core.rate_limit import Decision

logger = logging.getLogger("app.state")

BUCKET_LUA = """
local function bucket(key, capacity, refill, cost, force)
  local time = redis.call('TIME')
  local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
  local stored = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens, updated = tonumber(stored[1]), tonumber(stored[2])
  if tokens == nil or updated == nil then
    tokens = capacity
  else
    -- max(0, ...): should Redis's clock step back, the bucket waits rather than refilling backwards
    tokens = math.min(capacity, tokens + math.max(0, now - updated) * refill)
  end
  local allowed = force or tokens >= cost
  -- A zero-cost look changes nothing worth storing: the refill is a function of time alone.
  if allowed and (force or cost ~= 0) then
    tokens = math.min(capacity, tokens - cost)
    if tokens >= capacity then
      redis.call('DEL', key)
    else
      -- %.17g: Lua's own tostring keeps 14 digits, too few for microseconds since 1970
      redis.call('HSET', key, 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
      redis.call('PEXPIRE', key, math.ceil((capacity - tokens) / refill * 1000))
    end
  end
  local retry = 0
  if not allowed then
    retry = math.max(1, math.ceil((cost - tokens) / refill - 1e-9))
  end
  return {allowed and 1 or 0, math.max(0, math.floor(tokens + 1e-9)),
          math.ceil((capacity - tokens) / refill - 1e-9), retry}
end
"""

TAKE_SCRIPT = (
    BUCKET_LUA
    + """
-- KEYS: the bucket. ARGV: capacity, refill per second, cost, force (1: a give-back or a
-- charge that must land whatever the level, never above capacity, even into debt).
-- Returns allowed (0|1), whole tokens remaining, seconds until full, seconds until `cost` fits.
return bucket(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1')
"""
)


def bucket_args(capacity: float, refill_per_s: float, cost: float, force: bool = False) -> list[Any]:
    return [capacity, refill_per_s, cost, int(force)]


def decision_of(reply: Sequence[Any], capacity: float) -> Decision:
    """The Decision of a bucket's reply (allowed, remaining, reset_s, retry_after_s)."""
    allowed, remaining, reset_s, retry_after_s = (int(value) for value in reply[:4])
    return Decision(bool(allowed), int(capacity), remaining, reset_s, retry_after_s)


class OutagePolicy:
    """What a limiter does when the shared store does not answer (`state.on_error`).

    fail_closed: the StateUnavailable goes on to the caller (503 state_unavailable with
    Retry-After). fail_open: the request goes through unlimited, and a warning says so once
    per outage (RedisState logs the outage itself; this says what it costs)."""

    def __init__(self, on_error: Literal["fail_closed", "fail_open"], limits: str) -> None:
        self.fail_open = on_error == "fail_open"
        self._limits = limits
        self._lifted = False

    def let_through(self) -> bool:
        """Whether the failed check lets the request through (the caller re-raises if not)."""
        if not self.fail_open:
            return False
        if not self._lifted:
            logger.warning(
                "limits not enforced while the state backend is unavailable",
                extra={"limits": self._limits, "on_error": "fail_open"},
            )
        self._lifted = True
        return True

    def answered(self) -> None:
        self._lifted = False
