"""Auth, rate limits and session ownership through the HTTP API of a guarded server."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import GUARDED_KEYS, LiveServer, assert_error, make_settings

ALICE = {"X-API-Key": GUARDED_KEYS["alice"]}
BOB = {"Authorization": f"Bearer {GUARDED_KEYS['bob']}"}


@pytest.fixture
def guarded(guarded_server: LiveServer) -> Iterator[httpx.Client]:
    """A client with an address of its own (the server trusts X-Forwarded-For), so each test
    starts with a full IP bucket."""
    own_ip = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"
    with guarded_server.client() as http:
        http.headers["X-Forwarded-For"] = own_ip
        yield http


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "wrong-key"},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": f"Basic {GUARDED_KEYS['alice']}"},
        {"Authorization": "Bearer"},
        {"Authorization": GUARDED_KEYS["alice"]},
        {"X-API-Key": GUARDED_KEYS["alice"] + " x"},
        {"X-API-Key": "k" * 4000},
    ],
)
def test_missing_or_wrong_key_is_401_with_www_authenticate(guarded: httpx.Client, headers: dict[str, str]) -> None:
    response = guarded.post("/v1/generate", json={"prompt": "hi", "max_tokens": 1}, headers=headers)
    assert_error(response, 401, code="invalid_api_key")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("headers", [ALICE, BOB, {"X-API-Key": GUARDED_KEYS["carol"]}])
def test_each_key_form_is_accepted(guarded: httpx.Client, headers: dict[str, str]) -> None:
    assert guarded.get("/status", headers=headers).status_code == 200


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/chat", "/status", "/v1/chat/sessions/abc"])
def test_every_route_but_health_and_metrics_needs_a_key(guarded: httpx.Client, path: str) -> None:
    method = "POST" if path in ("/v1/generate", "/v1/chat") else "GET"
    assert_error(guarded.request(method, path, json={}), 401)


def test_health_and_metrics_are_open_and_not_rate_limited(guarded: httpx.Client) -> None:
    for _ in range(15):  # past the burst of 10
        for path in ("/health", "/health/live", "/metrics"):
            response = guarded.get(path)
            assert response.status_code == 200
            assert "x-ratelimit-limit" not in response.headers


def test_huge_key_header_is_refused_and_the_server_stays_healthy(guarded: httpx.Client) -> None:
    response = guarded.get("/status", headers={"X-API-Key": "k" * 200_000})
    assert response.status_code in (400, 401, 431)
    assert guarded.get("/health").status_code == 200
    assert guarded.get("/status", headers=ALICE).status_code == 200


def test_flood_past_the_burst_gets_429_with_sane_headers(guarded: httpx.Client) -> None:
    headers = {"X-API-Key": GUARDED_KEYS["flood"]}
    responses = [guarded.get("/status", headers=headers) for _ in range(14)]
    allowed = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert 10 <= len(allowed) <= 12 and limited, [r.status_code for r in responses]
    remaining = [int(r.headers["x-ratelimit-remaining"]) for r in allowed]
    assert remaining == sorted(remaining, reverse=True) and remaining[0] == 9
    for response in responses:
        assert response.headers["x-ratelimit-limit"] == "10"
        assert 0 <= int(response.headers["x-ratelimit-reset"]) <= 10
    rejected = limited[-1]
    assert_error(rejected, 429, code="rate_limited")
    assert rejected.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(rejected.headers["retry-after"]) <= 2
    assert rejected.headers["x-ratelimit-remaining"] == "0"


def test_bad_keys_spend_the_callers_ip_bucket(guarded: httpx.Client) -> None:
    statuses = [guarded.get("/status", headers={"X-API-Key": "guess"}).status_code for _ in range(13)]
    assert statuses[:10] == [401] * 10 and 429 in statuses[10:]
    assert guarded.get("/status", headers=ALICE).status_code == 200  # the key has its own bucket


def test_sessions_belong_to_the_key_that_made_them(guarded: httpx.Client) -> None:
    session_id = f"owned-{uuid.uuid4().hex[:8]}"
    turn = {"messages": [{"role": "user", "content": "Hi!"}], "session_id": session_id, "max_tokens": 2}
    assert guarded.post("/v1/chat", json=turn, headers=ALICE).status_code == 200
    path = f"/v1/chat/sessions/{session_id}"
    assert guarded.get(path, headers=ALICE).status_code == 200
    assert_error(guarded.get(path, headers=BOB), 404, code="session_not_found")
    assert_error(guarded.delete(path, headers=BOB), 404, code="session_not_found")
    assert_error(guarded.post("/v1/chat", json=turn, headers=BOB), 404, code="session_not_found")
    assert guarded.delete(path, headers=ALICE).status_code == 204


def test_status_shows_what_is_in_force_but_no_key(guarded: httpx.Client) -> None:
    response = guarded.get("/status", headers=ALICE)
    body = response.json()
    assert body["auth"] == {"enabled": True, "keys": 4, "protect_metrics": False}
    assert body["rate_limit"]["burst_size"] == 10 and body["rate_limit"]["requests_per_minute"] == 60
    assert body["pii"]["mode"] == "block" and "article" in body["pii"]["entities"]
    assert {"hits", "misses", "size", "evictions", "hit_rate"} <= set(body["cache"])
    assert not any(key in response.text for key in GUARDED_KEYS.values())


def test_keys_never_reach_a_log_line(guarded: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    guarded.post("/v1/generate", json={"prompt": "Hi", "max_tokens": 2}, headers=ALICE)
    guarded.get("/status", headers=BOB)
    guarded.get("/status", headers={"X-API-Key": "a-wrong-secret"})
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "alice" in logged  # the key's name is logged ...
    for secret in [*GUARDED_KEYS.values(), "a-wrong-secret"]:
        assert secret not in logged  # ... never the key


def test_metrics_can_be_put_behind_the_key(tmp_path: Path) -> None:
    """No model is needed for this: the server answers /metrics while the model is missing."""
    settings = make_settings(tmp_path / "no-model", security={"api_keys": ["metrics-key-1"], "protect_metrics": True})
    live = LiveServer(settings, on_fatal=lambda _: None).start()
    try:
        with live.client() as http:
            assert_error(http.get("/metrics"), 401)
            assert http.get("/metrics", headers={"Authorization": "Bearer metrics-key-1"}).status_code == 200
            assert http.get("/health/live").status_code == 200
    finally:
        live.stop()
