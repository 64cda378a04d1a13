"""Token bucket (with an injected clock), API keys, the response cache and its key."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from pydantic import SecretStr
from starlette.datastructures import Headers

from app.api.guard import presented_key
from app.core.cache import ResponseCache
from app.core.config import NamedKey, RateLimitSettings
from app.core.rate_limit import MemoryRateLimiter, TokenBucket
from app.core.security import ApiKeys
from app.engine.types import SamplingParams
from app.services.generation import cache_key


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
async def test_bucket_allows_a_burst_then_refills_at_the_sustained_rate() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(RateLimitSettings(requests_per_minute=60, burst_size=3), clock=clock)
    decisions = [await limiter.hit("ip:1") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[0].limit == 3
    assert decisions[3].retry_after_s == 1  # one token back after 1 s at 60/min
    assert decisions[3].reset_s == 3  # full again after 3 s
    clock.now += 0.5
    assert not (await limiter.hit("ip:1")).allowed
    clock.now += 0.5
    assert (await limiter.hit("ip:1")).allowed
    assert not (await limiter.hit("ip:1")).allowed


@pytest.mark.anyio
async def test_buckets_are_per_identity_and_never_exceed_capacity() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(RateLimitSettings(requests_per_minute=6, burst_size=2), clock=clock)
    assert (await limiter.hit("key:a")).allowed and (await limiter.hit("key:a")).allowed
    assert not (await limiter.hit("key:a")).allowed
    assert (await limiter.hit("key:b")).allowed
    clock.now += 3600
    decision = await limiter.hit("key:a")
    assert decision.allowed and decision.remaining == 1  # capacity 2, not 2 + an hour of refill


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    bucket = TokenBucket(capacity=1, refill_per_s=0.1, tokens=0.0, updated_at=0.0)
    decision = bucket.take(now=2.5)
    assert not decision.allowed and decision.retry_after_s == 8 and decision.reset_s == 8


def test_api_keys_plain_named_and_hashed() -> None:
    keys = ApiKeys(
        [
            SecretStr("plain-key-1"),
            NamedKey(name="alice", key=SecretStr("alice-key-123")),
            NamedKey(name="bob", key_sha256=hashlib.sha256(b"bob-key-4567").hexdigest()),
        ]
    )
    assert keys.enabled and len(keys) == 3
    assert keys.authenticate("plain-key-1") == keys.authenticate("plain-key-1")
    assert keys.authenticate("plain-key-1").name == "key-1"  # type: ignore[union-attr]
    assert keys.authenticate("alice-key-123").name == "alice"  # type: ignore[union-attr]
    assert keys.authenticate("bob-key-4567").name == "bob"  # type: ignore[union-attr]
    for wrong in ["", "alice-key-12", "alice-key-1234", "ALICE-KEY-123", "x" * 100_000, "clé-\udcff"]:
        assert keys.authenticate(wrong) is None
    assert not ApiKeys([]).enabled


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-API-Key": "k1"}, "k1"),
        ({"Authorization": "Bearer k2"}, "k2"),
        ({"Authorization": "bearer   k3 "}, "k3"),
        ({"X-API-Key": "k1", "Authorization": "Bearer k2"}, "k1"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, None),
        ({"Authorization": "Bearer"}, None),
        ({"Authorization": "k4"}, None),
        ({"X-API-Key": "   "}, None),
        ({}, None),
    ],
)
def test_key_is_taken_from_x_api_key_or_bearer(headers: dict[str, str], expected: str | None) -> None:
    assert presented_key(Headers(headers)) == expected


def test_cache_key_covers_model_prompt_and_every_parameter() -> None:
    params = SamplingParams(max_tokens=8, temperature=0.0)
    base = cache_key("m", (1, 2, 3), params)
    assert base == cache_key("m", (1, 2, 3), SamplingParams(max_tokens=8, temperature=0.0))
    variants = [
        cache_key("other", (1, 2, 3), params),
        cache_key("m", (1, 2, 4), params),
        cache_key("m", (1, 2, 3), SamplingParams(max_tokens=9, temperature=0.0)),
        cache_key("m", (1, 2, 3), SamplingParams(max_tokens=8, temperature=0.0, top_k=5)),
        cache_key("m", (1, 2, 3), SamplingParams(max_tokens=8, temperature=0.0, seed=1)),
        cache_key("m", (1, 2, 3), SamplingParams(max_tokens=8, temperature=0.0, stop=("x",))),
        cache_key("m", (1, 2, 3), SamplingParams(max_tokens=8, temperature=0.0, repetition_penalty=1.1)),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_cache_expires_after_ttl_and_evicts_least_recently_used() -> None:
    clock = FakeClock()
    cache: ResponseCache[str] = ResponseCache(size=2, ttl_s=10, clock=clock)
    cache.put("a", "A")
    cache.put("b", "B")
    assert cache.get("a") == "A"  # a is now the most recently used
    cache.put("c", "C")
    assert cache.get("b") is None and cache.get("a") == "A"
    assert cache.stats().evictions == 1
    clock.now += 11
    assert cache.get("a") is None and cache.stats().size == 0
    assert cache.stats().evictions == 1  # expiry is not eviction


def test_cache_counts_and_hit_rate() -> None:
    cache: ResponseCache[str] = ResponseCache(size=4, ttl_s=10)
    cache.count(hit=False)
    cache.count(hit=True)
    cache.count(hit=True)
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.hit_rate) == (2, 1, 0.6667)


def test_single_flight_followers_get_the_leaders_value_or_none() -> None:
    async def scenario() -> tuple[list[str | None], list[str | None]]:
        cache: ResponseCache[str] = ResponseCache(size=4, ttl_s=10)
        cache.take_off("k")
        flight = cache.flight("k")
        assert flight is not None
        waiting = [asyncio.create_task(flight.wait()) for _ in range(3)]
        await asyncio.sleep(0)
        cache.land("k", "answer")
        landed = await asyncio.gather(*waiting)
        assert cache.get("k") == "answer" and cache.flight("k") is None

        cache.take_off("j")
        abandoned = cache.flight("j")
        assert abandoned is not None
        waiting = [asyncio.create_task(abandoned.wait()) for _ in range(2)]
        cache.land("j", None)
        abandoned_results = await asyncio.gather(*waiting)

        cache.take_off("silent")
        silent = cache.flight("silent")
        assert silent is not None
        assert await silent.wait(timeout_s=0.01) is None  # a leader that never answers
        cache.abandon("silent", silent)
        assert cache.flight("silent") is None
        return landed, abandoned_results

    landed, abandoned = asyncio.run(scenario())
    assert landed == ["answer"] * 3
    assert abandoned == [None, None]
