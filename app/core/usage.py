"""Usage counters per key name: today (UTC) and in total, behind a small store interface."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol

DAY_S = 86_400
ANONYMOUS = "anonymous"
"""The name usage is counted under for callers without a key."""


@dataclass(frozen=True)
class UsageCounts:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_requests: int = 0
    rate_limited: int = 0

    def __add__(self, other: UsageCounts) -> UsageCounts:
        return UsageCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


class UsageStore(Protocol):
    """Where usage is kept; the in-memory store serves one process, a shared one (Redis) all replicas."""

    async def add(self, key: str, counts: UsageCounts) -> None:
        """Never raises: usage a store cannot keep is lost, and the request it counts is not failed."""
        ...

    async def read(self, key: str) -> tuple[UsageCounts, UsageCounts]:
        """(today, total) for this key name; zeros if it has none. May raise StateUnavailable."""
        ...


class MemoryUsageStore:
    """Per key name: the counts of the current UTC day and the totals. Key names come from the
    configuration (plus `anonymous`), so the store stays as small as the key list."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self._wall_clock = wall_clock
        self._today: dict[str, tuple[int, UsageCounts]] = {}
        self._total: dict[str, UsageCounts] = {}

    async def add(self, key: str, counts: UsageCounts) -> None:
        day = self._day()
        self._today[key] = (day, self._read_today(key, day) + counts)
        self._total[key] = self._total.get(key, UsageCounts()) + counts

    async def read(self, key: str) -> tuple[UsageCounts, UsageCounts]:
        return self._read_today(key, self._day()), self._total.get(key, UsageCounts())

    def _day(self) -> int:
        return int(self._wall_clock() // DAY_S)

    def _read_today(self, key: str, day: int) -> UsageCounts:
        stored_day, counts = self._today.get(key, (day, UsageCounts()))
        return counts if stored_day == day else UsageCounts()
