"""Every way to serve (python -m app, uvicorn's CLI, its --factory, fastapi run) serves and logs only JSON lines."""

from __future__ import annotations

import importlib.util
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, ServedProcess, free_port, json_records, served_env

FASTAPI_CLI = importlib.util.find_spec("fastapi_cli") is not None

ENTRYPOINTS: dict[str, list[str]] = {
    "python -m app": ["app"],
    "uvicorn app.main:app": ["uvicorn", "app.main:app"],
    # bound to every address, as in a container: the open server still answers only on loopback
    "uvicorn --factory": ["uvicorn", "--factory", "app.main:create_app", "--host", "0.0.0.0"],
    "fastapi run": ["fastapi", "run", str(ROOT / "app" / "main.py")],
}
"""`python -m` arguments of each way to serve; all but `app` take the port as `--port`."""
BOUND_TO_EVERY_ADDRESS = {"uvicorn --factory", "fastapi run"}  # fastapi run binds 0.0.0.0 unless told otherwise


@pytest.mark.parametrize(
    ("entrypoint", "stop_signal", "warnings_forced"),
    [
        ("python -m app", signal.SIGTERM, True),
        ("uvicorn app.main:app", signal.SIGINT, True),
        ("uvicorn --factory", signal.SIGTERM, False),
        pytest.param(
            "fastapi run", signal.SIGINT, False,
            marks=pytest.mark.skipif(not FASTAPI_CLI, reason="fastapi-cli (fastapi[standard]) is not installed"),
        ),
    ],
)  # fmt: skip
def test_each_entrypoint_serves_and_every_line_is_json(
    model_dir: Path, tmp_path: Path, entrypoint: str, stop_signal: signal.Signals, warnings_forced: bool
) -> None:
    port = free_port()
    arguments = ENTRYPOINTS[entrypoint]
    command = [sys.executable, "-m", *arguments, *([] if arguments == ["app"] else ["--port", str(port)])]
    variables = {"APP__PORT": str(port), **({"PYTHONWARNINGS": "always"} if warnings_forced else {})}
    served = ServedProcess(command, served_env(model_dir, **variables), tmp_path, port)
    try:
        served.wait_healthy()
        with served.client() as client:
            response = client.post(
                "/v1/generate",
                json={"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0},
                headers={"X-Request-ID": "entry-1"},
            )
            assert response.status_code == 200, response.text
            assert response.json()["tokens_generated"] >= 1
        if entrypoint in BOUND_TO_EVERY_ADDRESS and (address := _non_loopback_address()):
            refused = httpx.get(f"http://{address}:{port}/health", timeout=10)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "remote_access_refused"
    finally:
        returncode = served.stop(stop_signal)
    # uvicorn re-raises the signal it caught once it has shut down
    assert returncode in (0, -stop_signal), served.output()
    records = _records_between_cli_banners(served) if entrypoint == "fastapi run" else served.records()
    messages = [r["message"] for r in records]
    assert any(m.startswith("Started server process") for m in messages), messages
    assert any(m.startswith("Uvicorn running on") for m in messages), messages
    assert "Application shutdown complete." in messages
    assert {r["message"] for r in records if r["request_id"] == "entry-1"} >= {"request", "generation finished"}
    assert not served.stderr_lines(), served.stderr_lines()  # the one handler writes to stdout


def test_uvicorn_cli_exits_non_zero_when_the_model_cannot_be_loaded(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)]
    served = ServedProcess(command, served_env(tmp_path / "no-such-model"), tmp_path, port)
    returncode = served.process.wait(timeout=120)
    assert returncode != 0
    errors = [r for r in served.records() if r["level"] == "ERROR"]
    assert len(errors) == 1 and "no-such-model" in errors[0]["message"], served.output()


def _records_between_cli_banners(served: ServedProcess) -> list[dict[str, Any]]:
    """fastapi-cli prints a banner of its own before it imports the app, and blank lines once
    the server has ended; every line in between is the server's, and JSON."""
    stdout = served.stdout_lines()
    ours = [index for index, line in enumerate(stdout) if line.startswith("{")]
    assert ours, stdout
    assert all(not line.strip() for line in stdout[ours[-1] + 1 :]), stdout
    return json_records([*stdout[ours[0] : ours[-1] + 1], *served.stderr_lines()])


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback (the one a default route leaves by), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # UDP: picks the outgoing address, sends nothing
        except OSError:
            return None
        address: str = sock.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address
