"""Shared fixtures: settings per test, and live servers on the real embedded model.

The embedded model (models/smollm2-135m-instruct) is prepared by `make test` before pytest
starts; the session fixture prepares it too when pytest is run on its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
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
from app.engine.types import LoadedModel
from app.main import create_app
from app.model.runtime import ServingModelFactory, load_engine_model, load_serving_model
from app.prepare.prepare import prepare
from tests.redis_server import RedisServer

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


def engine_model(model_dir: Path, **model: Any) -> LoadedModel:
    """The model as the server hands it to its engine: its decoding step compiled when the
    environment says ENGINE__COMPILE=true (`make test-compiled` runs the e2e tests so)."""
    return load_engine_model(make_settings(model_dir, model=model), lambda _: None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server shared by the tests; each test keeps to its own key prefix
    (`redis_server.settings()`)."""
    server = RedisServer(free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop, freeze and restart."""
    server = RedisServer(free_port()).start()
    yield server
    server.stop()


class LiveServer:
    """A real uvicorn server in a thread of the test process, on a free loopback port."""

    def __init__(
        self,
        settings: Settings,
        serving_model: ServingModelFactory = load_serving_model,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.app = create_app(settings, on_fatal=on_fatal, serving_model=serving_model)
        self.port = free_port()
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


def served_env(model_dir: Path, **variables: str) -> dict[str, str]:
    """Environment of a server run as its own process: the repository's config, the given
    model, and this checkout's `app` on the path (not whichever copy is installed)."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CONFIG_FILE": str(ROOT / "config.yml"),
        "MODEL__NAME": str(model_dir),
        "MODEL__SYSTEM_PROMPT_FILE": str(ROOT / "prompts" / "system.txt"),
        **variables,
    }


class ServedProcess:
    """The server as its own process (`python -m app`, uvicorn's CLI, ...), started in `workdir`
    (so no .env of the checkout is read); stdout and stderr are kept apart, in files."""

    def __init__(self, command: list[str], env: dict[str, str], workdir: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._stdout = workdir / "stdout.log"
        self._stderr = workdir / "stderr.log"
        with self._stdout.open("w") as stdout, self._stderr.open("w") as stderr:
            self.process = subprocess.Popen(command, cwd=workdir, env=env, stdout=stdout, stderr=stderr)

    def wait_healthy(self, timeout_s: float = 120) -> ServedProcess:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            healthy = poll(lambda: self.process.poll() is not None or _health(client) == 200, timeout_s=timeout_s)
        if not healthy or self.process.poll() is not None:
            self.stop()
            raise RuntimeError(f"server did not become healthy:\n{self.output()}")
        return self

    def client(self, timeout_s: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout_s)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send `sig`, wait for the process to end, and return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def stdout_lines(self) -> list[str]:
        return self._stdout.read_text(encoding="utf-8").splitlines()

    def stderr_lines(self) -> list[str]:
        return self._stderr.read_text(encoding="utf-8").splitlines()

    def output(self) -> str:
        return "\n".join([*self.stdout_lines(), *self.stderr_lines()])

    def records(self) -> list[dict[str, Any]]:
        """Every line of stdout and stderr as the JSON object it must be (fails on any other line)."""
        return json_records([*self.stdout_lines(), *self.stderr_lines()])


def json_records(lines: list[str]) -> list[dict[str, Any]]:
    """Each line parsed as one JSON object; fails naming the first line that is not one."""
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r} in:\n" + "\n".join(lines)) from None
        assert isinstance(record, dict), line
        records.append(record)
    return records


def _health(client: httpx.Client) -> int:
    try:
        return client.get("/health").status_code
    except httpx.TransportError:
        return 0


@pytest.fixture(scope="session")
def server(model_dir: Path) -> Iterator[LiveServer]:
    """One server with the repository's config on the embedded model, shared by the suite.
    Its rate limit is off (the suite sends far more than a client would); test_guard has its own."""
    live = LiveServer(make_settings(model_dir, rate_limit={"enabled": False})).start().wait_healthy()
    yield live
    live.stop()


def start_replicas(model_dir: Path, state: dict[str, Any], count: int = 2, **sections: Any) -> list[LiveServer]:
    """`count` live servers on the real model sharing one state backend (`state`: a `state`
    section, e.g. `redis_server.settings()`, the same for all), as replicas behind a load balancer
    would be. The caller stops them."""
    settings = make_settings(model_dir, state=state, **sections)
    # One after the other: models loading side by side in one process gain nothing on two cores.
    return [LiveServer(settings).start().wait_healthy() for _ in range(count)]


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


def sse_data(client: httpx.Client, path: str, body: dict[str, Any]) -> list[str]:
    """The `data:` payloads of an OpenAI stream; fails on any named event."""
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line and not line.startswith(":")]
    assert not [line for line in lines if not line.startswith("data: ")], lines
    return [line[len("data: ") :] for line in lines]


def chunks_of(data: list[str]) -> list[dict[str, Any]]:
    assert data[-1] == "[DONE]" and data.count("[DONE]") == 1
    return [json.loads(item) for item in data[:-1]]


async def until(condition: Callable[[], bool], real_s: float = 5.0) -> None:
    """Let the loop run until `condition` holds (a state the test caused), at most `real_s` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + real_s
    while not condition():
        assert loop.time() < deadline, "the condition never held"
        await asyncio.sleep(0.001)


RESPONSE_EVENTS_FIRST = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
"""How a streamed Responses API answer opens."""
RESPONSE_EVENTS_LAST_INCOMPLETE = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.incomplete",
]
"""How it closes when max_output_tokens cut it short."""
