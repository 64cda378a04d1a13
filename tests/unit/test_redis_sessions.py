"""Redis session store on a real redis-server: TTL of disuse, LRU bound, length bound, owners,
and the turn lock shared by replicas (exclusive, renewed, expiring, checked at commit)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from app.core.config import ChatHistorySettings, StateSettings
from app.core.errors import SessionBusy, SessionNotFound, StateUnavailable
from app.core.redis_state import RedisState
from app.engine.types import ChatMessage
from app.services.redis_sessions import RedisSessionStore
from tests.conftest import until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio


def turn(n: int) -> list[ChatMessage]:
    return [ChatMessage("user", f"q{n}"), ChatMessage("assistant", f"a{n}")]


class Replicas:
    """Stores over one Redis and one key prefix, as replicas of one deployment have."""

    def __init__(self, server: RedisServer, **state: Any) -> None:
        self.server = server
        self.settings = StateSettings.model_validate(server.settings(**state))
        self._states: list[RedisState] = []

    def store(self, wait_s: float = 2.0, **chat: Any) -> RedisSessionStore:
        state = RedisState(self.settings)
        self._states.append(state)
        return RedisSessionStore(state, ChatHistorySettings(**chat), wait_s=wait_s)

    def key(self, *parts: str) -> str:
        return self.settings.key_prefix + ":".join(parts)

    def redis(self) -> Any:
        return self.server.client()

    async def close(self) -> None:
        for state in self._states:
            await state.close()


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[Replicas]:
    group = Replicas(redis_server, lock_ttl_s=0.5)
    yield group
    await group.close()


async def commit(
    store: RedisSessionStore, session_id: str, messages: list[ChatMessage], owner: str | None = None
) -> None:
    held = await store.begin_turn(session_id, owner)
    await held.commit(messages)
    held.end()


def server_time(replicas: Replicas) -> float:
    seconds, microseconds = replicas.redis().time()
    return float(seconds + microseconds / 1e6)


async def released(replicas: Replicas, session_id: str) -> None:
    """Until the background release of a turn that did not commit has landed."""
    lock = replicas.key("sessions", "lock", session_id)
    await until(lambda: not replicas.redis().exists(lock))


async def test_use_refreshes_the_ttl_and_disuse_expires_the_session(replicas: Replicas) -> None:
    store = replicas.store(ttl_seconds=1.0)
    await commit(store, "s", turn(1))
    history = replicas.key("sessions", "history", "s")
    assert 0 < replicas.redis().pttl(history) <= 1000
    await asyncio.sleep(0.3)
    aged = replicas.redis().pttl(history)
    before = server_time(replicas)
    view = await store.get("s", None)
    after = server_time(replicas)
    assert view.messages == tuple(turn(1))
    assert replicas.redis().pttl(history) > aged  # the read was a use
    # Its last use (by Redis's clock, to the millisecond) plus the TTL.
    assert before + 1.0 - 0.001 <= view.expires_at <= after + 1.0
    assert len(store) == 1
    await until(lambda: not replicas.redis().exists(history), real_s=3)
    with pytest.raises(SessionNotFound):
        await store.get("s", None)
    len(store)  # starts a recount: the expired session's index entry goes
    await until(lambda: len(store) == 0)
    assert replicas.redis().zcard(replicas.key("sessions", "lru")) == 0


async def test_least_recently_used_session_is_evicted_first(replicas: Replicas) -> None:
    store = replicas.store(max_sessions=2)
    # Last use is kept to the millisecond: each step a little later than the one before.
    for name in ("a", "b"):
        await commit(store, name, turn(0))
        await asyncio.sleep(0.005)
    await store.get("a", None)
    await asyncio.sleep(0.005)
    await commit(store, "c", turn(0))
    assert {name for name in "abc" if await _exists(store, name)} == {"a", "c"}
    assert not replicas.redis().exists(replicas.key("sessions", "history", "b"))
    assert len(store) == 2


async def _exists(store: RedisSessionStore, name: str) -> bool:
    try:
        await store.get(name, None)
    except SessionNotFound:
        return False
    return True


async def test_history_keeps_the_newest_messages(replicas: Replicas) -> None:
    store = replicas.store(max_messages=4)
    await commit(store, "s", [*turn(1), *turn(2), *turn(3)])
    assert (await store.get("s", None)).messages == (*turn(2), *turn(3))
    # History is stored as JSON, text as it was (not escaped away).
    await commit(store, "s", [ChatMessage("user", "Grüße 👋"), ChatMessage("assistant", '"quoted"\n')])
    assert (await replicas.store().get("s", None)).messages[-2].content == "Grüße 👋"


async def test_session_of_another_owner_is_not_found(replicas: Replicas) -> None:
    store = replicas.store()
    await commit(store, "s", turn(1), owner="alice")
    with pytest.raises(SessionNotFound):
        await store.get("s", "bob")
    with pytest.raises(SessionNotFound):
        await store.get("s", None)
    with pytest.raises(SessionNotFound):
        await store.delete("s", "bob")
    with pytest.raises(SessionNotFound):
        await store.begin_turn("s", "bob")
    assert (await store.get("s", "alice")).messages == tuple(turn(1))
    await store.delete("s", "alice")
    with pytest.raises(SessionNotFound):
        await store.get("s", "alice")
    assert len(store) == 0


async def test_a_turn_that_does_not_commit_changes_nothing(replicas: Replicas) -> None:
    store = replicas.store()
    new = await store.begin_turn("new", None)
    with pytest.raises(SessionNotFound):
        await store.get("new", None)  # invisible until its first turn commits
    new.end()
    await released(replicas, "new")
    with pytest.raises(SessionNotFound):
        await store.get("new", None)
    await commit(store, "new", turn(1))
    failed = await store.begin_turn("new", None)
    assert failed.history == tuple(turn(1))
    failed.end()
    await released(replicas, "new")
    assert (await store.get("new", None)).messages == tuple(turn(1))


async def test_turns_of_one_session_exclude_each_other_across_replicas(replicas: Replicas) -> None:
    a, b = replicas.store(), replicas.store(wait_s=0.1)
    await commit(a, "s", turn(1))
    first = await a.begin_turn("s", None)
    with pytest.raises(SessionBusy) as raised:
        await b.begin_turn("s", None)
    assert raised.value.status_code == 409 and raised.value.retry_after is not None
    waiting = asyncio.create_task(replicas.store(wait_s=5).begin_turn("s", None))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await first.commit([*turn(1), *turn(2)])
    first.end()
    second = await waiting  # the commit released the lock: the waiting turn sees its history
    assert second.history == (*turn(1), *turn(2))
    second.end()
    await released(replicas, "s")


async def test_a_vanished_holder_frees_the_session_within_the_lock_ttl(replicas: Replicas) -> None:
    # A replica that died mid-turn: its lock stays, nobody renews it.
    lock = replicas.key("sessions", "lock", "s")
    replicas.redis().set(lock, "dead-replica", px=1500)
    with pytest.raises(SessionBusy):
        await replicas.store(wait_s=0.05).begin_turn("s", None)
    taken = await replicas.store(wait_s=5).begin_turn("s", None)
    assert replicas.redis().get(lock) != b"dead-replica"
    await taken.commit(turn(1))
    taken.end()


async def test_renewal_keeps_a_long_turns_lock(redis_server: RedisServer) -> None:
    replicas = Replicas(redis_server, lock_ttl_s=0.5)
    store = replicas.store()
    long = await store.begin_turn("s", None)
    await asyncio.sleep(1.6)  # over three lock lifetimes
    with pytest.raises(SessionBusy):
        await replicas.store(wait_s=0.05).begin_turn("s", None)
    await long.commit(turn(1))
    long.end()
    assert (await store.get("s", None)).messages == tuple(turn(1))
    assert not replicas.redis().exists(replicas.key("sessions", "lock", "s"))
    await replicas.close()


async def test_commit_is_refused_once_the_lock_was_lost(replicas: Replicas) -> None:
    store = replicas.store()
    await commit(store, "s", turn(1))
    late = await store.begin_turn("s", None)
    lock = replicas.key("sessions", "lock", "s")
    replicas.redis().set(lock, "another-turn", px=5000)  # it expired and another turn took it
    with pytest.raises(SessionBusy):
        await late.commit([*turn(1), *turn(2)])
    late.end()
    assert replicas.redis().get(lock) == b"another-turn"  # not released by the turn that lost it
    assert (await store.get("s", None)).messages == tuple(turn(1))


async def test_redis_down_is_state_unavailable_and_recovered_from(own_redis: RedisServer) -> None:
    replicas = Replicas(own_redis, lock_ttl_s=0.5, timeout_s=0.3)
    store = replicas.store()
    await commit(store, "s", turn(1))
    assert len(store) == 1
    own_redis.stop()
    calls: list[Callable[[], Any]] = [
        lambda: store.get("s", None),
        lambda: store.delete("s", None),
        lambda: store.begin_turn("s", None),
    ]
    for call in calls:
        with pytest.raises(StateUnavailable) as raised:
            await call()
        assert raised.value.status_code == 503 and raised.value.retry_after is not None
    assert len(store) == 1  # the last count stands, without waiting on Redis
    own_redis.start()
    await commit(store, "s", turn(2))
    assert (await store.get("s", None)).messages == tuple(turn(2))
    await replicas.close()


async def test_a_hung_redis_fails_within_the_timeout(own_redis: RedisServer) -> None:
    replicas = Replicas(own_redis, lock_ttl_s=0.5, timeout_s=0.2)
    store = replicas.store(wait_s=30)
    await commit(store, "s", turn(1))
    own_redis.freeze()
    try:
        with pytest.raises(StateUnavailable):
            # Bounded by one call's timeout, not by the turn's wait of 30 s.
            await asyncio.wait_for(store.begin_turn("s", None), 5)
    finally:
        own_redis.thaw()
    await commit(store, "s", turn(2))
    await replicas.close()
