"""GET /v1/usage across replicas sharing Redis: a key's usage counted on each adds up on
either; Redis down loses the counts but never the request, and the read is a 503."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.core.config import Settings
from tests.api.conftest import fake_settings, running_replicas
from tests.conftest import assert_error, metric_value, poll
from tests.redis_server import RedisServer

ALICE = {"X-API-Key": "alice-secret-key"}
ROOT = {"X-API-Key": "root-secret-key"}
GREEDY = {"prompt": "Say hi", "max_tokens": 5, "temperature": 0}


def metered(state: dict[str, Any]) -> Settings:
    keys = [{"name": "alice", "key": "alice-secret-key"}, {"name": "root", "key": "root-secret-key"}]
    return fake_settings(
        state=state, security={"api_keys": keys, "admin_keys": ["root"]}, rate_limit={"enabled": False}
    )


def today(client: TestClient, **params: str) -> dict[str, int]:
    response = client.get("/v1/usage", headers=ROOT if params else ALICE, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["today"] == body["total"]
    counts: dict[str, int] = body["today"]
    return counts


def test_usage_counted_on_two_replicas_adds_up_on_either(redis_server: RedisServer) -> None:
    with running_replicas(metered(redis_server.settings())) as [(_, a), (_, b)]:
        told = [
            a.post("/v1/generate", headers=ALICE, json=GREEDY).json()["usage"],
            b.post("/v1/generate", headers=ALICE, json={**GREEDY, "prompt": "Say hello"}).json()["usage"],
            b.post("/v1/generate", headers=ALICE, json={**GREEDY, "prompt": "Say bye"}).json()["usage"],
        ]
        expected = {
            "requests": 3,
            "prompt_tokens": sum(usage["prompt_tokens"] for usage in told),
            "completion_tokens": sum(usage["completion_tokens"] for usage in told),
            "cached_requests": 0,
            "rate_limited": 0,
        }
        # Each replica writes its counts as the request ends; the other's may still be on the way.
        assert poll(lambda: today(a) == expected, timeout_s=10), today(a)
        assert poll(lambda: today(b) == expected, timeout_s=10), today(b)
        assert today(b, key="alice") == expected
        assert metric_value(a, "llm_key_requests_total", key="alice") == 1  # metrics stay per replica


def test_redis_down_loses_usage_but_not_the_request_and_the_read_is_503(own_redis: RedisServer) -> None:
    with running_replicas(metered(own_redis.settings(timeout_s=0.3)), count=1) as [(_, client)]:
        assert client.post("/v1/generate", headers=ALICE, json=GREEDY).status_code == 200
        own_redis.stop()
        answered = client.post("/v1/generate", headers=ALICE, json={**GREEDY, "prompt": "Say hello"})
        assert answered.status_code == 200
        refused = client.get("/v1/usage", headers=ALICE)
        assert_error(refused, 503, "state_unavailable")
        assert "retry-after" in refused.headers
        assert (
            metric_value(client, "llm_state_backend_errors_total", operation="usage") == 2
        )  # the lost write, the read
        own_redis.start()  # empty: this redis-server keeps nothing on disk
        client.post("/v1/generate", headers=ALICE, json={**GREEDY, "prompt": "Say bye"})
        assert today(client)["requests"] == 1
