"""Usage counters shared by every replica: Redis hashes per key name, one per UTC day and one in total.

Every replica adds to the same hashes with HINCRBY in one MULTI, so a day's counts and the
total never disagree, and reading from any replica gives the sum of all of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import redis.asyncio as redis

from app.core.errors import StateUnavailable
from app.core.redis_state import RedisState
from app.core.usage import DAY_S, UsageCounts

logger = logging.getLogger("app.state")

OPERATION = "usage"
DAY_KEPT_S = 3 * DAY_S
"""Only today's hash is read; keeping each a little longer than its day covers replicas whose
clocks disagree around midnight, and lets an operator look at yesterday."""
_FIELDS = tuple(f.name for f in fields(UsageCounts))


class RedisUsageStore:
    """The day is the replica's own UTC day (clocks kept in step by NTP: a skew only moves a
    request counted around midnight to the neighbouring day). Redis down: `add` loses the
    counts (logged once per outage, counted in llm_state_backend_errors_total by RedisState)
    and `read` raises StateUnavailable."""

    def __init__(self, state: RedisState, wall_clock: Callable[[], float] = time.time) -> None:
        self._state = state
        self._wall_clock = wall_clock
        self._losing = False
        """Whether the last write was lost: the loss is logged once, not once per request."""

    async def add(self, key: str, counts: UsageCounts) -> None:
        increments = [(name, getattr(counts, name)) for name in _FIELDS if getattr(counts, name)]
        if not increments:
            return
        day_key, total_key = self._keys(key)

        async def write(client: redis.Redis) -> None:
            async with client.pipeline(transaction=True) as pipe:
                for name, value in increments:
                    pipe.hincrby(day_key, name, value)
                    pipe.hincrby(total_key, name, value)
                pipe.expire(day_key, DAY_KEPT_S)
                await pipe.execute()

        try:
            await self._state.run(OPERATION, write)
        except StateUnavailable:
            if not self._losing:
                logger.warning("usage is not counted while the state backend is unavailable", extra={"key": key})
            self._losing = True
            return
        if self._losing:
            logger.info("usage is counted again")
        self._losing = False

    async def read(self, key: str) -> tuple[UsageCounts, UsageCounts]:
        day_key, total_key = self._keys(key)

        async def read_both(client: redis.Redis) -> list[Any]:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hgetall(day_key)
                pipe.hgetall(total_key)
                result: list[Any] = await pipe.execute()
                return result

        today, total = await self._state.run(OPERATION, read_both)
        return _counts(today), _counts(total)

    def _keys(self, key: str) -> tuple[str, str]:
        day = int(self._wall_clock() // DAY_S)
        return self._state.key("usage", key, "day", str(day)), self._state.key("usage", key, "total")


def _counts(stored: dict[bytes, bytes]) -> UsageCounts:
    return UsageCounts(**{name: int(stored.get(name.encode(), 0)) for name in _FIELDS})
