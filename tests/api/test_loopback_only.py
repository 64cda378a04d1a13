"""A server with no API key answers only requests that reached it on a loopback address."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import fake_settings, running_app
from tests.fakes import ScriptedEngine


def _status_by_address(engine: ScriptedEngine, **sections: dict[str, Any]) -> dict[str, int]:
    """Status of GET /health reaching the server on each address (the ASGI scope's `server`)."""
    statuses = {}
    with running_app(engine, fake_settings(**sections)) as (_, client):
        for address in ("127.0.0.1", "[::1]", "192.0.2.10", "[2001:db8::1]"):
            client.base_url = f"http://{address}:8000"
            statuses[address] = client.get("/health").status_code
    return statuses


def test_an_open_server_refuses_requests_on_other_addresses(engine: ScriptedEngine) -> None:
    assert _status_by_address(engine) == {"127.0.0.1": 200, "[::1]": 200, "192.0.2.10": 403, "[2001:db8::1]": 403}


def test_the_refusal_is_a_json_error_with_the_request_id(engine: ScriptedEngine) -> None:
    with running_app(engine, fake_settings()) as (_, client):
        client.base_url = "http://192.0.2.10:8000"
        response = client.post("/v1/generate", json={"prompt": "hi"}, headers={"X-Request-ID": "from-afar"})
    assert response.status_code == 403
    assert response.json()["error"] == {
        "type": "permission_error", "code": "remote_access_refused", "param": None, "request_id": "from-afar",
        "message": response.json()["error"]["message"],
    }  # fmt: skip
    assert "security.api_keys" in response.json()["error"]["message"]
    assert response.headers["x-request-id"] == "from-afar"


@pytest.mark.parametrize(
    "security", [{"api_keys": ["a-long-enough-key"]}, {"allow_unauthenticated": True}], ids=["keys", "allowed"]
)
def test_a_server_with_keys_or_allowed_open_answers_on_every_address(
    engine: ScriptedEngine, security: dict[str, Any]
) -> None:
    assert set(_status_by_address(engine, security=security).values()) == {200}
