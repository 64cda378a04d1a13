"""Rate limits shared through Redis by two apps (two replicas over fake engines): one burst for
both, the same 429s from either, and state.on_error while Redis is down, then back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import fake_settings, running_replicas
from tests.conftest import assert_error
from tests.redis_server import RedisServer

BURST = 6
REQUEST = {"prompt": "hi", "max_tokens": 1}
LIMIT_HEADERS = {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"}


@contextmanager
def replicas(state: dict[str, Any], **rate_limit: Any) -> Iterator[tuple[TestClient, TestClient]]:
    """Two apps on one state section; one request a minute sustained, so no token comes back
    during a test."""
    settings = fake_settings(state=state, rate_limit={"requests_per_minute": 1, "burst_size": BURST, **rate_limit})
    with running_replicas(settings) as [(_, a), (_, b)]:
        yield a, b


def limit_headers(response: Any) -> set[str]:
    return {name for name in response.headers if name.startswith("x-ratelimit")}


def test_a_burst_split_over_two_replicas_is_granted_once(redis_server: RedisServer) -> None:
    with replicas(redis_server.settings()) as (a, b):
        answers = [(a if n % 2 == 0 else b).post("/v1/generate", json=REQUEST) for n in range(2 * BURST)]
    assert [answer.status_code for answer in answers].count(200) == BURST
    assert [answer.headers["x-ratelimit-remaining"] for answer in answers[:BURST]] == [
        str(left) for left in range(BURST - 1, -1, -1)
    ]
    refused = answers[BURST:]
    for answer in refused:
        assert_error(answer, 429, "rate_limited")
        assert limit_headers(answer) == LIMIT_HEADERS
        assert answer.headers["x-ratelimit-limit"] == str(BURST) and answer.headers["x-ratelimit-remaining"] == "0"
        assert 1 <= int(answer.headers["retry-after"]) <= 60
    from_a, from_b = refused[0], refused[1]
    assert set(from_a.headers) == set(from_b.headers)


@pytest.mark.parametrize("on_error", ["fail_closed", "fail_open"])
def test_redis_down_follows_on_error_and_its_return_needs_no_restart(own_redis: RedisServer, on_error: str) -> None:
    with replicas(own_redis.settings(on_error=on_error), tokens_per_minute=1000) as (a, b):
        for app in (a, b):
            answer = app.post("/v1/generate", json=REQUEST)
            assert answer.status_code == 200 and "x-ratelimit-remaining-tokens" in answer.headers
        own_redis.stop()
        for app in (a, b):
            answer = app.post("/v1/generate", json=REQUEST)
            if on_error == "fail_closed":
                assert_error(answer, 503, "state_unavailable")
                assert int(answer.headers["retry-after"]) >= 1
            else:
                assert answer.status_code == 200, answer.text
            assert limit_headers(answer) == set()
        own_redis.start()
        for app in (a, b):
            answer = app.post("/v1/generate", json=REQUEST)
            assert answer.status_code == 200, answer.text
            assert limit_headers(answer) == LIMIT_HEADERS | {f"{name}-tokens" for name in LIMIT_HEADERS}
