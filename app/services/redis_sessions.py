"""Chat sessions in Redis, shared by every replica: the same contract as the memory store.

Keys (under `state.key_prefix`): `sessions:history:<id>` a hash {owner, messages (JSON)} that
expires `ttl_seconds` after its last use; `sessions:lru` a sorted set of id -> last use (ms, by
Redis's clock), which bounds the count at `max_sessions` (least recently used deleted first) and
counts the sessions; `sessions:lock:<id>` the turn lock: a random token per turn, expiring
`state.lock_ttl_s` after its holder last renewed it. Every step that reads and writes is one
Lua script, so replicas never see half of one.

A turn: take the lock (SET NX PX); a second turn polls it with a short backoff, at most
`wait_s`, then gets 409 session_busy (polling, not keyspace notifications: nothing to set up on
Redis and no subscriber connection per waiter). While the turn runs a task renews the lock,
only while it still holds it, so a replica that dies frees the session within lock_ttl_s. The
commit replaces the history only if the turn still holds the lock, and releases it in the same
script; a turn that fails or whose client leaves releases the lock and changes nothing.

Redis down: every call raises StateUnavailable (503 state_unavailable) within `state.timeout_s`.
The session count (`len`) never waits on Redis: it is the count the last script returned,
refreshed in the background when read, so the gauge and /status are at most one read behind.
The sessions' keys are derived inside the scripts (eviction), so this needs one Redis, not a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Coroutine, Sequence
from typing import Any, cast

from app.core.config import ChatHistorySettings
from app.core.errors import SessionBusy, StateUnavailable
from app.core.redis_state import RedisState
from app.engine.types import ChatMessage
from app.services.sessions import SessionTurn, SessionView, busy, not_found

logger = logging.getLogger("app.sessions")

OPERATION = "sessions"
"""The `operation` label of llm_state_backend_errors_total."""
FIRST_POLL_S = 0.005
LAST_POLL_S = 0.1
"""A waiting turn polls the lock at these intervals, doubling from the first to the last."""

_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Drops the index entries of sessions whose history has expired; the count of those left.
local function held(lru, now, ttl_ms)
  redis.call('ZREMRANGEBYSCORE', lru, '-inf', now - tonumber(ttl_ms))
  return redis.call('ZCARD', lru)
end
local function touch(history, lru, now, ttl_ms, id)
  redis.call('PEXPIRE', history, ttl_ms)
  redis.call('ZADD', lru, now, id)
end
"""

ACQUIRE = (
    _PRELUDE
    + """
-- KEYS: lock, history, lru. ARGV: token, lock_ttl_ms, owner, ttl_ms, id.
-- {-1}: someone else's session; {0}: another turn holds it; {1, messages or ''}: held now.
local owner = redis.call('HGET', KEYS[2], 'owner')
if owner and owner ~= ARGV[3] then return {-1} end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0} end
if not owner then return {1, ''} end
touch(KEYS[2], KEYS[3], now_ms(), ARGV[4], ARGV[5])
return {1, redis.call('HGET', KEYS[2], 'messages')}
"""
)

READ = (
    _PRELUDE
    + """
-- KEYS: history, lru. ARGV: owner, ttl_ms, id. nil: no such session of this owner.
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return false end
local now = now_ms()
touch(KEYS[1], KEYS[2], now, ARGV[2], ARGV[3])
return {redis.call('HGET', KEYS[1], 'messages'), now, held(KEYS[2], now, ARGV[2])}
"""
)

DELETE = (
    _PRELUDE
    + """
-- KEYS: history, lru. ARGV: owner, ttl_ms, id. nil: no such session of this owner; else the count.
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return false end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[3])
return held(KEYS[2], now_ms(), ARGV[2])
"""
)

COMMIT = (
    _PRELUDE
    + """
-- KEYS: lock, history, lru. ARGV: token, owner, messages, ttl_ms, max_sessions, id, history key prefix.
-- nil: the turn no longer holds the lock (nothing written); else the count.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local now = now_ms()
redis.call('HSET', KEYS[2], 'owner', ARGV[2], 'messages', ARGV[3])
touch(KEYS[2], KEYS[3], now, ARGV[4], ARGV[6])
redis.call('DEL', KEYS[1])
local count = held(KEYS[3], now, ARGV[4])
local over = count - tonumber(ARGV[5])
if over > 0 then
  -- One more than needed: the session just committed may share the oldest score; it stays.
  for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, over)) do
    if over > 0 and id ~= ARGV[6] then
      redis.call('DEL', ARGV[7] .. id)
      redis.call('ZREM', KEYS[3], id)
      over = over - 1
      count = count - 1
    end
  end
end
return count
"""
)

COUNT = (
    _PRELUDE
    + """
-- KEYS: lru. ARGV: ttl_ms.
return held(KEYS[1], now_ms(), ARGV[1])
"""
)

RENEW = """
-- KEYS: lock. ARGV: token, lock_ttl_ms. 1: renewed; 0: the lock is someone else's or gone.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

RELEASE = """
-- KEYS: lock. ARGV: token.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisSessionStore:
    """Sessions shared through `state`. `wait_s`: how long a turn waits for the one running on
    its session (on any replica) before 409 session_busy."""

    def __init__(self, state: RedisState, settings: ChatHistorySettings, *, wait_s: float) -> None:
        self._state = state
        self._settings = settings
        self._wait_s = wait_s
        self._ttl_ms = _ms(settings.ttl_seconds)
        self._lock_ttl_s = state.settings.lock_ttl_s
        self._lru = state.key("sessions", "lru")
        self._count = 0
        self._counting: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        """Releases and renewals under way: held here so that the loop does not drop them."""

    def __len__(self) -> int:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._count  # read from outside the loop: the last count stands
        if self._counting is None or self._counting.done():
            self._counting = self._spawn(self._recount(), "sessions-count")
        return self._count

    async def get(self, session_id: str, owner: str | None) -> SessionView:
        args = [_owner(owner), self._ttl_ms, session_id]
        reply = await self._state.script(OPERATION, READ, [self._history(session_id), self._lru], args)
        if reply is None:
            raise not_found(session_id)
        messages, now_ms, count = reply
        self._count = int(count)
        return SessionView(session_id, _decode(messages), (int(now_ms) + self._ttl_ms) / 1000)

    async def delete(self, session_id: str, owner: str | None) -> None:
        args = [_owner(owner), self._ttl_ms, session_id]
        count = await self._state.script(OPERATION, DELETE, [self._history(session_id), self._lru], args)
        if count is None:
            raise not_found(session_id)
        self._count = int(count)

    async def begin_turn(self, session_id: str, owner: str | None) -> SessionTurn:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s
        lock, token = self._lock(session_id), secrets.token_hex(16)
        keys = [lock, self._history(session_id), self._lru]
        args = [token, _ms(self._lock_ttl_s), _owner(owner), self._ttl_ms, session_id]
        pause = FIRST_POLL_S
        while True:
            try:
                reply = await self._state.script(OPERATION, ACQUIRE, keys, args)
            except BaseException:
                # The lock may have been taken though the answer was lost (a timeout, the
                # client gone): give it back rather than block the session for lock_ttl_s.
                self._spawn(self._release(lock, token), "sessions-release")
                raise
            if reply[0] == -1:
                raise not_found(session_id)
            if reply[0] == 1:
                return _RedisTurn(self, session_id, owner, token, _decode(reply[1]))
            left = deadline - loop.time()
            if left <= 0:
                raise busy(session_id, self._wait_s)
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, LAST_POLL_S)

    async def commit(self, session_id: str, owner: str | None, token: str, messages: Sequence[ChatMessage]) -> bool:
        """Replace the history if `token` still holds the lock, and release it; False if it did not."""
        kept = list(messages)[-self._settings.max_messages :]
        encoded = json.dumps([{"role": m.role, "content": m.content} for m in kept], ensure_ascii=False)
        keys = [self._lock(session_id), self._history(session_id), self._lru]
        args = [token, _owner(owner), encoded, self._ttl_ms, self._settings.max_sessions, session_id, self._history("")]
        count = await self._state.script(OPERATION, COMMIT, keys, args)
        if count is None:
            return False
        self._count = int(count)
        return True

    def keep_held(self, session_id: str, token: str) -> asyncio.Task[None]:
        """The task that renews the lock while the turn runs; the turn cancels it."""
        return self._spawn(self._renew_while_held(session_id, token), "sessions-renew")

    async def _renew_while_held(self, session_id: str, token: str) -> None:
        """Every third of lock_ttl_s, extend the lock while `token` holds it. A failed call is
        not the end: the lock may outlive a short outage, and the commit checks it anyway."""
        lock = self._lock(session_id)
        while True:
            await asyncio.sleep(self._lock_ttl_s / 3)
            try:
                renewed = await self._state.script(OPERATION, RENEW, [lock], [token, _ms(self._lock_ttl_s)])
            except StateUnavailable:
                continue  # counted and logged once per outage by RedisState
            if not renewed:
                logger.warning("a chat turn lost its session lock; its answer will not be stored")
                return

    def release(self, session_id: str, token: str) -> None:
        """Give the lock back in the background (the caller cannot wait); if Redis does not
        answer, the lock expires by itself within lock_ttl_s."""
        self._spawn(self._release(self._lock(session_id), token), "sessions-release")

    async def _release(self, lock: str, token: str) -> None:
        # A failure is counted by RedisState; the lock then expires by itself.
        with contextlib.suppress(StateUnavailable):
            await self._state.script(OPERATION, RELEASE, [lock], [token])

    async def _recount(self) -> None:
        # A failure is counted by RedisState; the last count stands until Redis answers again.
        with contextlib.suppress(StateUnavailable):
            self._count = int(await self._state.script(OPERATION, COUNT, [self._lru], [self._ttl_ms]))

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("session background task failed", exc_info=task.exception())

    def _history(self, session_id: str) -> str:
        return self._state.key("sessions", "history", session_id)

    def _lock(self, session_id: str) -> str:
        return self._state.key("sessions", "lock", session_id)


class _RedisTurn:
    def __init__(
        self, store: RedisSessionStore, session_id: str, owner: str | None, token: str, history: tuple[ChatMessage, ...]
    ) -> None:
        self._store = store
        self._session_id = session_id
        self._owner = owner
        self._token = token
        self.history = history
        self._ended = False
        self._committed = False
        self._renewal = store.keep_held(session_id, token)

    async def commit(self, messages: Sequence[ChatMessage]) -> None:
        # No renewal from here on: the commit itself releases the lock.
        self._renewal.cancel()
        if not await self._store.commit(self._session_id, self._owner, self._token, messages):
            raise SessionBusy(
                f"the turn lost its hold on session {self._session_id!r} (it was not renewed within "
                "state.lock_ttl_s); its answer was not stored: retry the turn",
                param="session_id",
            )
        self._committed = True

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._renewal.cancel()
        if not self._committed:
            self._store.release(self._session_id, self._token)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _owner(owner: str | None) -> str:
    """Key names are never empty, so '' stands for the anonymous caller (no keys configured)."""
    return owner or ""


def _decode(raw: bytes | str) -> tuple[ChatMessage, ...]:
    if not raw:
        return ()
    return tuple(ChatMessage(cast(Any, m["role"]), m["content"]) for m in json.loads(raw))
