"""What the HTTP benches share: servers as child processes, closed-loop clients, percentiles, load.

A server is any process answering `GET /health` with 200 once it can serve: this project's
(`Server.start`) or another one (`Server.spawn`, e.g. llama.cpp's llama-server). Clients run
a closed loop: each sends its next request when the previous one has finished, so the
offered load is exactly the number of clients.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
SERVER_ENV = {
    "LOGGING__ACCESS_LOG": "false",
    "LOGGING__LEVEL": "WARNING",
    "RATE_LIMIT__ENABLED": "false",  # the bench is one client hammering the server on purpose
    "CACHE__ENABLED": "false",  # it repeats one prompt: every request must reach the engine
    "ENGINE__QUEUE_TIMEOUT_S": "900",  # the max_batch_size=1 server queues 16 clients: measure, don't reject
    "ENGINE__MAX_QUEUE": "256",
}


@dataclass
class RequestResult:
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    tokens: int = 0
    gaps_s: list[float] = field(default_factory=list)
    error: str | None = None
    last_s: float = 0.0
    """When the latest output arrived, in seconds after the request was sent."""

    def output_at(self, elapsed_s: float) -> None:
        """Output arrived `elapsed_s` after the request was sent: the first sets TTFT, the next ones a gap each."""
        if self.ttft_s == 0.0:
            self.ttft_s = elapsed_s
        else:
            self.gaps_s.append(elapsed_s - self.last_s)
        self.last_s = elapsed_s


Send = Callable[[httpx.AsyncClient], Awaitable[RequestResult]]
"""One request over the given client, timed."""
LineReader = Callable[[RequestResult, str, float], bool]
"""Reads one line of a streamed answer into the result, given the seconds since the request was
sent; True at the end of the stream."""


async def timed_stream(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], read_line: LineReader
) -> RequestResult:
    """POST `body` to `path` and read the streamed answer line by line; a refusal or a broken
    connection is the result's error."""
    result = RequestResult()
    started = time.perf_counter()
    try:
        async with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}"
            else:
                async for line in response.aiter_lines():
                    if read_line(result, line, time.perf_counter() - started):
                        break
    except httpx.HTTPError as exc:
        result.error = type(exc).__name__
    result.e2e_s = time.perf_counter() - started
    return result


async def closed_loop(url: str, concurrency: int, requests: int, send: Send) -> tuple[float, list[RequestResult]]:
    """`concurrency` clients, each sending `requests` requests one after another; the wall time and every result."""
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:

        async def client_loop() -> list[RequestResult]:
            return [await send(client) for _ in range(requests)]

        started = time.perf_counter()
        per_client = await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return wall, [result for results in per_client for result in results]


def percentile(values: Sequence[float], percent: float) -> float:
    """Nearest rank on the sorted values (NaN for none): with a handful of requests per level,
    interpolating would invent values that no request had."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))]


@dataclass
class Server:
    label: str
    url: str
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, label: str, extra_env: dict[str, str]) -> Server:
        """This project's server (`python -m app`) on a free port, with the bench's environment."""
        port = free_port()
        env = {**os.environ, **SERVER_ENV, "APP__PORT": str(port), **extra_env}
        process = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env)
        return cls(label, f"http://127.0.0.1:{port}", process)

    @classmethod
    def spawn(cls, label: str, command: Sequence[str], port: int, log: IO[bytes] | None = None) -> Server:
        """Another server, already told by `command` to listen on 127.0.0.1:`port`; its output to `log`."""
        process = subprocess.Popen(list(command), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT if log else None)
        return cls(label, f"http://127.0.0.1:{port}", process)

    def wait_healthy(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise SystemExit(f"the {self.label} server exited before it was healthy")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the {self.label} server did not become healthy")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())
