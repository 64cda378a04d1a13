"""`make bench`: start the server on the embedded model and drive it with real streaming clients.

Two servers run side by side: the configured one (batching) and the same one with
`engine.max_batch_size=1`. Each concurrency level is measured on one, then at once on the
other, so both see the same machine load and their ratio holds on a noisy machine. At each
level every client sends `--requests` streamed /v1/generate calls of `--tokens` output
tokens, one after another. Printed per level: requests/s, aggregate output tokens/s, time to
first token p50/p95, inter-token latency p50, end-to-end p50/p95, errors; then the ratios,
and the server at one client against bare `model.generate` on the same model, alternated.

`--state redis` adds a third server, the batching one with `state.backend: redis` on a
redis-server of the bench's own, measured right after the memory one at `--state-levels`;
in that mode every server runs its rate limiter (with limits far above the bench's rate),
so that each request pays the state backend's round trips as it would in production.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
from dataclasses import dataclass
from functools import partial

import httpx

from bench.harness import RequestResult, Server, closed_loop, free_port, load, percentile, timed_stream
from bench.redis_server import RedisProcess

PROMPT = "Once upon a time, in a small village by the sea,"
STATE_ENV = {
    # --state redis: the limiter runs on every request (and so touches the state backend) but
    # never refuses one.
    "RATE_LIMIT__ENABLED": "true",
    "RATE_LIMIT__REQUESTS_PER_MINUTE": "100000000",
    "RATE_LIMIT__BURST_SIZE": "100000000",
}


@dataclass
class LevelResult:
    label: str
    concurrency: int
    wall_s: float
    results: list[RequestResult]

    def row(self) -> str:
        ok = [r for r in self.results if r.error is None]
        gaps = [gap for r in ok for gap in r.gaps_s]
        return (
            f"{self.label:<8} {self.concurrency:>5} {len(ok) / self.wall_s:>8.2f} {self.tokens_per_s():>9.1f} "
            f"{_pct(ok, 'ttft_s', 50):>8.3f} {_pct(ok, 'ttft_s', 95):>8.3f} "
            f"{(statistics.median(gaps) if gaps else float('nan')) * 1000:>7.1f} "
            f"{_pct(ok, 'e2e_s', 50):>7.2f} {_pct(ok, 'e2e_s', 95):>7.2f} {len(self.results) - len(ok):>6}"
        )

    def tokens_per_s(self) -> float:
        return sum(r.tokens for r in self.results if r.error is None) / self.wall_s


HEADER = (
    f"{'engine':<8} {'conc':>5} {'req/s':>8} {'tok/s':>9} {'ttft50':>8} {'ttft95':>8} "
    f"{'itl50ms':>7} {'e2e50':>7} {'e2e95':>7} {'errors':>6}"
)


def _pct(results: list[RequestResult], attribute: str, percent: int) -> float:
    return percentile([getattr(r, attribute) for r in results], percent)


async def one_request(client: httpx.AsyncClient, tokens: int) -> RequestResult:
    body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True}
    event = ""

    def read_line(result: RequestResult, line: str, elapsed_s: float) -> bool:
        nonlocal event
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and event == "token":
            result.output_at(elapsed_s)
        elif line.startswith("data:") and event == "done":
            result.tokens = json.loads(line.split(":", 1)[1])["tokens_generated"]
        elif line.startswith("data:") and event == "error":
            result.error = line
        return False

    return await timed_stream(client, "/v1/generate", body, read_line)


async def run_level(label: str, url: str, concurrency: int, requests: int, tokens: int) -> LevelResult:
    wall, results = await closed_loop(url, concurrency, requests, partial(one_request, tokens=tokens))
    return LevelResult(label, concurrency, wall, results)


class BareGenerate:
    """One client without a server: `bench.mechanisms.serial` (transformers' own `generate`,
    greedy) on a model loaded here.

    `onednn`: the model as the server loads it (float32 Linear layers packed for oneDNN on CPU);
    otherwise torch's default kernels.
    """

    def __init__(self, dtype: str, onednn: bool) -> None:
        from app.core.config import ModelSettings
        from app.model.loader import load_model
        from bench.mechanisms import MODEL_DIR

        self._loaded = load_model(ModelSettings(name=str(MODEL_DIR), dtype=dtype, cpu_onednn_linear=onednn), None)
        self._ids = self._loaded.tokenizer(PROMPT, return_tensors="pt")["input_ids"].to(self._loaded.device)
        self.tokens_per_s(4, runs=1)  # first-call costs out of the figures

    def tokens_per_s(self, tokens: int, runs: int = 2) -> float:
        import torch

        from bench.mechanisms import serial, timed

        with torch.inference_mode():
            rate, _ = timed(lambda: serial(self._loaded.model, self._ids, runs, tokens))
        return rate


def one_client_against_bare_generate(url: str, args: argparse.Namespace) -> None:
    """The server at one client and bare `generate`, alternated `--pairs` times so that drift hits both."""
    same, default_kernels = BareGenerate(args.dtype, onednn=True), BareGenerate(args.dtype, onednn=False)
    server: list[float] = []
    bare: list[float] = []
    for _ in range(args.pairs):
        bare.append(same.tokens_per_s(args.tokens))
        server.append(asyncio.run(run_level("batch", url, 1, args.requests, args.tokens)).tokens_per_s())
    mine, theirs = statistics.median(server), statistics.median(bare)
    rates = ", ".join(f"{s:.1f}/{b:.1f}" for s, b in zip(server, bare, strict=True))
    print(f"one client, server/bare model.generate on the same model, alternated: {rates}")
    print(f"one client: server {mine:.1f} tok/s, bare model.generate {theirs:.1f} ({mine / theirs - 1:+.0%}, medians)")
    dense = default_kernels.tokens_per_s(args.tokens)
    print(
        f"one client: bare model.generate, torch's default kernels {dense:.1f} tok/s (server {mine / dense - 1:+.0%})"
    )


@dataclass
class Contender:
    """A server measured right after the batching one at some levels, as its alternative."""

    server: Server
    levels: set[int]
    ratio: str
    """How the ratio line names the comparison; the ratio is always batching (memory) / this."""
    inverse: bool = False
    """Print this / batching instead (for the state backend: the cost of Redis)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--levels", default="1,4,16", help="comma-separated concurrency levels")
    parser.add_argument("--baseline-levels", default="1,16", help="levels also run with max_batch_size=1 ('' for none)")
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--requests", type=int, default=2, help="requests per client at each level")
    parser.add_argument("--dtype", default="auto", help="MODEL__DTYPE of both servers (auto = float32 on CPU)")
    parser.add_argument("--no-reference", action="store_true", help="skip bare model.generate at one client")
    parser.add_argument("--pairs", type=int, default=3, help="alternations of server and bare generate at one client")
    parser.add_argument("--url", help="bench a running server instead (no baseline, no reference)")
    parser.add_argument(
        "--state", choices=("memory", "redis"), default="memory", help="redis: also a server on a Redis state backend"
    )
    parser.add_argument("--state-levels", default="1,16", help="levels also run with --state redis's server")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    baseline_levels = {int(level) for level in args.baseline_levels.split(",") if level} if not args.url else set()
    if args.url and args.state == "redis":
        parser.error("--state redis starts its own servers; it cannot bench --url")

    servers: list[Server] = []
    store: RedisProcess | None = None
    try:
        if args.url:
            batched = Server("batch", args.url)
            contenders: list[Contender] = []
        else:
            common = {"MODEL__DTYPE": args.dtype, **(STATE_ENV if args.state == "redis" else {})}
            batched = Server.start("batch", common)
            servers.append(batched)
            contenders = []
            if baseline_levels:
                serial = Server.start("serial", {**common, "ENGINE__MAX_BATCH_SIZE": "1"})
                servers.append(serial)
                contenders.append(Contender(serial, baseline_levels, "batch / max_batch_size=1"))
            if args.state == "redis":
                store = RedisProcess(free_port()).wait_ready()
                state = {"STATE__BACKEND": "redis", "STATE__REDIS_URL": store.url, "STATE__KEY_PREFIX": "bench:"}
                redis_server = Server.start("redis", {**common, **state})
                servers.append(redis_server)
                state_levels = {int(level) for level in args.state_levels.split(",") if level}
                contenders.append(Contender(redis_server, state_levels, "state.backend redis / memory", inverse=True))
        for server in servers:
            server.wait_healthy()
        report(args, batched, contenders, levels)
    finally:
        for server in servers:
            server.stop()
        if store is not None:
            store.stop()


def report(args: argparse.Namespace, batched: Server, contenders: list[Contender], levels: list[int]) -> None:
    status = httpx.get(f"{batched.url}/status", timeout=10).json()
    model = status["model"]
    print(f"model {model['served_name']} on {model['device']} ({model['dtype']}), {os.cpu_count()} CPUs")
    print(f"{args.tokens} output tokens per request, {args.requests} requests per client, streamed")
    if args.state == "redis":
        print("state: batch and serial on memory, redis on a local redis-server; rate limiter on in all")
    print(f"load average at start: {load()}")
    for server in (batched, *(contender.server for contender in contenders)):
        # first-call costs (allocations, kernel choices) out of the figures
        asyncio.run(run_level(server.label, server.url, 2, 1, 8))
    print(HEADER)
    ours: dict[int, LevelResult] = {}
    theirs: list[dict[int, LevelResult]] = [{} for _ in contenders]
    for level in levels:
        ours[level] = asyncio.run(run_level("batch", batched.url, level, args.requests, args.tokens))
        print(ours[level].row(), flush=True)
        for contender, results in zip(contenders, theirs, strict=True):
            if level in contender.levels:
                server = contender.server
                results[level] = asyncio.run(run_level(server.label, server.url, level, args.requests, args.tokens))
                print(results[level].row(), flush=True)
    print(f"load average at end: {load()}")
    first = levels[0]
    for level in levels[1:]:
        ratio = ours[level].tokens_per_s() / ours[first].tokens_per_s()
        print(f"batch: throughput at {level} clients / at {first}: {ratio:.2f}x")
    for contender, results in zip(contenders, theirs, strict=True):
        for level, result in results.items():
            ratio = ours[level].tokens_per_s() / result.tokens_per_s()
            print(f"throughput at {level} clients, {contender.ratio}: {1 / ratio if contender.inverse else ratio:.2f}x")
    if not args.no_reference and not args.url:
        one_client_against_bare_generate(batched.url, args)


if __name__ == "__main__":
    main()
