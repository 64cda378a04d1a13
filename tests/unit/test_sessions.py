"""Memory session store: TTL of disuse on an injected clock, LRU bound, length bound, owners, turns."""

from __future__ import annotations

import asyncio

import pytest

from app.core.config import ChatHistorySettings
from app.core.errors import SessionBusy, SessionNotFound
from app.engine.types import ChatMessage
from app.services.sessions import MemorySessionStore

pytestmark = pytest.mark.anyio


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def turn(n: int) -> list[ChatMessage]:
    return [ChatMessage("user", f"q{n}"), ChatMessage("assistant", f"a{n}")]


def make_store(clock: FakeClock, **settings: float) -> MemorySessionStore:
    return MemorySessionStore(ChatHistorySettings(**settings), wait_s=1.0, clock=clock)  # type: ignore[arg-type]


async def test_session_expires_after_ttl_of_disuse() -> None:
    clock = FakeClock()
    store = make_store(clock, ttl_seconds=60)
    session = store.get_or_create("s", None)
    store.replace_history(session, turn(1))
    clock.now += 59
    assert (await store.get("s", None)).messages == tuple(turn(1))  # use refreshes the TTL
    clock.now += 59
    assert (await store.get("s", None)).expires_at == clock.now + 60
    clock.now += 61
    with pytest.raises(SessionNotFound):
        await store.get("s", None)
    assert len(store) == 0


async def test_least_recently_used_session_is_evicted_first() -> None:
    clock = FakeClock()
    store = make_store(clock, max_sessions=2)
    for name in ("a", "b"):
        store.replace_history(store.get_or_create(name, None), turn(0))
        clock.now += 1
    await store.get("a", None)
    store.replace_history(store.get_or_create("c", None), turn(0))
    assert {name for name in "abc" if await _exists(store, name)} == {"a", "c"}


async def _exists(store: MemorySessionStore, name: str) -> bool:
    try:
        await store.get(name, None)
    except SessionNotFound:
        return False
    return True


async def test_history_keeps_the_newest_messages() -> None:
    store = make_store(FakeClock(), max_messages=4)
    session = store.get_or_create("s", None)
    store.replace_history(session, [*turn(1), *turn(2), *turn(3)])
    assert session.messages == (*turn(2), *turn(3))


async def test_uncommitted_session_is_invisible_and_forgotten() -> None:
    store = make_store(FakeClock())
    session = store.get_or_create("new", None)
    with pytest.raises(SessionNotFound):
        await store.get("new", None)
    assert store.get_or_create("new", None) is session  # concurrent first turns share it
    store.forget_if_uncommitted(session)
    assert store.get_or_create("new", None) is not session


async def test_session_of_another_owner_is_not_found() -> None:
    store = make_store(FakeClock())
    store.replace_history(store.get_or_create("s", "alice"), turn(1))
    with pytest.raises(SessionNotFound):
        await store.get("s", "bob")
    with pytest.raises(SessionNotFound):
        store.get_or_create("s", "bob")
    with pytest.raises(SessionNotFound):
        await store.delete("s", "bob")
    assert (await store.get("s", "alice")).messages == tuple(turn(1))


async def test_a_turn_waits_for_the_running_one_and_is_busy_past_the_bound() -> None:
    store = MemorySessionStore(ChatHistorySettings(), wait_s=0.05)
    first = await store.begin_turn("s", "alice")
    with pytest.raises(SessionBusy) as raised:
        await store.begin_turn("s", "alice")
    assert raised.value.status_code == 409 and raised.value.retry_after is not None
    waiting = asyncio.create_task(store.begin_turn("s", "alice"))
    await asyncio.sleep(0)
    await first.commit(turn(1))
    first.end()
    second = await waiting
    assert second.history == tuple(turn(1))
    second.end()
    second.end()  # ending twice releases once
    with pytest.raises(SessionNotFound):
        await store.begin_turn("s", "bob")


async def test_a_turn_that_ends_without_commit_changes_nothing() -> None:
    store = MemorySessionStore(ChatHistorySettings(), wait_s=1.0)
    (await store.begin_turn("new", None)).end()
    with pytest.raises(SessionNotFound):
        await store.get("new", None)
    kept = await store.begin_turn("new", None)
    await kept.commit(turn(1))
    kept.end()
    (await store.begin_turn("new", None)).end()
    assert (await store.get("new", None)).messages == tuple(turn(1)) and len(store) == 1
