"""The operator's routes and the app's life: /health while loading, ready or failed, /status,
request ids and timing headers, unknown routes, engine shutdown."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app import __version__
from app.core.config import Settings
from app.core.errors import GenerationFailed
from app.engine.types import BatchObserver
from app.main import create_app
from app.model.runtime import Progress, ReadyModel
from tests.api.conftest import fake_settings, running_app
from tests.conftest import assert_error, poll
from tests.fakes import ScriptedEngine, fake_serving_model

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def test_health_when_ready(api: TestClient) -> None:
    response = api.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "healthy", "model_loaded": True, "model_name": "scripted-model", "state": "ok",
    }  # fmt: skip
    assert "retry-after" not in response.headers
    assert api.get("/health/live").json() == {"status": "alive"}


@pytest.fixture
def held_loading(engine: ScriptedEngine) -> Iterator[tuple[TestClient, threading.Event]]:
    """An app whose model load waits for the test: the factory blocks on a threading.Event."""
    loaded = threading.Event()
    build = fake_serving_model(engine)

    def held(settings: Settings, progress: Progress, on_batch: BatchObserver | None) -> ReadyModel:
        progress("loading weights")
        loaded.wait(30)
        return build(settings, progress, on_batch)

    app = create_app(fake_settings(rate_limit={"enabled": False}), serving_model=held)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            assert poll(lambda: client.get("/health").json().get("progress") == "loading weights", timeout_s=10)
            yield client, loaded
    finally:
        loaded.set()  # the loader thread ends with the test, whatever happened


def test_loading_answers_503_then_healthy(held_loading: tuple[TestClient, threading.Event]) -> None:
    client, loaded = held_loading
    health = client.get("/health")
    assert health.status_code == 503
    assert health.json() == {
        "status": "loading", "model_loaded": False, "model_name": "scripted-model", "progress": "loading weights",
        "state": "ok",
    }  # fmt: skip
    assert int(health.headers["retry-after"]) > 0
    for path, body in (("/v1/generate", {"prompt": "hi"}), ("/v1/chat", CHAT), ("/v1/chat/completions", CHAT)):
        response = client.post(path, json=body)
        assert_error(response, 503, code="model_loading")
        assert int(response.headers["retry-after"]) > 0
    assert client.get("/health/live").status_code == 200
    status = client.get("/status").json()
    assert status["status"] == "loading" and status["model"]["device"] is None
    assert client.get("/v1/models").json()["data"][0]["id"] == "scripted-model"  # the name is known already

    loaded.set()
    assert poll(lambda: client.get("/health").status_code == 200, timeout_s=10)
    assert client.post("/v1/generate", json={"prompt": "hi"}).status_code == 200


def test_failed_load_reports_unhealthy_with_the_reason(engine: ScriptedEngine) -> None:
    fatal: list[str] = []

    def broken(settings: Settings, progress: Progress, on_batch: BatchObserver | None) -> ReadyModel:
        raise OSError("models/missing-model: no config.json")

    app = create_app(fake_settings(), on_fatal=fatal.append, serving_model=broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert poll(lambda: bool(fatal), timeout_s=10)
        assert fatal == ["models/missing-model: no config.json"]
        health = client.get("/health")
        assert health.status_code == 503 and int(health.headers["retry-after"]) > 0
        assert health.json()["status"] == "unhealthy" and "missing-model" in health.json()["reason"]
        assert_error(client.post("/v1/generate", json={"prompt": "hi"}), 503, code="model_unhealthy")
        assert client.get("/status").json()["status"] == "unhealthy"


def test_a_failed_warm_up_reports_unhealthy_not_loading_forever() -> None:
    fatal: list[str] = []
    engine = ScriptedEngine(fail_on_submit=GenerationFailed("warm-up generation failed"))
    app = create_app(fake_settings(), on_fatal=fatal.append, serving_model=fake_serving_model(engine))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert poll(lambda: bool(fatal), timeout_s=10)
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy" and "warm-up" in health.json()["reason"]


def test_status_shows_the_model_and_what_is_in_force(api: TestClient) -> None:
    status = api.get("/status").json()
    assert set(status) == {
        "status", "version", "uptime_s", "model", "sessions", "queue", "auth", "rate_limit", "cache", "pii", "limits",
        "defaults", "templates",
    }  # fmt: skip
    assert status["status"] == "healthy" and status["version"] == __version__ and status["uptime_s"] >= 0
    assert status["model"] == {
        "name": "scripted-model", "served_name": "scripted-model", "device": "cpu", "dtype": "float32",
        "context_length": 4096, "system_prompt_supported": True, "quantization": "none", "compiled": False,
    }  # fmt: skip
    assert status["queue"] == {"queued": 0, "running": 0, "cancelled": 0, "max_queue": 64}
    assert status["auth"] == {"enabled": False, "keys": 0, "protect_metrics": False}
    assert status["rate_limit"]["enabled"] is False
    assert status["cache"]["enabled"] is True and status["cache"]["capacity"] == 1024
    assert status["pii"]["mode"] == "redact" and "email" in status["pii"]["entities"]
    assert status["limits"]["max_prompt_chars"] == 32000 and status["limits"]["max_body_bytes"] == 1048576
    assert status["defaults"] == {
        "temperature": 0.7, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0, "max_tokens": 256,
    }  # fmt: skip
    assert status["sessions"]["active"] == 0


def test_request_id_is_taken_when_valid_and_replaced_when_not(api: TestClient) -> None:
    response = api.get("/health", headers={"X-Request-ID": "client-id.42:a_b-c"})
    assert response.headers["x-request-id"] == "client-id.42:a_b-c"
    for bad in ("has space", "x" * 129, "bad/slash", ""):
        response = api.get("/health", headers={"X-Request-ID": bad})
        assert response.headers["x-request-id"] != bad
        assert 1 <= len(response.headers["x-request-id"]) <= 128
    fresh = {api.get("/health").headers["x-request-id"] for _ in range(3)}
    assert len(fresh) == 3


def test_request_id_reaches_the_engine_and_the_error_body(api: TestClient, engine: ScriptedEngine) -> None:
    assert api.post("/v1/generate", json={"prompt": "hi"}, headers={"X-Request-ID": "trace-me"}).status_code == 200
    assert engine.submitted[-1].request_id == "trace-me"  # aborts and logs line up with the client's id
    error = api.post("/v1/generate", json={"prompt": ""}, headers={"X-Request-ID": "trace-bad"})
    assert_error(error, 422)
    assert error.json()["error"]["request_id"] == "trace-bad"


@pytest.mark.parametrize(("method", "path"), [("GET", "/health"), ("GET", "/nope"), ("POST", "/v1/generate")])
def test_process_time_on_every_response(api: TestClient, method: str, path: str) -> None:
    response = api.request(method, path, json={"prompt": "hi"})
    assert float(response.headers["x-process-time"]) >= 0 and response.headers["x-request-id"]


def test_unknown_route_and_method(api: TestClient) -> None:
    assert_error(api.get("/v1/nope"), 404, code="not_found")
    assert_error(api.get("/v1/generate"), 405, code="method_not_allowed")


def test_the_engine_is_shut_down_with_the_app(engine: ScriptedEngine) -> None:
    with running_app(engine, fake_settings()) as (_, api):
        assert api.get("/health").status_code == 200
        assert not engine.shut_down
    assert engine.shut_down
