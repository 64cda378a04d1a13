"""Chat sessions: history per id, expiring after a TTL of disuse, least recently used evicted first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cachetools import TTLCache

from app.core.config import ChatHistorySettings
from app.core.errors import SessionNotFound
from app.engine.types import ChatMessage


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


class SessionStore:
    def __init__(self, settings: ChatHistorySettings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._sessions: TTLCache[str, Session] = TTLCache(
            maxsize=settings.max_sessions, ttl=settings.ttl_seconds, timer=clock
        )

    def __len__(self) -> int:
        self._sessions.expire()
        return sum(1 for session in self._sessions.values() if session.committed)

    def get(self, session_id: str, owner: str | None) -> Session:
        """The session, refreshed; SessionNotFound for unknown, expired or someone else's."""
        session = self._sessions.get(session_id)
        if session is None or not session.committed or session.owner != owner:
            raise SessionNotFound(f"session {session_id!r} not found", param="session_id")
        self._touch(session)
        return session

    def get_or_create(self, session_id: str, owner: str | None) -> Session:
        """The session a turn works on. A new one is held (so concurrent first turns share its
        lock) but stays invisible until `replace_history` commits a first turn."""
        session = self._sessions.get(session_id)
        if session is not None and session.owner != owner:
            raise SessionNotFound(f"session {session_id!r} not found", param="session_id")
        if session is None:
            session = Session(session_id=session_id, owner=owner)
        self._touch(session)
        return session

    def forget_if_uncommitted(self, session: Session) -> None:
        """After a failed first turn the session never existed."""
        if not session.committed and self._sessions.get(session.session_id) is session:
            del self._sessions[session.session_id]

    def delete(self, session_id: str, owner: str | None) -> None:
        self.get(session_id, owner)
        self._sessions.pop(session_id, None)

    def replace_history(self, session: Session, messages: Sequence[ChatMessage]) -> None:
        """Store the turn's outcome, keeping at most `max_messages`, oldest dropped first."""
        session.messages = tuple(messages)[-self._settings.max_messages :]
        self._touch(session)

    def expires_at(self, session: Session) -> float:
        return session.last_used + self._settings.ttl_seconds

    def _touch(self, session: Session) -> None:
        session.last_used = self._clock()
        self._sessions[session.session_id] = session
