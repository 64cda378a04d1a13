"""TTL-LRU cache of whole responses, with single flight for identical concurrent requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

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


class ResponseCache(Generic[V]):
    """Used from the event loop only; `clock` is injectable so tests can move time."""

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

    def stats(self) -> CacheStats:
        self._entries.expire()
        return CacheStats(
            size=len(self._entries),
            capacity=int(self._entries.maxsize),
            hits=self._hits,
            misses=self._misses,
            evictions=self._entries.evictions,
        )
