"""`make bench-peers`: this project's server against llama.cpp's `llama-server` on the same CPU, same load.

One server at a time runs on the machine: this project's (the default configuration, plus
a row per `--ours`), then `llama-server` on the embedded model converted to GGUF (a row per
`--peers` type, f32 and f16 by default). Each gets the same closed-loop load: at every
concurrency level each client sends `--requests` streamed `/v1/chat/completions` calls of
exactly `--tokens` greedy output tokens, one after another. Before each level the bench
waits (up to `--quiet-wait-s`) for the 1-minute load average to fall to `--max-load`, and
prints the load it started at. Printed: output tokens/s and TTFT p50 per level and server,
then ours / each peer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bench.harness import ROOT, Server, closed_loop, free_port, load
from bench.llama_cpp import (
    DEFAULT_CACHE,
    SDIST_NAME,
    SDIST_VERSION,
    LlamaCpp,
    build_server,
    ensure_gguf,
    server_command,
)
from bench.openai_chat import chat_body, stream_chat
from bench.peers_table import LevelStats, Row, table

MODEL_DIR = ROOT / "models" / "smollm2-135m-instruct"
PROMPT = "Tell me a story about a small village by the sea."
_ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


@dataclass(frozen=True)
class OursSpec:
    """A row of this project's server: its label and the environment it runs with."""

    label: str
    env: dict[str, str] = field(default_factory=dict)


def parse_ours(text: str) -> OursSpec:
    """`label:NAME=VALUE,NAME=VALUE`. A name is an environment variable (`MODEL__DTYPE`) or a
    settings path (`model.dtype`, turned into `MODEL__DTYPE`)."""
    label, _, assignments = text.partition(":")
    if not label.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: a row needs a label before ':'")
    env: dict[str, str] = {}
    for assignment in filter(None, (part.strip() for part in assignments.split(","))):
        name, equals, value = assignment.partition("=")
        name = name.strip()
        if "." in name:
            name = name.upper().replace(".", "__")
        if not equals or not _ENV_NAME.fullmatch(name):
            raise argparse.ArgumentTypeError(f"{assignment!r}: expected NAME=VALUE, e.g. MODEL__DTYPE=bfloat16")
        env[name] = value.strip()
    return OursSpec(label.strip(), env)


def default_max_load(cpus: int | None) -> float:
    """Three quarters of the cores busy: on two cores, 1.5."""
    return 0.75 * (cpus or 1)


def wait_for_quiet(
    max_load: float,
    max_wait_s: float,
    loadavg: Callable[[], tuple[float, float, float]] = os.getloadavg,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    say: Callable[[str], None] = print,
) -> float:
    """Wait, at most `max_wait_s`, for the 1-minute load average to fall to `max_load`; return it.
    A busy machine still gets measured, saying so, since the load printed with the row tells."""
    deadline = clock() + max_wait_s
    current = loadavg()[0]
    if current > max_load:
        say(f"load average {current:.2f} above {max_load:.2f}: waiting up to {max_wait_s:.0f} s")
    while current > max_load and clock() < deadline:
        sleep(min(5.0, max(0.0, deadline - clock())))
        current = loadavg()[0]
    if current > max_load:
        say(f"load average still {current:.2f}: measuring anyway, its figures are less trustworthy")
    return current


def measure(server: Server, args: argparse.Namespace, ours: bool) -> Row:
    """All levels on one server, which is stopped afterwards so that the next one has the CPU alone."""
    row = Row(server.label, ours=ours)
    send = partial(stream_chat, body=chat_body(PROMPT, args.tokens, MODEL_DIR.name))
    warm = partial(stream_chat, body=chat_body(PROMPT, 8, MODEL_DIR.name))
    try:
        server.wait_healthy()
        asyncio.run(closed_loop(server.url, 2, 1, warm))  # first-call costs out of the figures
        for level in args.levels:
            before = wait_for_quiet(args.max_load, args.quiet_wait_s)
            wall, results = asyncio.run(closed_loop(server.url, level, args.requests, send))
            stats = LevelStats.of(level, wall, results, args.tokens, before)
            row.levels[level] = stats
            print(
                f"{server.label} c={level}: {stats.tokens_per_s:.1f} tok/s, ttft50 {stats.ttft_p50_s:.3f} s, "
                f"load {before:.2f}, errors {stats.errors}",
                flush=True,
            )
    finally:
        server.stop()
    return row


def measure_peer(outtype: str, gguf: Path, binary: Path, args: argparse.Namespace) -> Row:
    port = free_port()
    context = args.parallel * args.slot_context
    command = server_command(binary, gguf, port, args.parallel, context, args.threads)
    logs = args.cache / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"llama-server-{outtype}.log").open("wb") as log:
        return measure(Server.spawn(f"llama.cpp {outtype}", command, port, log), args, ours=False)


def levels_arg(text: str) -> list[int]:
    return [int(level) for level in text.split(",") if level.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--levels", type=levels_arg, default=[1, 4, 16], help="concurrency levels (1,4,16)")
    parser.add_argument("--requests", type=int, default=4, help="requests per client at each level (4)")
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request, forced (64)")
    parser.add_argument(
        "--ours",
        type=parse_ours,
        action="append",
        default=[],
        metavar="LABEL:NAME=VALUE,...",
        help="one more row of this project's server with these settings, e.g. 'bf16:MODEL__DTYPE=bfloat16' "
        "or 'compiled:engine.compile=true' (repeatable; the default configuration's row always comes first)",
    )
    parser.add_argument(
        "--peers",
        type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
        default=["f32", "f16"],
        help="GGUF types for llama-server rows, any --outtype of the converter (f32,f16; '' for none)",
    )
    parser.add_argument("--parallel", type=int, default=16, help="llama-server --parallel slots (16)")
    parser.add_argument("--slot-context", type=int, default=256, help="llama-server context per slot (256)")
    parser.add_argument("--threads", type=int, default=cpus, help=f"llama-server threads ({cpus}, the cores)")
    parser.add_argument("--max-load", type=float, default=default_max_load(cpus), help="quiet: 1-min load at most")
    parser.add_argument("--quiet-wait-s", type=float, default=60, help="longest wait for a quiet machine per level")
    parser.add_argument("--jobs", type=int, default=cpus, help="build jobs for llama-server (built once)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where llama.cpp and the GGUFs are kept")
    parser.add_argument("--prepare-only", action="store_true", help="build llama-server and convert, then stop")
    args = parser.parse_args(argv)
    labels = ["ours", *(spec.label for spec in args.ours), *(f"llama.cpp {peer}" for peer in args.peers)]
    if len(set(labels)) != len(labels):
        parser.error(f"row labels must differ: {labels}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    paths = LlamaCpp(args.cache)
    binary = build_server(paths, args.jobs) if args.peers else None
    ggufs = {outtype: ensure_gguf(paths, MODEL_DIR, outtype) for outtype in args.peers}
    if args.prepare_only:
        return
    print(f"{MODEL_DIR.name}, {os.cpu_count()} CPUs; streamed /v1/chat/completions, greedy")
    print(f"{args.tokens} output tokens forced per request, {args.requests} requests per client, closed loop")
    if binary is not None:
        context = args.parallel * args.slot_context
        print(
            f"llama-server (built from the sdist {SDIST_NAME} {SDIST_VERSION}) --parallel {args.parallel} "
            f"--ctx-size {context} --threads {args.threads}"
        )
    print(f"load average at start: {load()}")
    rows: list[Row] = []
    for spec in [OursSpec("ours"), *args.ours]:
        rows.append(measure(Server.start(spec.label, spec.env), args, ours=True))
    if binary is not None:
        rows += [measure_peer(outtype, gguf, binary, args) for outtype, gguf in ggufs.items()]
    print(f"load average at end: {load()}")
    print("\n".join(table(rows, args.levels)))


if __name__ == "__main__":
    main()
