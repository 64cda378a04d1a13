"""GET /v1/usage and the per-key metrics: what a key was told in its answers' `usage` is what it reads back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.core.token_budget import DAY_S
from tests.api.conftest import FakeClock, fake_settings, running_app
from tests.conftest import assert_error, metric_value
from tests.fakes import ScriptedEngine

ALICE = {"X-API-Key": "alice-secret-key"}
ROOT = {"X-API-Key": "root-secret-key"}
PLAIN = {"X-API-Key": "plain-secret-key"}
MIDNIGHT = 20_000 * DAY_S
ZERO = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_requests": 0, "rate_limited": 0}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(MIDNIGHT + 3600)


@pytest.fixture
def metered(engine: ScriptedEngine, clock: FakeClock) -> Iterator[TestClient]:
    settings = fake_settings(
        security={
            "api_keys": [
                {"name": "alice", "key": "alice-secret-key", "tokens_per_day": 400},
                {"name": "root", "key": "root-secret-key"},
                "plain-secret-key",
            ],
            "admin_keys": ["root"],
        },
        rate_limit={"requests_per_minute": 6000, "burst_size": 1000},
    )
    with running_app(engine, settings, clock=clock) as (_, client):
        yield client


def stream_usage(client: TestClient, path: str, body: dict[str, Any]) -> dict[str, int]:
    with client.stream("POST", path, headers=ALICE, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        lines = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    usage: dict[str, int] = json.loads(lines[-2])["usage"]
    return usage


def test_usage_is_the_sum_of_the_usage_the_key_was_told(metered: TestClient, clock: FakeClock) -> None:
    greedy = {"prompt": "Say hi", "max_tokens": 5, "temperature": 0}
    chat = {"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 4, "temperature": 0.7}
    told = [
        metered.post("/v1/generate", headers=ALICE, json=greedy).json()["usage"],
        metered.post("/v1/generate", headers=ALICE, json=greedy).json()["usage"],  # a cache hit
        metered.post("/v1/chat", headers=ALICE, json=chat).json()["usage"],
        metered.post("/v1/chat/completions", headers=ALICE, json={**chat, "n": 2}).json()["usage"],
        metered.post("/v1/completions", headers=ALICE, json={"prompt": ["ab", "cde"], "n": 2, "max_tokens": 3}).json()[
            "usage"
        ],
        stream_usage(metered, "/v1/chat/completions", {**chat, "stream_options": {"include_usage": True}}),
    ]
    assert metered.post("/v1/generate", headers=ALICE, json={**greedy, "max_tokens": 390}).status_code == 429

    expected = {
        "requests": len(told),
        "prompt_tokens": sum(u["prompt_tokens"] for u in told),
        "completion_tokens": sum(u["completion_tokens"] for u in told),
        "cached_requests": 1,
        "rate_limited": 1,
    }
    mine = metered.get("/v1/usage", headers=ALICE)
    assert mine.status_code == 200, mine.text
    assert mine.json() == {"key": "alice", "today": expected, "total": expected}
    assert metric_value(metered, "llm_key_requests_total", key="alice") == len(told)
    for kind in ("prompt", "completion"):
        assert metric_value(metered, "llm_key_tokens_total", key="alice", kind=kind) == expected[f"{kind}_tokens"]

    clock.now = MIDNIGHT + DAY_S  # the next UTC day
    assert metered.get("/v1/usage", headers=ALICE).json() == {"key": "alice", "today": ZERO, "total": expected}


def test_admins_read_any_keys_usage_others_only_their_own(metered: TestClient) -> None:
    metered.post("/v1/generate", headers=PLAIN, json={"prompt": "x", "max_tokens": 2})
    plain = metered.get("/v1/usage", headers=PLAIN).json()
    assert plain["key"] == "key-3"
    assert plain["today"]["requests"] == 1
    assert metered.get("/v1/usage", params={"key": "key-3"}, headers=ROOT).json() == plain
    assert metered.get("/v1/usage", params={"key": "alice"}, headers=ALICE).json()["key"] == "alice"
    assert_error(metered.get("/v1/usage", params={"key": "key-3"}, headers=ALICE), 403, "forbidden", "key")
    assert_error(metered.get("/v1/usage", params={"key": "nobody"}, headers=ALICE), 403, "forbidden")
    assert_error(metered.get("/v1/usage", params={"key": "nobody"}, headers=ROOT), 404, "key_not_found", "key")
    assert_error(metered.get("/v1/usage", headers={"X-API-Key": "wrong-key"}), 401)


def test_request_rate_429s_count_against_the_key(engine: ScriptedEngine) -> None:
    settings = fake_settings(
        security={"api_keys": [{"name": "alice", "key": "alice-secret-key"}]},
        rate_limit={"requests_per_minute": 1, "burst_size": 2},
    )
    with running_app(engine, settings, clock=FakeClock()) as (_, client):
        assert client.get("/v1/usage", headers=ALICE).status_code == 200
        assert client.get("/v1/usage", headers=ALICE).json()["total"]["rate_limited"] == 0
        assert client.get("/v1/usage", headers=ALICE).status_code == 429
        client.app.state.gatekeeper.limiter._buckets.clear()  # type: ignore[attr-defined]
        assert client.get("/v1/usage", headers=ALICE).json()["total"]["rate_limited"] == 1


def test_callers_without_a_key_are_anonymous(api: TestClient) -> None:
    api.post("/v1/generate", json={"prompt": "x", "max_tokens": 2})
    assert api.get("/v1/usage").json()["total"]["requests"] == 1
    assert api.get("/v1/usage").json()["key"] == "anonymous"
    assert metric_value(api, "llm_key_requests_total", key="anonymous") == 1


def test_key_labels_are_the_configured_names_and_anonymous(metered: TestClient) -> None:
    for headers in (ALICE, PLAIN, {"X-API-Key": "wrong-key"}, {}):
        metered.post("/v1/generate", headers=headers, json={"prompt": "x", "max_tokens": 2})
    labels = {
        sample.labels["key"]
        for family in text_string_to_metric_families(metered.get("/metrics").text)
        if family.name in ("llm_key_requests", "llm_key_tokens")
        for sample in family.samples
    }
    assert labels == {"alice", "root", "key-3", "anonymous"}


def test_failed_requests_count_nothing(metered: TestClient, engine: ScriptedEngine) -> None:
    engine.fail_after_tokens = 1
    assert metered.post("/v1/generate", headers=ALICE, json={"prompt": "x", "max_tokens": 4}).status_code == 500
    engine.fail_after_tokens = None
    assert metered.post("/v1/generate", headers=ALICE, json={"prompt": "x", "max_tokens": 4}).status_code == 200
    assert metered.get("/v1/usage", headers=ALICE).json()["total"]["requests"] == 1
