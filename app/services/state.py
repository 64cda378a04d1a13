"""Where every piece of shared state is kept, chosen once per app by `state.backend`.

memory: this process's own stores (one replica). redis: stores that every replica shares
through one `RedisState` connection. Each store has one interface and both implementations;
the services and the HTTP layer never know which they got.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.cache import Cache, ResponseCache
from app.core.config import RateLimitSettings, Settings
from app.core.idempotency import IdempotencyStore, MemoryIdempotencyStore
from app.core.metrics import LLMMetrics
from app.core.rate_limit import MemoryRateLimiter, RateLimiter
from app.core.redis_cache import JsonCodec, RedisResponseCache
from app.core.redis_idempotency import RedisIdempotencyStore, claim_ttl_s
from app.core.redis_rate_limit import RedisRateLimiter
from app.core.redis_state import RedisState
from app.core.redis_token_budget import RedisTokenBudget
from app.core.redis_usage import RedisUsageStore
from app.core.token_budget import MemoryTokenBudget, TokenBudget
from app.core.usage import MemoryUsageStore, UsageStore
from app.services.generation import Completion
from app.services.redis_sessions import RedisSessionStore
from app.services.sessions import MemorySessionStore, SessionStore


@dataclass(frozen=True)
class SharedState:
    redis: RedisState | None
    """The connection every Redis-backed store uses; None with the memory backend."""
    sessions: SessionStore
    limiter: RateLimiter | None
    """None: rate limiting is off."""
    budget: TokenBudget | None
    """None: no token budget or quota is configured."""
    usage: UsageStore
    cache: Cache[Completion] | None
    """None: the response cache is off."""
    idempotency: IdempotencyStore | None
    """None: Idempotency-Key is not honoured."""

    async def healthy(self) -> bool:
        """Whether the backend answers now (always, for memory)."""
        return self.redis is None or await self.redis.ping()

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.close()


def build_state(settings: Settings, metrics: LLMMetrics) -> SharedState:
    redis = RedisState(settings.state, metrics) if settings.state.backend == "redis" else None
    rate_limit = settings.rate_limit
    return SharedState(
        redis=redis,
        sessions=_sessions(settings, redis),
        limiter=_limiter(rate_limit, redis),
        budget=_budget(settings, redis),
        usage=RedisUsageStore(redis) if redis is not None else MemoryUsageStore(),
        cache=_cache(settings, redis),
        idempotency=_idempotency(settings, redis),
    )


def _sessions(settings: Settings, redis: RedisState | None) -> SessionStore:
    # A turn waits for the session's running turn as a request waits in the engine's queue.
    wait_s = settings.engine.queue_timeout_s
    if redis is not None:
        return RedisSessionStore(redis, settings.chat_history, wait_s=wait_s)
    return MemorySessionStore(settings.chat_history, wait_s=wait_s)


def _cache(settings: Settings, redis: RedisState | None) -> Cache[Completion] | None:
    if not settings.cache.enabled:
        return None
    if redis is not None:
        return RedisResponseCache(settings.cache, redis, JsonCodec(Completion))
    return ResponseCache(settings.cache.size, settings.cache.ttl_seconds)


def _idempotency(settings: Settings, redis: RedisState | None) -> IdempotencyStore | None:
    if not settings.idempotency.enabled:
        return None
    if redis is not None:
        return RedisIdempotencyStore(redis, settings.idempotency.ttl_seconds, claim_ttl_s(settings))
    return MemoryIdempotencyStore(settings.idempotency)


def _limiter(rate_limit: RateLimitSettings, redis: RedisState | None) -> RateLimiter | None:
    if not rate_limit.enabled:
        return None
    if redis is not None:
        return RedisRateLimiter(rate_limit, redis)
    return MemoryRateLimiter(rate_limit)


def _budget(settings: Settings, redis: RedisState | None) -> TokenBudget | None:
    if redis is not None:
        return RedisTokenBudget.from_settings(settings.rate_limit, settings.security.api_keys, redis)
    return MemoryTokenBudget.from_settings(settings.rate_limit, settings.security.api_keys)
