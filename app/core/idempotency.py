"""Idempotency records behind a small async interface: this process's own (a TTL cache) here,
shared by every replica in `app.core.redis_idempotency`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cachetools import TTLCache

from app.core.config import IdempotencySettings


@dataclass(frozen=True)
class StoredResponse:
    """An answer as it was sent: replayed byte for byte."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass
class Record:
    fingerprint: str
    """What the first request was (method, path, body), to tell a repeat from a reuse."""
    response: StoredResponse | None = None
    """None while the first request still runs."""
    done: asyncio.Event = field(default_factory=asyncio.Event)


class IdempotencyStore(Protocol):
    async def claim(self, key: str, fingerprint: str) -> Record | None:
        """None: the caller now holds `key` and must `complete` or `release` it. Else the record
        of whoever holds it or answered it. May raise StateUnavailable (a shared store down)."""
        ...

    async def complete(self, key: str, response: StoredResponse) -> None:
        """Keep the answer of the caller's claim. Never raises: the answer has already been
        sent, so a store that cannot keep it lets the claim expire instead."""
        ...

    async def release(self, key: str) -> None:
        """Forget a claim whose answer is not to be kept (an error, a client that left).
        Never raises, like `complete`."""
        ...

    async def wait(self, key: str, timeout_s: float) -> None:
        """Until the holder of `key` completes or releases it, or `timeout_s` passes.
        May raise StateUnavailable, like `claim`."""
        ...


class MemoryIdempotencyStore:
    """One process's records; a record expires `ttl_seconds` after it was claimed or completed."""

    def __init__(self, settings: IdempotencySettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._records: TTLCache[str, Record] = TTLCache(settings.max_entries, settings.ttl_seconds, timer=clock)

    async def claim(self, key: str, fingerprint: str) -> Record | None:
        record = self._records.get(key)
        if record is not None:
            return record
        self._records[key] = Record(fingerprint)
        return None

    async def complete(self, key: str, response: StoredResponse) -> None:
        record = self._records.pop(key, None)
        if record is not None:
            # Stored anew: the answer is replayed for a whole TTL from now.
            self._records[key] = Record(record.fingerprint, response, record.done)
            record.done.set()

    async def release(self, key: str) -> None:
        record = self._records.pop(key, None)
        if record is not None:
            record.done.set()

    async def wait(self, key: str, timeout_s: float) -> None:
        record = self._records.get(key)
        if record is not None and record.response is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(record.done.wait(), timeout_s)
