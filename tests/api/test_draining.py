"""Draining (what SIGTERM starts under `python -m app`) over the fake engine: readiness says
`draining`, new generations get 503 `shutting_down`, liveness holds and a running generation
finishes. The signal itself is sent to a real process in tests/e2e/test_draining.py."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from app.core.config import Settings
from app.engine.types import BatchObserver
from app.main import create_app
from app.model.runtime import ModelRuntime, Progress, ReadyModel
from app.server import drain_app
from tests.api.conftest import fake_settings, release, running_app
from tests.conftest import assert_error, poll
from tests.fakes import ScriptedEngine, fake_serving_model

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def test_draining_refuses_new_generations_while_the_running_one_finishes(engine: ScriptedEngine) -> None:
    with (
        running_app(engine, fake_settings(rate_limit={"enabled": False})) as (app, client),
        ThreadPoolExecutor(1) as pool,
    ):
        assert client.portal is not None
        engine.gate = asyncio.Event()
        running = pool.submit(client.post, "/v1/generate", json={"prompt": "one two three"})
        assert poll(lambda: engine.running == 1, timeout_s=10)
        client.portal.call(drain_app, app)

        health = client.get("/health")
        assert health.status_code == 503 and int(health.headers["retry-after"]) > 0
        assert health.json() == {
            "status": "draining", "model_loaded": True, "model_name": "scripted-model", "state": "ok",
        }  # fmt: skip
        assert client.get("/status").json()["status"] == "draining"
        assert client.get("/health/live").status_code == 200
        for path, body in (("/v1/generate", {"prompt": "hi"}), ("/v1/chat", CHAT), ("/v1/chat/completions", CHAT)):
            refused = client.post(path, json=body)
            assert_error(refused, 503, code="shutting_down")
            assert int(refused.headers["retry-after"]) > 0
        assert engine.shut_down

        release(client, engine.gate)
        answer = running.result(timeout=10)
        assert answer.status_code == 200 and answer.json()["finish_reason"] == "stop"


def test_draining_while_loading_stays_draining_once_the_model_is_loaded(engine: ScriptedEngine) -> None:
    loaded = threading.Event()
    build = fake_serving_model(engine)

    def held(settings: Settings, progress: Progress, on_batch: BatchObserver | None) -> ReadyModel:
        progress("loading weights")
        loaded.wait(30)
        return build(settings, progress, on_batch)

    app = create_app(fake_settings(), serving_model=held)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.portal is not None
            assert poll(lambda: client.get("/health").json().get("progress") == "loading weights", timeout_s=10)
            client.portal.call(drain_app, app)
            assert client.get("/health").json()["status"] == "draining"
            loaded.set()
            runtime: ModelRuntime = app.state.runtime
            assert poll(lambda: runtime.info is not None, timeout_s=10)
            health = client.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "draining"
            assert_error(client.post("/v1/generate", json={"prompt": "hi"}), 503, code="shutting_down")
    finally:
        loaded.set()


def test_draining_before_the_lifespan_ran_does_nothing() -> None:
    app = create_app(fake_settings(), serving_model=fake_serving_model(ScriptedEngine()))
    asyncio.run(drain_app(app))
    assert not hasattr(app.state, "runtime")
