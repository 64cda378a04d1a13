"""The real model's start-up: what /status reports, one line and a non-zero exit on failure, JSON logs of
the served process, and the loader thread that ends before serving begins."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from app.core.config import Settings
from app.engine.types import BatchObserver
from app.model.runtime import ModelRuntime, ModelState, ReadyModel, load_serving_model
from tests.conftest import ServedProcess, free_port, make_settings, served_env


def test_health_and_status_describe_the_real_model(client: httpx.Client) -> None:
    """Loading, failing and the shapes are checked over the fake engine (tests/api/test_system.py)."""
    assert client.get("/health").json() == {
        "status": "healthy", "model_loaded": True, "model_name": "smollm2-135m-instruct", "state": "ok",
    }  # fmt: skip
    model = client.get("/status").json()["model"]
    assert (model["device"], model["dtype"], model["context_length"]) == ("cpu", "float32", 8192)
    assert model["system_prompt_supported"] is True


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
