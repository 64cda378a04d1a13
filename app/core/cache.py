"""TTL-LRU cache of whole responses, with single flight for identical concurrent requests.

`Cache` is what the generation service sees: `board` tells a request where it stands (a stored
answer, a follower of an identical generation already running, or the leader that generates).
`ResponseCache` is the memory backend, one process's own; app.core.redis_cache puts one in
front of Redis so that replicas share answers and generations.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from cachetools import TTLCache

V = TypeVar("V")


class _EvictionCountingCache(TTLCache[str, V]):
    """cachetools calls popitem() only to make room: that is an eviction, not an expiry."""

    def __init__(self, maxsize: int, ttl: float, timer: Callable[[], float]) -> None:
        super().__init__(maxsize=maxsize, ttl=ttl, timer=timer)
        self.evictions = 0

    def popitem(self) -> tuple[str, V]:
        self.evictions += 1
        return super().popitem()


@dataclass(frozen=True)
class CacheStats:
    size: int
    capacity: int
    hits: int
    misses: int
    evictions: int

    @property
    def hit_rate(self) -> float:
        looked_up = self.hits + self.misses
        return round(self.hits / looked_up, 4) if looked_up else 0.0


class Flight(Generic[V]):
    """One generation that identical requests wait for. Resolves to its value, or None if it
    did not complete (its own client left, or it failed): then each follower generates alone."""

    def __init__(self) -> None:
        self._result: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()

    async def wait(self, timeout_s: float | None = None) -> V | None:
        """The flight's value; None if it did not complete, or not within `timeout_s`."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._result), timeout_s)
        except TimeoutError:
            return None

    def land(self, value: V | None) -> None:
        if not self._result.done():
            self._result.set_result(value)


class Seat(Generic[V]):
    """Where one request stands with the cache. This base is a stored answer (`answer`), or
    nothing to do at all; followers and leaders override what they do."""

    leads = False
    """Whether this request generates the answer that identical ones wait for."""

    def __init__(self, answer: V | None = None) -> None:
        self.answer = answer

    async def wait(self, patience_s: float) -> V | None:
        """A follower's answer from the generation it follows; None if that did not complete (or
        not within `patience_s`): the follower then generates alone."""
        return self.answer

    async def land(self, value: V) -> None:
        """The leader's generation completed: keep `value` and hand it to the followers."""

    def leave(self) -> None:
        """The request ended (however: also after `land`). Synchronous, so that it runs even from
        a cancelled task: followers must never be left waiting for a leader that is gone."""


class Cache(Protocol[V]):
    """The response cache and single flight, whichever backend keeps them."""

    async def board(self, key: str) -> Seat[V]:
        """The seat of a request for `key`, counted as a hit (a stored answer, or a generation
        to follow) or a miss (it leads)."""
        ...

    def stats(self) -> CacheStats: ...


class ResponseCache(Generic[V]):
    """The memory backend; the local layer of the Redis one. Used from the event loop only;
    `clock` is injectable so tests can move time."""

    def __init__(self, size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: _EvictionCountingCache[V] = _EvictionCountingCache(size, ttl_s, clock)
        self._flights: dict[str, Flight[V]] = {}
        self._hits = 0
        self._misses = 0

    def get(self, key: str) -> V | None:
        return self._entries.get(key)

    def count(self, hit: bool) -> None:
        """Count a lookup; a request answered by another one's generation is a hit too."""
        if hit:
            self._hits += 1
        else:
            self._misses += 1

    def put(self, key: str, value: V) -> None:
        self._entries[key] = value

    def flight(self, key: str) -> Flight[V] | None:
        return self._flights.get(key)

    def take_off(self, key: str) -> Flight[V]:
        flight: Flight[V] = Flight()
        self._flights[key] = flight
        return flight

    def land(self, key: str, value: V | None) -> None:
        """End the flight of `key`, storing `value` if it completed."""
        flight = self._flights.pop(key, None)
        if value is not None:
            self.put(key, value)
        if flight is not None:
            flight.land(value)

    def abandon(self, key: str, flight: Flight[V]) -> None:
        """Drop a flight that never answered, so later identical requests do not follow it."""
        if self._flights.get(key) is flight:
            self.land(key, None)

    def seat(self, key: str) -> Seat[V]:
        """Where a request for `key` stands in this process, not yet counted. Synchronous: no
        other request can take off between the look at the flights and the take-off."""
        stored = self.get(key)
        if stored is not None:
            return Seat(stored)
        flight = self.flight(key)
        if flight is not None:
            return Follower(self, key, flight)
        return Leader(self, key, self.take_off(key))

    async def board(self, key: str) -> Seat[V]:
        seat = self.seat(key)
        self.count(hit=not seat.leads)
        return seat

    def stats(self) -> CacheStats:
        self._entries.expire()
        return CacheStats(
            size=len(self._entries),
            capacity=int(self._entries.maxsize),
            hits=self._hits,
            misses=self._misses,
            evictions=self._entries.evictions,
        )


class Follower(Seat[V]):
    """Follows a generation of this process."""

    def __init__(self, cache: ResponseCache[V], key: str, flight: Flight[V]) -> None:
        super().__init__()
        self._cache, self._key, self._flight = cache, key, flight

    async def wait(self, patience_s: float) -> V | None:
        value = await self._flight.wait(patience_s)
        if value is None:
            # Later identical requests do not follow a leader that failed or is too slow.
            self._cache.abandon(self._key, self._flight)
        return value


class Leader(Seat[V]):
    """Generates in this process while identical requests here follow its flight."""

    leads = True

    def __init__(self, cache: ResponseCache[V], key: str, flight: Flight[V]) -> None:
        super().__init__()
        self._cache, self._key, self.flight = cache, key, flight

    async def land(self, value: V) -> None:
        self._cache.land(self._key, value)

    def leave(self) -> None:
        self._cache.abandon(self._key, self.flight)
