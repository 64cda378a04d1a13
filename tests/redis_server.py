"""A real redis-server for the tests: its own process on a free loopback port, no persistence."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from app.core.config import StateSettings
from app.core.redis_state import RedisState, StateMonitor

REDIS_SERVER = shutil.which("redis-server")


def require_redis_server() -> str:
    """The binary; outside CI a machine without it skips (CI installs it: .ci/run)."""
    if REDIS_SERVER is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (.ci/run installs Debian's redis-server)")
        pytest.skip("redis-server is not installed")
    return REDIS_SERVER


class RedisServer:
    """`stop` and `start` again keep the port, so servers configured with `url` see an outage
    and a recovery; `freeze` (SIGSTOP) makes it hang without closing connections. With a
    `data_dir` it keeps an append-only file there, as a deployed Redis does, so a restart
    keeps the data; without one a restart forgets everything."""

    def __init__(self, port: int, data_dir: Path | None = None) -> None:
        self.binary = require_redis_server()
        self.port = port
        self.data_dir = data_dir
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10) -> RedisServer:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.data_dir is None:
            command += ["--appendonly", "no"]
        else:
            command += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data_dir)]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.client().ping():
                    return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            process.wait(timeout=10)

    def freeze(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2)

    def connect(self, monitor: StateMonitor | None = None, **overrides: Any) -> RedisState:
        """The app's own connection to this server, under a key prefix of its own."""
        return RedisState(StateSettings.model_validate(self.settings(**overrides)), monitor)

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """A `state` section using this server, under a key prefix of its own (tests share a server)."""
        return {
            "backend": "redis",
            "redis_url": self.url,
            "key_prefix": f"t{uuid.uuid4().hex[:12]}:",
            **overrides,
        }
