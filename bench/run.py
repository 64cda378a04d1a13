"""`make bench`: start the server on the embedded model and drive it with real streaming clients.

For each concurrency level, every client sends `--requests` streamed /v1/generate calls of
`--tokens` output tokens, one after another. Printed per level: requests/s, aggregate output
tokens/s, time to first token p50/p95, inter-token latency p50, end-to-end p50/p95, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Once upon a time, in a small village by the sea,"


@dataclass
class RequestResult:
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    tokens: int = 0
    gaps_s: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class LevelResult:
    concurrency: int
    wall_s: float
    results: list[RequestResult]

    def row(self) -> str:
        ok = [r for r in self.results if r.error is None]
        tokens = sum(r.tokens for r in ok)
        gaps = [gap for r in ok for gap in r.gaps_s]
        return (
            f"{self.concurrency:>5} {len(ok) / self.wall_s:>8.2f} {tokens / self.wall_s:>9.1f} "
            f"{_pct(ok, 'ttft_s', 50):>8.3f} {_pct(ok, 'ttft_s', 95):>8.3f} "
            f"{(statistics.median(gaps) if gaps else float('nan')) * 1000:>7.1f} "
            f"{_pct(ok, 'e2e_s', 50):>7.2f} {_pct(ok, 'e2e_s', 95):>7.2f} {len(self.results) - len(ok):>6}"
        )

    def tokens_per_s(self) -> float:
        return sum(r.tokens for r in self.results if r.error is None) / self.wall_s


HEADER = (
    f"{'conc':>5} {'req/s':>8} {'tok/s':>9} {'ttft50':>8} {'ttft95':>8} "
    f"{'itl50ms':>7} {'e2e50':>7} {'e2e95':>7} {'errors':>6}"
)


def _pct(results: list[RequestResult], attribute: str, percent: int) -> float:
    values = sorted(getattr(r, attribute) for r in results)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(percent / 100 * (len(values) - 1)))]


async def one_request(client: httpx.AsyncClient, tokens: int) -> RequestResult:
    result = RequestResult()
    body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True}
    started = last = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/generate", json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}"
                return result
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "token":
                    now = time.perf_counter()
                    if result.ttft_s == 0.0:
                        result.ttft_s = now - started
                    else:
                        result.gaps_s.append(now - last)
                    last = now
                elif line.startswith("data:") and event == "done":
                    result.tokens = json.loads(line.split(":", 1)[1])["tokens_generated"]
                elif line.startswith("data:") and event == "error":
                    result.error = line
    except httpx.HTTPError as exc:
        result.error = type(exc).__name__
    result.e2e_s = time.perf_counter() - started
    return result


async def run_level(url: str, concurrency: int, requests: int, tokens: int) -> LevelResult:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def client_loop() -> list[RequestResult]:
            return [await one_request(client, tokens) for _ in range(requests)]

        started = time.perf_counter()
        per_client = await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return LevelResult(concurrency, wall, [r for results in per_client for r in results])


def start_server(port: int, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "APP__PORT": str(port), "LOGGING__ACCESS_LOG": "false", "LOGGING__LEVEL": "WARNING"}
    env.update(extra_env)
    return subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env)


def wait_healthy(url: str, server: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the server exited before it was healthy")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become healthy")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,16", help="comma-separated concurrency levels")
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--requests", type=int, default=2, help="requests per client at each level")
    parser.add_argument("--url", help="bench a running server instead of starting one")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]

    server = None
    url = args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(port, {})
    try:
        if server is not None:
            wait_healthy(url, server)
        status = httpx.get(f"{url}/status", timeout=10).json()
        model = status["model"]
        print(f"model {model['served_name']} on {model['device']} ({model['dtype']}), {os.cpu_count()} CPUs")
        print(f"{args.tokens} output tokens per request, {args.requests} requests per client, streamed")
        print(HEADER)
        results = []
        for level in levels:
            result = asyncio.run(run_level(url, level, args.requests, args.tokens))
            results.append(result)
            print(result.row(), flush=True)
        base = results[0].tokens_per_s()
        for result in results[1:]:
            ratio = result.tokens_per_s() / base if base else float("nan")
            print(f"throughput at {result.concurrency} clients / at {results[0].concurrency}: {ratio:.2f}x")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
