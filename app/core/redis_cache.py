"""The response cache and single flight shared by every replica through Redis, behind a local layer.

Answers: this replica's own TTL-LRU (`ResponseCache`) answers what it has seen without a Redis
call; a miss there asks Redis (`cache:answer:<key>`, the answer as JSON, expiring
`cache.ttl_seconds` after it was stored), and an answer found there is kept locally too. So a
local copy may outlive the shared one by up to one TTL: answers are deterministic, so it is the
same answer either way.

Single flight: within a replica identical requests follow the first one's in-process Flight,
exactly as with the memory backend, so at most one request per replica and key talks to Redis.
That one either takes the lease (`cache:lease:<key>`, SET NX PX) and generates, or follows the
replica holding it by polling the answer key (first after 10 ms, then backing off to every
100 ms). Polling rather than pub/sub: each poll is one bounded call that reads the answer and the
lease together, so there is no subscribe-then-publish race, no second connection per waiter and
nothing to resubscribe after Redis restarts; waiters are one per replica and key, so it is cheap.
A poll that finds neither answer nor lease means the leader failed, its client left (the lease is
deleted at once) or its replica died: the follower generates alone, as with the memory backend.

The lease lives `state.lock_ttl_s` and the leader renews it every third of that while it runs,
rather than one lease as long as the longest generation (queue + request timeout): a leader's
replica that crashes frees its followers within `lock_ttl_s`, not minutes later. Followers wait
at most `flight_patience_s` in any case.

Redis down or slow: every call is bounded by `state.timeout_s` and counted by `RedisState.run`
(operation "cache"). A lookup that fails is a miss, and the request leads for this replica only
(identical requests here still share its generation); its answer is not stored in Redis while
Redis is known to be down; a follower whose poll fails generates alone. Nothing reaches the
client, and the next request tries Redis again: recovery needs nothing. A lease taken by a call
that timed out (a hung Redis may run it later) holds nobody up beyond `lock_ttl_s`.

Stats (hits, misses, entries, evictions) are this replica's local layer's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from app.core.cache import CacheStats, Flight, Leader, ResponseCache, Seat
from app.core.config import CacheSettings
from app.core.errors import StateUnavailable
from app.core.redis_state import RedisState

V = TypeVar("V")

OPERATION = "cache"
"""The label of every call in llm_state_backend_errors_total."""
POLL_FIRST_S = 0.01
POLL_MAX_S = 0.1

BOARD = """
local answer = redis.call('GET', KEYS[1])
if answer then return answer end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
"""The answer if stored; else 1 if this caller now holds the lease, 0 if another one does."""

POLL = """
local answer = redis.call('GET', KEYS[1])
if answer then return answer end
return redis.call('EXISTS', KEYS[2])
"""
"""The answer if stored; else whether the leader still holds the lease (1) or is gone (0)."""

PUBLISH = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"""
"""Store the answer, then free the lease if it is still this leader's: followers polling in
between see the answer, never a missing lease without one."""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass(frozen=True)
class JsonCodec(Generic[V]):
    """How a value travels through Redis: its fields as a JSON object, rebuilt by `make`."""

    make: Callable[..., V]

    def dumps(self, value: V) -> str:
        return json.dumps(vars(value), separators=(",", ":"))

    def loads(self, raw: bytes) -> V | None:
        """None for what cannot be read (another version's answer, say): a miss, not a failure."""
        try:
            return self.make(**json.loads(raw))
        except (ValueError, TypeError):
            return None


@dataclass
class _Lease:
    key: str
    token: str
    """This leader's own value of the lease, so that it never frees another's."""
    renewing: asyncio.Task[None]


class RedisResponseCache(Generic[V]):
    """A `Cache` shared by the replicas using the same Redis and key prefix. Used from the event
    loop only; `clock` drives the local layer only (Redis expires its own keys)."""

    def __init__(
        self,
        settings: CacheSettings,
        state: RedisState,
        codec: JsonCodec[V],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local: ResponseCache[V] = ResponseCache(settings.size, settings.ttl_seconds, clock)
        self._state = state
        self._codec = codec
        self._ttl_ms = max(1, round(settings.ttl_seconds * 1000))
        self._lease_ms = max(1, round(state.settings.lock_ttl_s * 1000))
        self._background: set[asyncio.Task[Any]] = set()

    def answer_key(self, key: str) -> str:
        return self._state.key("cache", "answer", key)

    def lease_key(self, key: str) -> str:
        return self._state.key("cache", "lease", key)

    async def board(self, key: str) -> Seat[V]:
        seat = self.local.seat(key)
        if isinstance(seat, Leader):
            # Nobody in this replica has the answer or is generating it: ask the others.
            seat = await self._board_shared(key, seat.flight)
        self.local.count(hit=not seat.leads)
        return seat

    def stats(self) -> CacheStats:
        return self.local.stats()

    async def _board_shared(self, key: str, flight: Flight[V]) -> Seat[V]:
        token = secrets.token_hex(16)
        lease_key = self.lease_key(key)
        try:
            found = await self._state.script(
                OPERATION, BOARD, [self.answer_key(key), lease_key], [token, self._lease_ms]
            )
        except StateUnavailable:
            return _SharedLeader(self, key, flight, None)  # single flight within this replica only
        except BaseException:
            # Cancelled mid-call: the lease may have been taken for nobody.
            self.local.abandon(key, flight)
            self._in_background(self._release(lease_key, token))
            raise
        if isinstance(found, bytes):
            value = self._codec.loads(found)
            if value is not None:
                self.local.land(key, value)  # identical requests that joined meanwhile have it too
                return Seat(value)
            return _SharedLeader(self, key, flight, None)  # an unreadable answer: made again, replaced
        if found == 1:
            renewing = asyncio.get_running_loop().create_task(self._renew(lease_key, token))
            return _SharedLeader(self, key, flight, _Lease(lease_key, token, renewing))
        return _RemoteFollower(self, key, flight)

    async def publish(self, key: str, value: V, lease: _Lease | None) -> bool:
        """Store `value` for every replica and free `lease`; whether Redis took it. Without a
        lease Redis was down when this generation began: while it still is, the store is skipped."""
        if lease is None and not self._state.up:
            return False
        args = [self._codec.dumps(value), self._ttl_ms, lease.token if lease else ""]
        keys = [self.answer_key(key), self.lease_key(key)]
        try:
            await self._state.script(OPERATION, PUBLISH, keys, args)
        except StateUnavailable:
            return False
        return True

    async def await_answer(self, key: str, patience_s: float) -> V | None:
        """The answer another replica is generating; None once its lease is gone without one,
        Redis fails, or `patience_s` has passed."""
        keys = [self.answer_key(key), self.lease_key(key)]
        delay = POLL_FIRST_S
        try:
            async with asyncio.timeout(patience_s):
                while True:
                    found = await self._state.script(OPERATION, POLL, keys, [])
                    if isinstance(found, bytes):
                        return self._codec.loads(found)
                    if not found:
                        return None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, POLL_MAX_S)
        except (TimeoutError, StateUnavailable):
            return None

    def release(self, lease: _Lease) -> None:
        """Free `lease` now, without waiting: this runs when a request ends, even a cancelled one."""
        lease.renewing.cancel()
        self._in_background(self._release(lease.key, lease.token))

    async def _release(self, lease_key: str, token: str) -> None:
        # A failure is counted; the lease then expires by itself within lock_ttl_s.
        with contextlib.suppress(StateUnavailable):
            await self._state.script(OPERATION, RELEASE, [lease_key], [token])

    async def _renew(self, lease_key: str, token: str) -> None:
        """Keep the lease while the generation runs; stop once it is no longer this leader's."""
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            try:
                held = await self._state.script(OPERATION, RENEW, [lease_key], [token, self._lease_ms])
            except StateUnavailable:
                continue  # counted; the lease may outlive a short outage
            if not held:
                return

    def _in_background(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)  # a task nobody holds may be collected before it runs
        task.add_done_callback(self._background.discard)


class _SharedLeader(Leader[V]):
    """Generates for every replica (with the lease), or for this one only (Redis was down)."""

    def __init__(self, cache: RedisResponseCache[V], key: str, flight: Flight[V], lease: _Lease | None) -> None:
        super().__init__(cache.local, key, flight)
        self._shared = cache
        self._lease = lease

    async def land(self, value: V) -> None:
        await super().land(value)  # followers in this replica have it at once
        lease = self._lease
        if await self._shared.publish(self._key, value, lease) and lease is not None:
            lease.renewing.cancel()  # the store freed the lease
            self._lease = None

    def leave(self) -> None:
        super().leave()
        lease, self._lease = self._lease, None
        if lease is not None:
            self._shared.release(lease)


class _RemoteFollower(Seat[V]):
    """Follows another replica's generation; this replica's identical requests follow this one."""

    def __init__(self, cache: RedisResponseCache[V], key: str, flight: Flight[V]) -> None:
        super().__init__()
        self._shared, self._key, self._flight = cache, key, flight

    async def wait(self, patience_s: float) -> V | None:
        value = await self._shared.await_answer(self._key, patience_s)
        if value is None:
            self._shared.local.abandon(self._key, self._flight)
        else:
            self._shared.local.land(self._key, value)
        return value

    def leave(self) -> None:
        self._shared.local.abandon(self._key, self._flight)
