"""Session store: TTL of disuse on an injected clock, LRU bound, length bound, owners."""

from __future__ import annotations

import pytest

from app.core.config import ChatHistorySettings
from app.core.errors import SessionNotFound
from app.engine.types import ChatMessage
from app.services.sessions import SessionStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def turn(n: int) -> list[ChatMessage]:
    return [ChatMessage("user", f"q{n}"), ChatMessage("assistant", f"a{n}")]


def make_store(clock: FakeClock, **settings: float) -> SessionStore:
    return SessionStore(ChatHistorySettings(**settings), clock=clock)  # type: ignore[arg-type]


def test_session_expires_after_ttl_of_disuse() -> None:
    clock = FakeClock()
    store = make_store(clock, ttl_seconds=60)
    session = store.get_or_create("s", None)
    store.replace_history(session, turn(1))
    clock.now += 59
    assert store.get("s", None).messages == tuple(turn(1))  # use refreshes the TTL
    clock.now += 59
    assert store.expires_at(store.get("s", None)) == clock.now + 60
    clock.now += 61
    with pytest.raises(SessionNotFound):
        store.get("s", None)
    assert len(store) == 0


def test_least_recently_used_session_is_evicted_first() -> None:
    clock = FakeClock()
    store = make_store(clock, max_sessions=2)
    for name in ("a", "b"):
        store.replace_history(store.get_or_create(name, None), turn(0))
        clock.now += 1
    store.get("a", None)
    store.replace_history(store.get_or_create("c", None), turn(0))
    assert {name for name in "abc" if _exists(store, name)} == {"a", "c"}


def _exists(store: SessionStore, name: str) -> bool:
    try:
        store.get(name, None)
    except SessionNotFound:
        return False
    return True


def test_history_keeps_the_newest_messages() -> None:
    store = make_store(FakeClock(), max_messages=4)
    session = store.get_or_create("s", None)
    store.replace_history(session, [*turn(1), *turn(2), *turn(3)])
    assert session.messages == (*turn(2), *turn(3))


def test_uncommitted_session_is_invisible_and_forgotten() -> None:
    store = make_store(FakeClock())
    session = store.get_or_create("new", None)
    with pytest.raises(SessionNotFound):
        store.get("new", None)
    assert store.get_or_create("new", None) is session  # concurrent first turns share it
    store.forget_if_uncommitted(session)
    assert store.get_or_create("new", None) is not session


def test_session_of_another_owner_is_not_found() -> None:
    store = make_store(FakeClock())
    store.replace_history(store.get_or_create("s", "alice"), turn(1))
    for action in (lambda: store.get("s", "bob"), lambda: store.get_or_create("s", "bob")):
        with pytest.raises(SessionNotFound):
            action()
    with pytest.raises(SessionNotFound):
        store.delete("s", "bob")
    assert store.get("s", "alice").messages == tuple(turn(1))
