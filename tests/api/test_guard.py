"""Auth, rate limits and session ownership over HTTP, with a rate-limit clock that only the test moves."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import FakeClock, fake_settings, running_app
from tests.conftest import assert_error, metric_value
from tests.fakes import ScriptedEngine

KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key", "carol": "carol-secret-key"}
ALICE = {"X-API-Key": KEYS["alice"]}
BOB = {"Authorization": f"Bearer {KEYS['bob']}"}
CAROL = {"X-API-Key": KEYS["carol"]}
BURST = 10
"""60 requests per minute sustained: one token back per second of the fake clock."""
TURN = {"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 2}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def guarded(engine: ScriptedEngine, clock: FakeClock) -> Iterator[TestClient]:
    """Named, plain and hashed keys; a burst of 10 (X-Forwarded-For trusted, so a test can be
    several clients); prompts logged."""
    settings = fake_settings(
        security={
            "api_keys": [
                {"name": "alice", "key": KEYS["alice"]},
                KEYS["bob"],
                {"name": "carol", "key_sha256": hashlib.sha256(KEYS["carol"].encode()).hexdigest()},
            ]
        },
        rate_limit={"requests_per_minute": 60, "burst_size": BURST, "trust_forwarded_for": True},
        logging={"log_prompts": True},
    )
    with running_app(engine, settings, clock=clock) as (_, client):
        yield client


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "wrong-key"},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": f"Basic {KEYS['alice']}"},
        {"Authorization": "Bearer"},
        {"Authorization": KEYS["alice"]},
        {"X-API-Key": KEYS["alice"] + " x"},
        {"X-API-Key": "k" * 4000},
    ],
)
def test_missing_or_wrong_key_is_401_with_www_authenticate(guarded: TestClient, headers: dict[str, str]) -> None:
    response = guarded.post("/v1/generate", json={"prompt": "hi", "max_tokens": 1}, headers=headers)
    assert_error(response, 401, code="invalid_api_key")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("headers", [ALICE, BOB, CAROL])
def test_each_key_form_is_accepted(guarded: TestClient, headers: dict[str, str]) -> None:
    assert guarded.get("/status", headers=headers).status_code == 200
    assert guarded.post("/v1/generate", json={"prompt": "hi", "max_tokens": 1}, headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/generate"),
        ("POST", "/v1/chat"),
        ("GET", "/v1/chat/sessions/abc"),
        ("DELETE", "/v1/chat/sessions/abc"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/models"),
        ("POST", "/v1/responses"),
        ("POST", "/generate"),
        ("POST", "/generate_stream"),
        ("POST", "/"),
        ("GET", "/info"),
        ("GET", "/status"),
    ],
)
def test_every_route_but_health_and_metrics_needs_a_key(guarded: TestClient, method: str, path: str) -> None:
    assert_error(guarded.request(method, path, json={}), 401)


@pytest.mark.parametrize("path", ["/health", "/metrics"])
def test_health_and_metrics_are_open_and_not_rate_limited(guarded: TestClient, path: str) -> None:
    for _ in range(BURST + 5):
        response = guarded.get(path)
        assert response.status_code == 200
        assert "x-ratelimit-limit" not in response.headers


def test_liveness_is_open_and_not_rate_limited(guarded: TestClient) -> None:
    response = guarded.get("/health/live")
    assert response.status_code == 200 and "x-ratelimit-limit" not in response.headers


def test_flood_past_the_burst_gets_429_with_exact_headers(guarded: TestClient, clock: FakeClock) -> None:
    responses = [guarded.get("/status", headers=ALICE) for _ in range(BURST + 2)]
    assert [r.status_code for r in responses] == [200] * BURST + [429, 429]
    assert [r.headers["x-ratelimit-remaining"] for r in responses] == [str(n) for n in range(BURST - 1, -1, -1)] + [
        "0",
        "0",
    ]
    assert {r.headers["x-ratelimit-limit"] for r in responses} == {str(BURST)}
    assert [r.headers["x-ratelimit-reset"] for r in responses[:3]] == ["1", "2", "3"]  # seconds until full
    rejected = responses[-1]
    assert_error(rejected, 429, code="rate_limited")
    assert rejected.json()["error"]["type"] == "rate_limit_error"
    assert rejected.headers["retry-after"] == "1" and rejected.headers["x-ratelimit-reset"] == str(BURST)

    clock.now += 1  # one request's worth refilled
    assert guarded.get("/status", headers=ALICE).status_code == 200
    assert guarded.get("/status", headers=ALICE).status_code == 429
    clock.now += BURST
    assert guarded.get("/status", headers=ALICE).headers["x-ratelimit-remaining"] == str(BURST - 1)


def test_rate_limit_headers_ride_on_every_answer_of_a_limited_route(guarded: TestClient) -> None:
    answers = [
        guarded.post("/v1/generate", json={"prompt": "hi", "max_tokens": 2}, headers=ALICE),
        guarded.post("/v1/generate", json={"prompt": "hi", "max_tokens": 2, "stream": True}, headers=ALICE),
        guarded.post("/v1/generate", json={"prompt": ""}, headers=ALICE),
        guarded.get("/v1/chat/sessions/unknown", headers=ALICE),
        guarded.get("/status"),
    ]
    assert [r.status_code for r in answers] == [200, 200, 422, 404, 401]
    for response in answers:
        assert response.headers["x-ratelimit-limit"] == str(BURST)
        assert {"x-ratelimit-remaining", "x-ratelimit-reset"} <= set(response.headers)


def test_rate_limited_requests_are_counted(guarded: TestClient) -> None:
    for _ in range(BURST + 3):
        guarded.get("/status", headers=BOB)
    assert metric_value(guarded, "llm_rate_limited_total") == 3
    assert metric_value(guarded, "llm_requests_rejected_total", reason="rate_limit") == 3


def test_bad_keys_spend_the_callers_ip_bucket(guarded: TestClient) -> None:
    guess = {"X-API-Key": "guess", "X-Forwarded-For": "10.0.0.7"}
    statuses = [guarded.get("/status", headers=guess).status_code for _ in range(BURST + 2)]
    assert statuses == [401] * BURST + [429, 429]
    assert metric_value(guarded, "llm_requests_rejected_total", reason="auth") == BURST
    assert guarded.get("/status", headers={**ALICE, "X-Forwarded-For": "10.0.0.7"}).status_code == 200  # a key's own
    assert guarded.get("/status", headers={"X-Forwarded-For": "10.0.0.8"}).status_code == 401  # another address's


def test_untrusted_forwarded_for_is_ignored(engine: ScriptedEngine, clock: FakeClock) -> None:
    settings = fake_settings(rate_limit={"requests_per_minute": 60, "burst_size": 2})
    with running_app(engine, settings, clock=clock) as (_, client):
        statuses = [client.get("/status", headers={"X-Forwarded-For": f"10.0.0.{n}"}).status_code for n in range(3)]
    assert statuses == [200, 200, 429]  # one peer, one bucket, whatever the header claims


def test_sessions_belong_to_the_key_that_made_them(guarded: TestClient) -> None:
    turn = {**TURN, "session_id": "owned-by-alice"}
    assert guarded.post("/v1/chat", json=turn, headers=ALICE).status_code == 200
    path = "/v1/chat/sessions/owned-by-alice"
    assert guarded.get(path, headers=ALICE).status_code == 200
    assert_error(guarded.get(path, headers=BOB), 404, code="session_not_found")
    assert_error(guarded.delete(path, headers=BOB), 404, code="session_not_found")
    assert_error(guarded.post("/v1/chat", json=turn, headers=BOB), 404, code="session_not_found")
    assert guarded.get(path, headers=ALICE).json()["messages"][0] == TURN["messages"][0]  # bob changed nothing
    assert guarded.delete(path, headers=ALICE).status_code == 204


def test_a_cache_hit_still_needs_a_key_and_a_token(guarded: TestClient, engine: ScriptedEngine) -> None:
    body = {"prompt": "cache me", "max_tokens": 2, "temperature": 0}
    assert guarded.post("/v1/generate", json=body, headers=ALICE).json()["cached"] is False
    hit = guarded.post("/v1/generate", json=body, headers=ALICE)
    assert hit.json()["cached"] is True and len(engine.submitted) == 1
    assert hit.headers["x-ratelimit-remaining"] == str(BURST - 2)  # the hit was charged too
    assert_error(guarded.post("/v1/generate", json=body), 401)


def test_status_shows_what_is_in_force_but_no_key(guarded: TestClient) -> None:
    response = guarded.get("/status", headers=ALICE)
    body = response.json()
    assert body["auth"] == {"enabled": True, "keys": 3, "protect_metrics": False}
    assert body["rate_limit"]["burst_size"] == BURST and body["rate_limit"]["requests_per_minute"] == 60
    assert not any(key in response.text for key in KEYS.values())
    assert hashlib.sha256(KEYS["carol"].encode()).hexdigest() not in response.text


def test_keys_never_reach_a_log_line(guarded: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    guarded.post("/v1/generate", json={"prompt": "Hi", "max_tokens": 2}, headers=ALICE)
    guarded.get("/status", headers=BOB)
    guarded.get("/status", headers={"X-API-Key": "a-wrong-secret"})
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "alice" in logged  # the key's name is logged ...
    for secret in [*KEYS.values(), "a-wrong-secret"]:
        assert secret not in logged  # ... never the key


def test_metrics_can_be_put_behind_the_key(engine: ScriptedEngine) -> None:
    settings = fake_settings(security={"api_keys": ["metrics-key-1"], "protect_metrics": True})
    with running_app(engine, settings) as (_, client):
        assert_error(client.get("/metrics"), 401)
        assert client.get("/metrics", headers={"Authorization": "Bearer metrics-key-1"}).status_code == 200
        assert client.get("/health").status_code == 200
