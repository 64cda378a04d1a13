"""Start-up: 503 while loading, healthy when ready, one line and a non-zero exit on failure."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from app.core.config import Settings
from app.engine.types import BatchObserver
from app.model.runtime import ModelRuntime, ModelState, ReadyModel, load_serving_model
from tests.conftest import LiveServer, ServedProcess, assert_error, free_port, make_settings, poll, served_env


def test_loading_answers_503_then_healthy(model_dir: Path) -> None:
    gate = threading.Event()

    def held_loader(settings: Settings, progress: Callable[[str], None], on_batch: BatchObserver | None) -> ReadyModel:
        progress("loading weights")
        gate.wait(120)
        return load_serving_model(settings, progress, on_batch)

    live = LiveServer(make_settings(model_dir), serving_model=held_loader).start()
    try:
        with live.client() as client:
            health = client.get("/health")
            assert health.status_code == 503
            assert health.json() == {
                "status": "loading", "model_loaded": False, "model_name": "smollm2-135m-instruct",
                "progress": "loading weights",
            }  # fmt: skip
            assert int(health.headers["retry-after"]) > 0
            chat_body = {"messages": [{"role": "user", "content": "hi"}]}
            for path, body in (("/v1/generate", {"prompt": "hi"}), ("/v1/chat", chat_body)):
                response = client.post(path, json=body)
                assert_error(response, 503, code="model_loading")
                assert int(response.headers["retry-after"]) > 0
            assert client.get("/health/live").status_code == 200
            assert client.get("/status").json()["status"] == "loading"

            gate.set()
            live.wait_healthy()
            assert client.get("/health").json() == {
                "status": "healthy", "model_loaded": True, "model_name": "smollm2-135m-instruct",
            }  # fmt: skip
            status = client.get("/status").json()
            assert status["model"]["device"] == "cpu" and status["model"]["dtype"] == "float32"
            assert status["model"]["context_length"] == 8192
    finally:
        gate.set()
        live.stop()


def test_failed_load_reports_unhealthy_with_the_reason(tmp_path: Path) -> None:
    fatal: list[str] = []
    live = LiveServer(make_settings(tmp_path / "missing-model"), on_fatal=fatal.append).start()
    try:
        assert poll(lambda: bool(fatal))
        assert len(fatal) == 1 and "\n" not in fatal[0] and "missing-model" in fatal[0]
        with live.client() as client:
            health = client.get("/health")
            assert health.status_code == 503
            assert health.json()["status"] == "unhealthy" and "missing-model" in health.json()["reason"]
            assert_error(client.post("/v1/generate", json={"prompt": "hi"}), 503, code="model_unhealthy")
    finally:
        live.stop()


def test_process_exits_non_zero_with_one_line_and_no_secret(tmp_path: Path) -> None:
    env = served_env(tmp_path / "no-such-model", APP__PORT=str(free_port()), HUGGINGFACE_TOKEN="hf_topsecret_value")
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "hf_topsecret_value" not in output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if '"level": "ERROR"' in line]
    assert len(errors) == 1 and "no-such-model" in errors[0], output


def test_served_process_logs_json_lines_with_request_ids_and_no_prompts(model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    served = ServedProcess([sys.executable, "-m", "app"], served_env(model_dir, APP__PORT=str(port)), tmp_path, port)
    secret_prompt = "zebra-quokka-77 tell me a story"
    try:
        served.wait_healthy()
        with served.client() as client:
            response = client.post(
                "/v1/generate", json={"prompt": secret_prompt, "max_tokens": 3}, headers={"X-Request-ID": "trace-me-1"}
            )
            assert response.status_code == 200
    finally:
        returncode = served.stop(signal.SIGTERM)
    # uvicorn re-raises the caught SIGTERM once shutdown is complete
    assert returncode in (0, -signal.SIGTERM), served.output()
    records = served.records()
    assert "Application shutdown complete." in {r["message"] for r in records}
    assert all({"ts", "level", "logger", "message", "request_id"} <= set(r) for r in records)
    traced = [r for r in records if r["request_id"] == "trace-me-1"]
    assert {r["message"] for r in traced} >= {"request", "generation finished"}
    assert "zebra-quokka" not in served.output()


def test_the_model_is_loaded_on_a_thread_that_has_ended_when_serving_starts(model_dir: Path) -> None:
    """A loader thread that lived on would keep its OpenMP workers and slow every decoding step."""
    loader_threads: list[threading.Thread] = []

    def recording_loader(
        settings: Settings, progress: Callable[[str], None], on_batch: BatchObserver | None
    ) -> ReadyModel:
        loader_threads.append(threading.current_thread())
        return load_serving_model(settings, progress, on_batch)

    async def load_and_stop() -> None:
        runtime = ModelRuntime(make_settings(model_dir), recording_loader)
        try:
            await runtime.load()
            assert runtime.state is ModelState.READY
            [loader] = loader_threads
            assert loader is not threading.main_thread()
            loader.join(timeout=10)  # blocks the loop on purpose: nothing else runs in this test
            assert not loader.is_alive()
        finally:
            await runtime.shutdown()

    asyncio.run(load_and_stop())
