"""SIGTERM on `python -m app` with the real model: the replica drains before it stops listening.

While a streamed generation runs, /health answers 503 `draining`, new generations 503
`shutting_down`, /health/live 200; the stream ends normally within `engine.shutdown_grace_s`
(or is cut with a `shutting_down` error once the grace is spent) and the process exits 0.
What the runtime does while draining is checked over the fake engine in tests/api/test_draining.py.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ServedProcess, assert_error, free_port, poll, served_env

LONG = {"model": "x", "prompt": "Count slowly:", "temperature": 0, "ignore_eos": True, "stream": True}


def stream_completion(url: str, max_tokens: int, first_token: threading.Event) -> list[dict[str, Any]]:
    """Every `data:` payload of a streamed /v1/completions (but [DONE], kept as a string)."""
    payloads: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=url, timeout=120) as client,
        client.stream("POST", "/v1/completions", json={**LONG, "max_tokens": max_tokens}) as response,
    ):
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line.removeprefix("data:").strip()
            payloads.append({"done": True} if data == "[DONE]" else json.loads(data))
            first_token.set()
    return payloads


def serve(model_dir: Path, workdir: Path, grace_s: float) -> ServedProcess:
    port = free_port()
    # No request timeout to meet: on a machine busy with other work a long stream may be slow.
    env = served_env(
        model_dir, APP__PORT=str(port), ENGINE__SHUTDOWN_GRACE_S=str(grace_s), ENGINE__REQUEST_TIMEOUT_S="3600"
    )
    return ServedProcess([sys.executable, "-m", "app"], env, workdir, port).wait_healthy()


def start_stream(served: ServedProcess, pool: ThreadPoolExecutor, max_tokens: int) -> Future[list[dict[str, Any]]]:
    first_token = threading.Event()
    stream = pool.submit(stream_completion, served.url, max_tokens, first_token)
    assert first_token.wait(timeout=120), stream.result() if stream.done() else "no token within 120 s"
    return stream


def test_sigterm_drains_running_streams_while_health_says_draining(model_dir: Path, tmp_path: Path) -> None:
    served = serve(model_dir, tmp_path, grace_s=300)
    try:
        with ThreadPoolExecutor(1) as pool, served.client() as client:
            stream = start_stream(served, pool, max_tokens=96)
            served.process.send_signal(signal.SIGTERM)
            # Still listening: readiness fails (the load balancer takes the replica out), liveness holds.
            assert poll(lambda: client.get("/health").status_code == 503, timeout_s=30), client.get("/health").text
            health = client.get("/health")
            assert health.json()["status"] == "draining" and health.json()["model_loaded"] is True
            assert "retry-after" in health.headers
            assert client.get("/health/live").status_code == 200
            refused = client.post("/v1/generate", json={"prompt": "Hello", "max_tokens": 2})
            assert_error(refused, 503, "shutting_down")
            assert not stream.done(), "the generation ended before the checks: make it longer"
            payloads = stream.result(timeout=600)
        returncode = served.process.wait(timeout=60)
    finally:
        served.stop(signal.SIGKILL)
    assert payloads[-1] == {"done": True}
    assert not any("error" in payload for payload in payloads), payloads[-3:]
    assert payloads[-2]["choices"][0]["finish_reason"] == "length"
    assert returncode == 0, served.output()
    messages = [record["message"] for record in served.records()]
    assert messages.index("draining") < messages.index("Shutting down")


def test_a_generation_past_the_grace_is_cut_with_shutting_down_and_the_process_exits(
    model_dir: Path, tmp_path: Path
) -> None:
    served = serve(model_dir, tmp_path, grace_s=1)
    try:
        with ThreadPoolExecutor(1) as pool:
            stream = start_stream(served, pool, max_tokens=1000)
            served.process.send_signal(signal.SIGTERM)
            payloads = stream.result(timeout=120)
        returncode = served.process.wait(timeout=60)
    finally:
        served.stop(signal.SIGKILL)
    assert payloads[-1] == {"done": True}
    assert payloads[-2]["error"]["code"] == "shutting_down", payloads[-3:]
    assert returncode == 0, served.output()
