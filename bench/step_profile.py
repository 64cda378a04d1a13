"""`python -m bench.step_profile`: where one decoding step's time goes, eager and compiled.

The model is loaded as the server loads it, a prompt of `--prompt` tokens is prefilled for
each of `--rows` rows, then `--steps` one-token decoding steps are timed:
  eager     the engine's own step (`KVBatch.forward`: transformers' forward, the Linear
            layers packed for oneDNN, a KV cache that grows in place)
  compiled  (`--compile`) the same forward through `torch.compile` (inductor, weights frozen
            into the graph so that it packs them itself) on a static KV cache of `--capacity`
            columns, one graph per batch size, as a CUDA-graph server captures them
Per variant: milliseconds per step (the median of `--rounds` rounds), and under the torch
profiler the split of the step into matrix products, attention, other operators and what no
operator accounts for (Python, dispatch, the compiled graph's own wrapper). For `compiled`
also the seconds its first call took (tracing and compiling).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from app.core.config import ModelSettings
from app.engine.kv_batch import KVBatch
from app.engine.types import LoadedModel
from app.model.loader import load_model
from bench.mechanisms import MODEL_DIR

Step = Callable[[], Any]
_MATMULS = ("linear", "addmm", "aten::mm", "int8pack", "int4pack", "matmul")


def eager_step(loaded: LoadedModel, rows: int, prompt: int) -> Step:
    kv = KVBatch.empty(rows, loaded.device)
    kv.forward(loaded.model, torch.randint(100, 1000, (rows, prompt)))
    token = torch.randint(100, 1000, (rows, 1))

    return lambda: kv.forward(loaded.model, token)


def compiled_step(loaded: LoadedModel, rows: int, prompt: int, capacity: int) -> tuple[Step, float]:
    """A compiled forward over transformers' static cache; returns it and its compile seconds."""
    import torch._inductor.config as inductor
    from transformers import StaticCache

    inductor.freezing = True
    model = loaded.model
    cache = StaticCache(config=model.config, max_cache_len=capacity)
    mask = torch.zeros((rows, capacity), dtype=torch.long)
    mask[:, : prompt + 1] = 1
    model(
        input_ids=torch.randint(100, 1000, (rows, prompt)),
        attention_mask=mask[:, :prompt],
        cache_position=torch.arange(prompt),
        past_key_values=cache,
        use_cache=True,
    )
    token, positions, column = (
        torch.randint(100, 1000, (rows, 1)),
        torch.full((rows, 1), prompt),
        torch.tensor([prompt]),
    )

    def forward() -> Any:
        return model(
            input_ids=token,
            position_ids=positions,
            cache_position=column,
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits

    compiled = torch.compile(forward, dynamic=False)
    started = time.perf_counter()
    compiled()
    return compiled, time.perf_counter() - started


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
            "attention"
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
    parser.add_argument("--capacity", type=int, default=256, help="static KV columns of the compiled variant")
    args = parser.parse_args()
    with torch.inference_mode():
        report(args)


def report(args: argparse.Namespace) -> None:
    settings = ModelSettings(name=str(MODEL_DIR))
    server = load_model(settings, None)
    plain = load_model(settings.model_copy(update={"cpu_onednn_linear": False}), None) if args.compile else None
    print(f"{'variant':<9} {'rows':>4} {'ms/step':>8} {'matmul':>7} {'attn':>6} {'other':>6} {'no op':>6} compile_s")
    for rows in (int(r) for r in args.rows.split(",")):
        variants: list[tuple[str, Step, float | None]] = [("eager", eager_step(server, rows, args.prompt), None)]
        if plain is not None:
            torch._dynamo.reset()
            variants.append(("compiled", *compiled_step(plain, rows, args.prompt, args.capacity)))
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
