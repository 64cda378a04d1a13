"""Shared fixtures: settings per test, and live servers on the real embedded model.

The embedded model (models/smollm2-135m-instruct) is prepared by `make test` before pytest
starts; the session fixture prepares it too when pytest is run on its own.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from app.core.config import Settings, load_settings
from app.main import create_app
from app.model.runtime import ServingModelFactory, load_serving_model
from app.prepare.prepare import prepare

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models" / "smollm2-135m-instruct"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked by its folder: `-m unit`, `-m api`, `-m e2e`."""
    for item in items:
        layer = Path(item.path).parent.name
        if layer in {"unit", "api", "e2e"}:
            item.add_marker(getattr(pytest.mark, layer))


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return prepare("smollm2-135m-instruct", ROOT / "models")


def make_settings(model_dir: Path, **sections: dict[str, Any]) -> Settings:
    """config.yml of the repository with the given sections merged over it; no .env."""
    model = {"name": str(model_dir), "system_prompt_file": str(ROOT / "prompts" / "system.txt")}
    model.update(sections.pop("model", {}))
    return load_settings(config_file=ROOT / "config.yml", env_file=None, model=model, **sections)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    """A real uvicorn server in a thread of the test process, on a free loopback port."""

    def __init__(
        self,
        settings: Settings,
        serving_model: ServingModelFactory = load_serving_model,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.app = create_app(settings, on_fatal=on_fatal, serving_model=serving_model)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn-{self.port}", daemon=True)

    def start(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def wait_healthy(self, timeout_s: float = 120) -> LiveServer:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url) as client:
            while client.get("/health").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("model did not become healthy")
                time.sleep(0.05)
        return self

    def client(self, timeout_s: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout_s)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


@pytest.fixture(scope="session")
def server(model_dir: Path) -> Iterator[LiveServer]:
    """One server with the repository's config on the embedded model, shared by the suite.
    Its rate limit is off (the suite sends far more than a client would); test_guard has its own."""
    live = LiveServer(make_settings(model_dir, rate_limit={"enabled": False})).start().wait_healthy()
    yield live
    live.stop()


GUARDED_KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key", "carol": "carol-secret-key", "flood": "flood-key"}
"""Keys of the guarded server: named, plain, by SHA-256 only; `flood` is for the flood test alone."""
OUTPUT_PATTERN = r"\b[Tt]he\b"
"""The guarded server redacts this word from outputs as [ARTICLE] (so prompts sent to it avoid it)."""


@pytest.fixture(scope="session")
def guarded_server(model_dir: Path) -> Iterator[LiveServer]:
    """API keys, a small rate limit (X-Forwarded-For trusted, so each test can be its own client),
    PII in block mode with an output-only custom pattern, prompts logged (redacted)."""
    settings = make_settings(
        model_dir,
        security={
            "api_keys": [
                {"name": "alice", "key": GUARDED_KEYS["alice"]},
                GUARDED_KEYS["bob"],
                {"name": "carol", "key_sha256": hashlib.sha256(GUARDED_KEYS["carol"].encode()).hexdigest()},
                {"name": "flood", "key": GUARDED_KEYS["flood"]},
            ]
        },
        rate_limit={"requests_per_minute": 60, "burst_size": 10, "trust_forwarded_for": True},
        pii={"mode": "block", "custom_patterns": {"article": OUTPUT_PATTERN}},
        logging={"log_prompts": True},
    )
    live = LiveServer(settings).start().wait_healthy()
    yield live
    live.stop()


def metric_value(client: httpx.Client, name: str, **labels: str) -> float:
    """One sample's value from /metrics (0 when absent)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


def assert_error(response: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> None:
    """SPEC's error shape, the status, and the request id echoed in body and header."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"type", "code", "message", "param", "request_id"}
    assert error["request_id"] == response.headers["x-request-id"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error


def iter_sse(response: httpx.Response) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of an SSE response as they arrive; comments come as ("comment", text)."""
    event, data = "message", []
    for line in response.iter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event:"):
            event = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:") :].strip())
        elif line == "" and data:
            yield event, "\n".join(data)
            event, data = "message", []


def poll(condition: Callable[[], bool], timeout_s: float = 30, interval_s: float = 0.05) -> bool:
    """Wait for a state change the test caused (not a speed check): True once it holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True
