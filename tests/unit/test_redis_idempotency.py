"""Idempotency records in Redis, as two replicas see them (a real redis-server): one claim per
key, an answer stored by one replayed by the other byte for byte, and what an outage does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.core.config import StateSettings
from app.core.errors import StateUnavailable
from app.core.idempotency import StoredResponse
from app.core.redis_idempotency import SEND_GRACE_S, RedisIdempotencyStore, claim_ttl_s
from app.core.redis_state import RedisState
from tests.api.conftest import fake_settings
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio

TTL_S = 60.0
CLAIM_TTL_S = 30.0
ANSWER = StoredResponse(
    201,
    (("content-type", "application/octet-stream"), ("x-note", "caf\xe9")),
    b'line one\nline two\r\n\x00\xff\xfe not utf-8 {"json": 1}\n',
)


class Replicas:
    """Two stores with connections of their own under one key prefix, as two replicas have."""

    def __init__(self, server: RedisServer, **overrides: object) -> None:
        section = StateSettings.model_validate(server.settings(timeout_s=0.3, **overrides))
        self.states = [RedisState(section), RedisState(section)]
        self.a, self.b = (RedisIdempotencyStore(state, TTL_S, CLAIM_TTL_S) for state in self.states)
        self.server = server

    def ttl_ms(self, key: str) -> int:
        ttl: int = self.server.client().pttl(self.states[0].key("idempotency", key))
        return ttl

    async def close(self) -> None:
        for state in self.states:
            await state.close()


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[Replicas]:
    pair = Replicas(redis_server)
    yield pair
    await pair.close()


async def test_a_key_claimed_on_one_replica_is_in_progress_on_the_other(replicas: Replicas) -> None:
    assert await replicas.a.claim("k", "fp") is None
    held = await replicas.b.claim("k", "fp")
    assert held is not None and held.fingerprint == "fp" and held.response is None
    assert 0 < replicas.ttl_ms("k") <= CLAIM_TTL_S * 1000
    assert await replicas.a.claim("k", "fp") is not None  # the holder's own replica too


async def test_an_answer_completed_on_one_replica_is_replayed_on_the_other(replicas: Replicas) -> None:
    assert await replicas.a.claim("k", "fp") is None
    await replicas.a.complete("k", ANSWER)
    record = await replicas.b.claim("k", "fp")
    assert record is not None and record.response == ANSWER
    assert CLAIM_TTL_S * 1000 < replicas.ttl_ms("k") <= TTL_S * 1000


async def test_another_request_reusing_a_key_sees_the_first_ones_fingerprint(replicas: Replicas) -> None:
    assert await replicas.a.claim("k", "fp") is None
    await replicas.a.complete("k", ANSWER)
    record = await replicas.b.claim("k", "another")
    assert record is not None and record.fingerprint == "fp"


async def test_a_released_key_can_be_claimed_anew(replicas: Replicas) -> None:
    assert await replicas.a.claim("k", "fp") is None
    await replicas.a.release("k")
    assert await replicas.b.claim("k", "fp") is None


async def test_an_expired_claim_claimed_again_is_not_touched_by_its_first_holder(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    for key in ("done", "dropped"):
        assert await replicas.a.claim(key, "fp") is None
        redis_server.client().delete(replicas.states[0].key("idempotency", key))  # its claim TTL ran out
        assert await replicas.b.claim(key, "fp") is None
    await replicas.a.complete("done", ANSWER)
    await replicas.a.release("dropped")
    for key in ("done", "dropped"):
        record = await replicas.a.claim(key, "fp")
        assert record is not None and record.response is None  # still B's, pending
    await replicas.b.complete("done", ANSWER)
    record = await replicas.a.claim("done", "fp")
    assert record is not None and record.response == ANSWER


async def test_a_waiting_replica_sees_the_other_ones_answer(replicas: Replicas) -> None:
    assert await replicas.a.claim("k", "fp") is None
    waiting = asyncio.create_task(replicas.b.wait("k", timeout_s=30))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await replicas.a.complete("k", ANSWER)
    await asyncio.wait_for(waiting, 10)  # only a safety net: the answer ends the wait
    record = await replicas.b.claim("k", "fp")
    assert record is not None and record.response == ANSWER


async def test_a_wait_ends_at_its_timeout_or_once_the_key_is_free(replicas: Replicas) -> None:
    await replicas.b.wait("free", timeout_s=30)  # nothing to wait for
    assert await replicas.a.claim("k", "fp") is None
    await replicas.b.wait("k", timeout_s=0.05)
    held = await replicas.b.claim("k", "fp")
    assert held is not None and held.response is None


async def test_redis_down_refuses_claims_and_waits_and_never_raises_on_finishing(own_redis: RedisServer) -> None:
    pair = Replicas(own_redis)
    assert await pair.a.claim("k", "fp") is None
    own_redis.stop()
    await pair.a.complete("k", ANSWER)
    with pytest.raises(StateUnavailable):
        await pair.b.claim("other", "fp")
    with pytest.raises(StateUnavailable):
        await pair.b.wait("k", timeout_s=5)
    own_redis.start()
    assert await pair.b.claim("k", "fp") is None  # the restarted server kept nothing
    await pair.close()


async def test_a_pending_claim_lives_as_long_as_a_request_may_take() -> None:
    settings = fake_settings(engine={"queue_timeout_s": 10, "request_timeout_s": 20})
    assert claim_ttl_s(settings) == 10 + 20 + SEND_GRACE_S
    short = fake_settings(engine={"queue_timeout_s": 10, "request_timeout_s": 20}, idempotency={"ttl_seconds": 5})
    assert claim_ttl_s(short) == 5
