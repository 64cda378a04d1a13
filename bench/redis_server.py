"""A redis-server of the bench's own (`--state redis`): a free loopback port, no persistence."""

from __future__ import annotations

import shutil
import subprocess
import time

import redis


class RedisProcess:
    def __init__(self, port: int) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("--state redis needs redis-server on the PATH (apt-get install redis-server)")
        self.url = f"redis://127.0.0.1:{port}/0"
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_ready(self, timeout_s: float = 10) -> RedisProcess:
        deadline = time.monotonic() + timeout_s
        with redis.Redis.from_url(self.url, socket_timeout=1) as client:
            while True:
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("redis-server did not start") from None
                    time.sleep(0.05)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
