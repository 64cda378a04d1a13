"""The shared connection: bounded calls, failures counted, recovery by itself (a real redis-server)."""

from __future__ import annotations

import time

import pytest

from app.core.config import StateSettings
from app.core.errors import StateUnavailable
from app.core.metrics import LLMMetrics
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio


def up(metrics: LLMMetrics) -> float | None:
    return metrics.registry.get_sample_value("llm_state_backend_up")


def errors(metrics: LLMMetrics, operation: str) -> float | None:
    return metrics.registry.get_sample_value("llm_state_backend_errors_total", {"operation": operation})


async def test_calls_run_under_the_key_prefix(redis_server: RedisServer) -> None:
    state = redis_server.connect()
    key = state.key("probe", "1")
    assert key.startswith(state.settings.key_prefix) and key.endswith("probe:1")
    await state.run("test", lambda client: client.set(key, b"v"))
    assert redis_server.client().get(key) == b"v"
    assert await state.script("test", "return redis.call('GET', KEYS[1])", [key], []) == b"v"
    await state.close()


async def test_an_outage_is_counted_once_per_call_and_recovered_from(own_redis: RedisServer) -> None:
    metrics = LLMMetrics("m")
    state = own_redis.connect(metrics)
    assert await state.ping() and up(metrics) == 1
    own_redis.stop()
    with pytest.raises(StateUnavailable) as raised:
        await state.run("sessions", lambda client: client.get(state.key("x")))
    assert raised.value.status_code == 503 and raised.value.code == "state_unavailable"
    assert raised.value.retry_after is not None
    assert not await state.ping()
    assert up(metrics) == 0 and errors(metrics, "sessions") == 1 and errors(metrics, "health") == 1
    own_redis.start()
    assert await state.ping()
    assert up(metrics) == 1 and state.up
    await state.close()


async def test_a_hung_redis_costs_at_most_the_timeout(own_redis: RedisServer) -> None:
    state = own_redis.connect(timeout_s=0.3)
    assert await state.ping()
    own_redis.freeze()
    try:
        started = time.monotonic()
        with pytest.raises(StateUnavailable):
            await state.run("cache", lambda client: client.get(state.key("x")))
        assert time.monotonic() - started < 0.3 + 0.5
    finally:
        own_redis.thaw()
    assert await state.ping()
    await state.close()


def test_the_url_is_a_secret() -> None:
    settings = StateSettings(redis_url="redis://:hunter2-password@127.0.0.1:6379/0")  # type: ignore[arg-type]
    assert "hunter2" not in repr(settings) and "hunter2" not in settings.model_dump_json()
