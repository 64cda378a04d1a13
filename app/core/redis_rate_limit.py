"""The request-rate limiter every replica shares: one Redis token bucket per identity."""

from __future__ import annotations

from app.core.config import RateLimitSettings
from app.core.errors import StateUnavailable
from app.core.rate_limit import Decision
from app.core.redis_bucket import TAKE_SCRIPT, OutagePolicy, bucket_args, decision_of
from app.core.redis_state import RedisState

OPERATION = "rate_limit"


class RedisRateLimiter:
    """Like MemoryRateLimiter, with the bucket in Redis (key `rate:<identity>`), so the burst
    is granted once across all replicas. When Redis does not answer, `state.on_error` decides:
    fail_closed raises StateUnavailable (503), fail_open answers None (no limit, no headers)."""

    def __init__(self, settings: RateLimitSettings, state: RedisState) -> None:
        self._state = state
        self._capacity = float(settings.burst_size)
        self._refill_per_s = settings.requests_per_minute / 60.0
        self._outage = OutagePolicy(state.settings.on_error, "rate limits")

    async def hit(self, identity: str) -> Decision | None:
        key = self._state.key("rate", identity)
        try:
            reply = await self._state.script(
                OPERATION, TAKE_SCRIPT, [key], bucket_args(self._capacity, self._refill_per_s, 1)
            )
        except StateUnavailable:
            if self._outage.let_through():
                return None
            raise
        self._outage.answered()
        return decision_of(reply, self._capacity)
