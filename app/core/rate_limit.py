"""Token-bucket rate limiting per client identity (API key name, or IP without one).

Our own small bucket rather than slowapi's: slowapi's backend, `limits`, offers fixed and
sliding windows only, and clients are promised a bucket: a sustained refill plus a burst capacity.
`RateLimiter` is the interface; the in-memory limiter here serves one process, the Redis one
(app/core/redis_rate_limit.py) every replica sharing a Redis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cachetools import TTLCache

from app.core.config import RateLimitSettings

MAX_TRACKED_CLIENTS = 100_000
"""Buckets kept at once; a flood of new addresses cannot grow memory past this."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    """Bucket capacity (X-RateLimit-Limit)."""
    remaining: int
    """Whole requests left now (X-RateLimit-Remaining)."""
    reset_s: int
    """Seconds until the bucket is full again (X-RateLimit-Reset)."""
    retry_after_s: int
    """Seconds until one request is allowed again (Retry-After); 0 when allowed."""

    def headers(self, suffix: str = "") -> dict[str, str]:
        """X-RateLimit-Limit/Remaining/Reset, each name followed by `suffix` (e.g. "-Tokens")."""
        return {
            f"X-RateLimit-Limit{suffix}": str(self.limit),
            f"X-RateLimit-Remaining{suffix}": str(self.remaining),
            f"X-RateLimit-Reset{suffix}": str(self.reset_s),
        }


@dataclass
class TokenBucket:
    capacity: float
    refill_per_s: float
    tokens: float
    updated_at: float

    def take(self, now: float, cost: float = 1.0) -> Decision:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated_at) * self.refill_per_s)
        self.updated_at = now
        allowed = self.tokens >= cost
        if allowed:
            self.tokens -= cost
        return Decision(
            allowed=allowed,
            limit=int(self.capacity),
            remaining=max(0, math.floor(self.tokens + 1e-9)),
            reset_s=math.ceil((self.capacity - self.tokens) / self.refill_per_s - 1e-9),
            retry_after_s=0 if allowed else max(1, math.ceil((cost - self.tokens) / self.refill_per_s - 1e-9)),
        )

    def give_back(self, now: float, amount: float) -> None:
        """Return `amount` (negative: charge it, even into debt) and refill; never above capacity."""
        self.take(now, 0.0)
        self.tokens = min(self.capacity, self.tokens + amount)


class RateLimiter(Protocol):
    """Charges one request to an identity's bucket."""

    async def hit(self, identity: str) -> Decision | None:
        """The verdict; None when there is none (the shared store is down and `state.on_error`
        is fail_open): the request goes through, without rate-limit headers."""
        ...


class MemoryRateLimiter:
    """One bucket per identity. A bucket unused long enough to refill completely is dropped:
    forgetting it changes nothing, so memory follows the clients active right now."""

    def __init__(self, settings: RateLimitSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._capacity = float(settings.burst_size)
        self._refill_per_s = settings.requests_per_minute / 60.0
        full_refill_s = self._capacity / self._refill_per_s
        self._buckets: TTLCache[str, TokenBucket] = TTLCache(MAX_TRACKED_CLIENTS, full_refill_s, timer=clock)

    async def hit(self, identity: str) -> Decision:
        now = self._clock()
        bucket = self._buckets.get(identity)
        if bucket is None:
            bucket = TokenBucket(self._capacity, self._refill_per_s, self._capacity, now)
        decision = bucket.take(now)
        self._buckets[identity] = bucket
        return decision
