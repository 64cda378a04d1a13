"""Chat sessions: history per id, expiring after a TTL of disuse, least recently used evicted first.

One interface (`SessionStore`, `SessionTurn`) and this process's own implementation; the
Redis one, shared by replicas, is in app.services.redis_sessions. A turn holds its session
for its whole run, so two turns of one session never interleave: a second turn waits for
the first, at most `wait_s`, then gets 409 session_busy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cachetools import TTLCache

from app.core.config import ChatHistorySettings
from app.core.errors import SessionBusy, SessionNotFound
from app.engine.types import ChatMessage


@dataclass(frozen=True)
class SessionView:
    """A session as read: its history and when it expires unless used again (Unix seconds)."""

    session_id: str
    messages: tuple[ChatMessage, ...]
    expires_at: float


class SessionTurn(Protocol):
    """One turn's hold on its session, from `begin_turn` until `end`."""

    @property
    def history(self) -> tuple[ChatMessage, ...]:
        """The stored history when the turn began."""
        ...

    async def commit(self, messages: Sequence[ChatMessage]) -> None:
        """Replace the history by `messages` (the newest `max_messages` of them)."""
        ...

    def end(self) -> None:
        """Let the next turn in; a turn that never committed changed nothing. Idempotent."""
        ...


class SessionStore(Protocol):
    def __len__(self) -> int:
        """Sessions held (those with a committed turn): cheap, never waits on I/O, for the
        `llm_chat_sessions` gauge and /status."""
        ...

    async def get(self, session_id: str, owner: str | None) -> SessionView:
        """The session, its TTL refreshed; SessionNotFound for unknown, expired or someone else's."""
        ...

    async def delete(self, session_id: str, owner: str | None) -> None:
        """Forget the session; SessionNotFound as `get`."""
        ...

    async def begin_turn(self, session_id: str, owner: str | None) -> SessionTurn:
        """Hold the session for one turn, waiting for a turn already running on it; SessionBusy
        if that takes longer than the store's `wait_s`, SessionNotFound if someone else owns it.
        A new session stays invisible until its first turn commits."""
        ...


def busy(session_id: str, wait_s: float) -> SessionBusy:
    return SessionBusy(
        f"another turn of session {session_id!r} is still running (waited {wait_s:g} s); retry shortly",
        param="session_id",
    )


def not_found(session_id: str) -> SessionNotFound:
    return SessionNotFound(f"session {session_id!r} not found", param="session_id")


@dataclass(eq=False)
class Session:
    session_id: str
    owner: str | None
    messages: tuple[ChatMessage, ...] = ()
    last_used: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held for a whole turn, so turns of one session never interleave."""

    @property
    def committed(self) -> bool:
        """A first turn succeeded (every turn stores at least two messages); until then the
        session is invisible (404)."""
        return bool(self.messages)


class MemorySessionStore:
    """This process's sessions (one replica). `wait_s`: how long a turn waits for the one
    running on its session before 409 session_busy."""

    def __init__(self, settings: ChatHistorySettings, *, wait_s: float, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._wait_s = wait_s
        self._clock = clock
        self._sessions: TTLCache[str, Session] = TTLCache(
            maxsize=settings.max_sessions, ttl=settings.ttl_seconds, timer=clock
        )

    def __len__(self) -> int:
        self._sessions.expire()
        return sum(1 for session in self._sessions.values() if session.committed)

    async def get(self, session_id: str, owner: str | None) -> SessionView:
        session = self._visible(session_id, owner)
        return SessionView(session.session_id, session.messages, self.expires_at(session))

    async def delete(self, session_id: str, owner: str | None) -> None:
        self._visible(session_id, owner)
        self._sessions.pop(session_id, None)

    async def begin_turn(self, session_id: str, owner: str | None) -> SessionTurn:
        session = self.get_or_create(session_id, owner)
        try:
            # asyncio.timeout, not wait_for: a lock granted just as the time runs out is handed
            # on by Lock.acquire's own cancellation handling instead of being lost.
            async with asyncio.timeout(self._wait_s):
                await session.lock.acquire()
        except TimeoutError:
            raise busy(session_id, self._wait_s) from None
        return _MemoryTurn(self, session)

    def get_or_create(self, session_id: str, owner: str | None) -> Session:
        """The session a turn works on. A new one is held (so concurrent first turns share its
        lock) but stays invisible until `replace_history` commits a first turn."""
        session = self._sessions.get(session_id)
        if session is not None and session.owner != owner:
            raise not_found(session_id)
        if session is None:
            session = Session(session_id=session_id, owner=owner)
        self._touch(session)
        return session

    def forget_if_uncommitted(self, session: Session) -> None:
        """After a failed first turn the session never existed."""
        if not session.committed and self._sessions.get(session.session_id) is session:
            del self._sessions[session.session_id]

    def replace_history(self, session: Session, messages: Sequence[ChatMessage]) -> None:
        """Store the turn's outcome, keeping at most `max_messages`, oldest dropped first."""
        session.messages = tuple(messages)[-self._settings.max_messages :]
        self._touch(session)

    def expires_at(self, session: Session) -> float:
        return session.last_used + self._settings.ttl_seconds

    def _visible(self, session_id: str, owner: str | None) -> Session:
        """The session, refreshed; SessionNotFound for unknown, uncommitted or someone else's."""
        session = self._sessions.get(session_id)
        if session is None or not session.committed or session.owner != owner:
            raise not_found(session_id)
        self._touch(session)
        return session

    def _touch(self, session: Session) -> None:
        session.last_used = self._clock()
        self._sessions[session.session_id] = session


class _MemoryTurn:
    def __init__(self, store: MemorySessionStore, session: Session) -> None:
        self._store = store
        self._session = session
        self._ended = False
        self.history = session.messages

    async def commit(self, messages: Sequence[ChatMessage]) -> None:
        self._store.replace_history(self._session, messages)

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._store.forget_if_uncommitted(self._session)
        self._session.lock.release()
