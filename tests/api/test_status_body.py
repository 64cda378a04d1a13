"""GET /status: a typed body (in the OpenAPI schema) telling what runs and is in force; probes open to all."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.conftest import fake_settings, running_app
from tests.fakes import ScriptedEngine

SECTIONS = [
    "status",
    "version",
    "uptime_s",
    "model",
    "sessions",
    "queue",
    "auth",
    "rate_limit",
    "cache",
    "pii",
    "limits",
    "defaults",
    "templates",
]


def test_status_has_every_section_in_order(api: TestClient) -> None:
    api.post("/v1/generate", json={"prompt": "hello", "temperature": 0})
    body = api.get("/status").json()
    assert list(body) == SECTIONS
    assert body["status"] == "healthy" and body["model"]["served_name"] == "scripted-model"
    assert body["model"]["device"] == "cpu" and body["model"]["context_length"] == 4096
    assert body["queue"] == {"queued": 0, "running": 0, "cancelled": 0, "max_queue": 64}
    assert body["cache"]["misses"] == 1 and body["cache"]["enabled"] is True
    assert body["rate_limit"]["enabled"] is False and "burst_size" in body["rate_limit"]
    assert body["limits"]["max_prompt_chars"] == 32_000
    assert "email" in body["pii"]["entities"]
    assert {"id": "summarize", "version": "1"} in body["templates"]


def test_status_body_is_in_the_openapi_schema(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    ok = schema["paths"]["/status"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/StatusResponse"}
    assert list(schema["components"]["schemas"]["StatusResponse"]["properties"]) == SECTIONS


def test_probes_need_no_key_but_status_does(engine: ScriptedEngine) -> None:
    with running_app(engine, fake_settings(security={"api_keys": ["a-long-enough-key"]})) as (_, client):
        assert client.get("/health").status_code == 200
        assert client.get("/health/live").json() == {"status": "alive"}
        assert client.get("/status").status_code == 401
        assert client.get("/status", headers={"X-API-Key": "a-long-enough-key"}).status_code == 200
