"""Idempotency records shared by every replica: one Redis string per key, claimed atomically.

A record is JSON while its request runs (`{"fingerprint", "owner"}`), and JSON, a newline
and the body's raw bytes once answered; JSON never holds a raw newline, so the first one
ends the metadata and the body stays byte for byte what was sent.

Redis down: `claim` and `wait` raise StateUnavailable (503 `state_unavailable`). Running the
request without a claim could run it twice, which is what the key exists to prevent, while a
refusal is safe: nothing ran, so the client retries with the same key and loses nothing.
`complete` and `release` never raise: the answer has already gone out; the record left
pending expires after its claim TTL, and until then a repeat gets 409 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import cast

from app.core.config import Settings
from app.core.errors import StateUnavailable
from app.core.idempotency import Record, StoredResponse
from app.core.redis_state import RedisState

OPERATION = "idempotency"
SEND_GRACE_S = 30.0
"""Past a generation's longest run: time to send a finished answer to a slow client and store it."""
FIRST_POLL_S = 0.02
LONGEST_POLL_S = 0.5
_SEPARATOR = b"\n"

_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
"""The record already there, or nil once the caller's pending record is set (GET and SET NX in one step)."""

_COMPLETE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
"""Replace the caller's own pending record by the answer; a record that expired and was
claimed again by another request is someone else's, and is left alone."""

_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


def claim_ttl_s(settings: Settings) -> float:
    """How long a pending record lives: the longest a request may queue and run, plus the time
    to send its answer, so a replica that crashed mid-request blocks its key that long at most.
    Never past `idempotency.ttl_seconds`, which bounds a pending record in memory too."""
    engine = settings.engine
    longest_request_s = engine.queue_timeout_s + engine.request_timeout_s + SEND_GRACE_S
    return min(settings.idempotency.ttl_seconds, longest_request_s)


class RedisIdempotencyStore:
    """The records every replica sees. A claim is remembered here by the exact pending value
    written (with a random owner token), so `complete` and `release` touch only the caller's
    own record, never one another request claimed after it expired."""

    def __init__(self, state: RedisState, ttl_s: float, claim_ttl_s: float) -> None:
        self._state = state
        self._ttl_ms = _milliseconds(ttl_s)
        self._claim_ttl_ms = _milliseconds(claim_ttl_s)
        self._held: dict[str, bytes] = {}
        """Store key -> the pending value this process wrote for it."""

    async def claim(self, key: str, fingerprint: str) -> Record | None:
        mine = self._held.get(key)
        if mine is not None:
            # Still running here even if its record expired in Redis: one claim per key and
            # process, so `complete` and `release` always know which record is theirs.
            return _record(mine)
        pending = json.dumps({"fingerprint": fingerprint, "owner": uuid.uuid4().hex}).encode()
        held = await self._state.script(OPERATION, _CLAIM, [self._key(key)], [pending, self._claim_ttl_ms])
        if held is None:
            self._held[key] = pending
            return None
        return _record(held)

    async def complete(self, key: str, response: StoredResponse) -> None:
        pending = self._held.pop(key, None)
        if pending is None:
            return
        fingerprint = json.loads(pending)["fingerprint"]
        meta = {"fingerprint": fingerprint, "status": response.status, "headers": list(response.headers)}
        answer = json.dumps(meta).encode() + _SEPARATOR + response.body
        # A failure is counted and logged by RedisState; the pending record expires on its own.
        with contextlib.suppress(StateUnavailable):
            await self._state.script(OPERATION, _COMPLETE, [self._key(key)], [pending, answer, self._ttl_ms])

    async def release(self, key: str) -> None:
        pending = self._held.pop(key, None)
        if pending is None:
            return
        # As in `complete`: on failure the key stays blocked until the pending record expires.
        with contextlib.suppress(StateUnavailable):
            await self._state.script(OPERATION, _RELEASE, [self._key(key)], [pending])

    async def wait(self, key: str, timeout_s: float) -> None:
        """Polls, backing off to LONGEST_POLL_S: the holder may be another replica, whose
        answer no event of this process can announce."""
        deadline = time.monotonic() + timeout_s
        store_key = self._key(key)
        delay = FIRST_POLL_S
        while True:
            # The client answers bytes: it is made without decode_responses.
            value = cast("bytes | None", await self._state.run(OPERATION, lambda client: client.get(store_key)))
            if value is None or _record(value).response is not None:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, LONGEST_POLL_S)

    def _key(self, key: str) -> str:
        return self._state.key("idempotency", key)


def _record(value: bytes) -> Record:
    meta, separator, body = value.partition(_SEPARATOR)
    fields = json.loads(meta)
    if not separator:
        return Record(fields["fingerprint"])
    headers = tuple((name, header) for name, header in fields["headers"])
    return Record(fields["fingerprint"], StoredResponse(fields["status"], headers, body))


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))
