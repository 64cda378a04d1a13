"""`python -m bench.step_profile`: where one decoding step's time goes, eager and compiled.

The model is loaded as the server loads it, a prompt of `--prompt` tokens is prefilled for
each of `--rows` rows, then `--steps` one-token decoding steps are timed:
  eager     the engine's own step (`KVBatch.forward`: transformers' forward, the Linear
            layers packed for oneDNN, a KV cache that grows in place)
  compiled  (`--compile`) the engine's compiled step (`engine.compile`): inductor's graph with
            the Linear kernels and attention called as opaque operators
Per variant: milliseconds per step (the median of `--rounds` rounds), and under the torch
profiler the split of the step into matrix products, attention, other operators and what no
operator accounts for (Python, dispatch, the compiled graph's own wrapper). For `compiled`
also the seconds its warm-up took (tracing, and compiling or reading inductor's cache).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from app.core.config import EngineSettings, ModelSettings
from app.engine.compiled_step import compile_decoding
from app.engine.kv_batch import KVBatch
from app.engine.types import LoadedModel
from app.model.loader import load_model
from bench.mechanisms import MODEL_DIR

Step = Callable[[], Any]
_MATMULS = ("linear", "addmm", "aten::mm", "int8pack", "int4pack", "matmul", "fp16")


def eager_step(loaded: LoadedModel, rows: int, prompt: int) -> Step:
    """The engine's eager step (`engine.compile: false`)."""
    kv = KVBatch.empty(rows, loaded.device)
    kv.forward(loaded.model, torch.randint(100, 1000, (rows, prompt)))
    token = torch.randint(100, 1000, (rows, 1))

    return lambda: kv.forward(loaded.model, token)


def compiled_step(rows: int, prompt: int, quantization: str) -> tuple[Step, float]:
    """The engine's compiled step (`engine.compile`) on a fresh load; returns it and the
    seconds `compile_decoding` took (tracing, compiling or loading from the on-disk cache)."""
    loaded = load_model(ModelSettings(name=str(MODEL_DIR), quantization=quantization), None)
    started = time.perf_counter()
    loaded = compile_decoding(loaded, EngineSettings().compile_cache_dir, lambda _: None)
    seconds = time.perf_counter() - started
    kv = KVBatch.empty(rows, loaded.device)
    kv.forward(loaded.model, torch.randint(100, 1000, (rows, prompt)))
    token = torch.randint(100, 1000, (rows, 1))
    return (lambda: kv.forward(loaded.model, token, decoder=loaded.decoder)), seconds


def ms_per_step(step: Step, steps: int, rounds: int) -> float:
    for _ in range(3):
        step()
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        timings.append((time.perf_counter() - started) / steps * 1000)
    return statistics.median(timings)


def breakdown(step: Step, steps: int) -> dict[str, float]:
    """Milliseconds per step: matrix products, attention, other operators, the rest."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - started
    parts = {"matmul": 0.0, "attention": 0.0, "other ops": 0.0}
    for event in profiler.key_averages():
        if event.key.startswith(("## ", "Torch-Compiled", "TorchDynamo", "AOTDispatcher")):
            continue
        part = (
            "other ops"  # the engine's opaque operators: their own time is the call, not the kernel
            if event.key.startswith("llm::")
            else "attention"
            if "attention" in event.key
            else "matmul"
            if any(m in event.key for m in _MATMULS)
            else "other ops"
        )
        parts[part] += event.self_cpu_time_total / 1000 / steps
    parts["not in an operator"] = wall * 1000 / steps - sum(parts.values())
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,16", help="batch sizes, comma-separated")
    parser.add_argument("--prompt", type=int, default=80, help="prefilled tokens per row")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also the torch.compile variant")
    parser.add_argument("--quantization", default="none", help="model.quantization of both variants")
    args = parser.parse_args()
    with torch.inference_mode():
        report(args)


def report(args: argparse.Namespace) -> None:
    server = load_model(ModelSettings(name=str(MODEL_DIR), quantization=args.quantization), None)
    print(f"{'variant':<9} {'rows':>4} {'ms/step':>8} {'matmul':>7} {'attn':>6} {'other':>6} {'no op':>6} compile_s")
    for rows in (int(r) for r in args.rows.split(",")):
        variants: list[tuple[str, Step, float | None]] = [("eager", eager_step(server, rows, args.prompt), None)]
        if args.compile:
            variants.append(("compiled", *compiled_step(rows, args.prompt, args.quantization)))
        for name, step, compile_s in variants:
            ms = ms_per_step(step, args.steps, args.rounds)
            parts = breakdown(step, args.steps)
            print(
                f"{name:<9} {rows:>4} {ms:>8.1f} {parts['matmul']:>7.1f} {parts['attention']:>6.1f} "
                f"{parts['other ops']:>6.1f} {parts['not in an operator']:>6.1f} "
                f"{'' if compile_s is None else f'{compile_s:.0f}':>9}",
                flush=True,
            )


if __name__ == "__main__":
    main()
