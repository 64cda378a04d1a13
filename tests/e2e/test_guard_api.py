"""Auth through a live uvicorn server: what the in-process API tests (tests/api/test_guard.py) cannot
see, such as a request header too large for the HTTP parser."""

from __future__ import annotations

from tests.conftest import GUARDED_KEYS, LiveServer

ALICE = {"X-API-Key": GUARDED_KEYS["alice"]}


def test_huge_key_header_is_refused_and_the_server_stays_healthy(guarded_server: LiveServer) -> None:
    with guarded_server.client() as guarded:
        guarded.headers["X-Forwarded-For"] = "10.253.0.1"
        response = guarded.get("/status", headers={"X-API-Key": "k" * 200_000})
        assert response.status_code in (400, 401, 431)
        assert guarded.get("/health").status_code == 200
        assert guarded.get("/status", headers=ALICE).status_code == 200
