"""`python -m bench.mechanisms`: the batching mechanisms compared in one process, without HTTP.

N requests of the bench prompt, `--tokens` greedy tokens each, through:
  serial    transformers `generate`, one request after another (what a plain server does)
  padded    one padded batch of all N through `generate` (no joining, no leaving)
  hf-cb     transformers' continuous batching, `generate_batch` (paged attention)
  engine    this server's BatchingEngine: all N submitted at once, streamed
Printed: output tokens/s (wall clock) and CPU seconds used, per mechanism and dtype. Every
mechanism runs the model as the server loads it (`--kernels onednn`: float32 Linear layers
packed for oneDNN on CPU) or with torch's default kernels (`--kernels torch`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import AutoTokenizer, GenerationConfig

from app.core.config import EngineSettings, ModelSettings
from app.engine.batching import BatchingEngine
from app.engine.types import GenerationRequest, LoadedModel, SamplingParams
from app.model.loader import load_model
from bench.run import PROMPT

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models" / "smollm2-135m-instruct"
T = TypeVar("T")


def timed(run: Callable[[], int]) -> tuple[float, float]:
    """(tokens per wall second, CPU seconds) of one call returning its token count."""
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = run()
    return tokens / (time.perf_counter() - wall), time.process_time() - cpu


def serial(model: Any, ids: torch.Tensor, n: int, tokens: int) -> int:
    options = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False}
    for _ in range(n):
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)
    return n * tokens


def padded(model: Any, ids: torch.Tensor, n: int, tokens: int) -> int:
    batch = ids.repeat(n, 1)
    options = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False}
    model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), **options)
    return n * tokens


def hf_continuous(model: Any, ids: torch.Tensor, n: int, tokens: int) -> int:
    config = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=-1)
    outputs = model.generate_batch([ids[0].tolist()] * n, generation_config=config, persistent_manager=True)
    return sum(len(output.generated_tokens) for output in outputs.values())


def engine(loaded: LoadedModel) -> Callable[[Any, torch.Tensor, int, int], int]:
    def run(_: Any, ids: torch.Tensor, n: int, tokens: int) -> int:
        async def all_at_once() -> int:
            batching = BatchingEngine(loaded, EngineSettings(max_batch_size=max(n, 1)))
            batching.start()
            params = SamplingParams(max_tokens=tokens, temperature=0.0)

            async def one(i: int) -> int:
                request = GenerationRequest(f"m{i}", tuple(ids[0].tolist()), params)
                return [chunk async for chunk in batching.submit(request)][-1].completion_tokens

            try:
                return sum(await asyncio.gather(*(one(i) for i in range(n))))
            finally:
                await batching.shutdown(0)

        return asyncio.run(all_at_once())

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--mechanisms", default="serial,padded,hf-cb,engine")
    parser.add_argument("--kernels", choices=["onednn", "torch"], default="onednn", help="float32 Linear on CPU")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    print(f"{args.requests} requests x {args.tokens} tokens, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    for dtype in args.dtypes.split(","):
        settings = ModelSettings(name=str(MODEL_DIR), dtype=dtype, cpu_onednn_linear=args.kernels == "onednn")
        loaded = on_own_thread(partial(load_model, settings, None))
        mechanisms: dict[str, Callable[[Any, torch.Tensor, int, int], int]] = {
            "serial": serial,
            "padded": padded,
            "hf-cb": hf_continuous,
            "engine": engine(loaded),
        }
        for name in args.mechanisms.split(","):
            rate, cpu = measure(mechanisms[name], name, loaded.model, ids, args)
            print(
                f"{dtype:<9} {name:<7} {rate:>7.1f} tok/s {cpu:>6.1f} CPU s  load {os.getloadavg()[0]:.2f}", flush=True
            )


def measure(
    run: Callable[[Any, torch.Tensor, int, int], int], name: str, model: Any, ids: torch.Tensor, args: Any
) -> tuple[float, float]:
    def warm_and_time() -> tuple[float, float]:
        context = torch.no_grad() if name == "hf-cb" else torch.inference_mode()  # hf-cb writes its own tensors
        with context:
            n = 2 if name == "serial" else args.requests  # serial: tokens/s does not depend on N
            run(model, ids, n, 4)  # warm-up with the same N: first-call costs (and hf-cb's sizing) out of the figure
            return timed(lambda: run(model, ids, n, args.tokens))

    return on_own_thread(warm_and_time)


def on_own_thread(work: Callable[[], T]) -> T:
    """Torch work on a thread that ends with it, as the server loads its model (see app.model.runtime):
    OpenMP workers of a finished mechanism must not slow down the next one."""
    results: list[T] = []
    thread = threading.Thread(target=lambda: results.append(work()))
    thread.start()
    thread.join()
    if not results:
        raise SystemExit("a mechanism failed; see the traceback above")
    return results[0]


if __name__ == "__main__":
    main()
