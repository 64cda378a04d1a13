"""`python -m bench.mechanisms`: the batching mechanisms compared in one process, without HTTP.

N requests of the bench prompt, `--tokens` greedy tokens each, through:
  serial    transformers `generate`, one request after another (what a plain server does)
  padded    one padded batch of all N through `generate` (no joining, no leaving)
  hf-cb     transformers' continuous batching, `generate_batch` (paged attention)
  engine    this server's BatchingEngine: all N submitted at once, streamed
Printed: output tokens/s (wall clock) and CPU seconds used, per mechanism and dtype.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from app.core.config import EngineSettings, ModelSettings
from app.llm.engine import BatchingEngine
from app.llm.loader import load_model
from app.llm.types import GenerationRequest, SamplingParams

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models" / "smollm2-135m-instruct"
PROMPT = "Once upon a time, in a small village by the sea,"


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


def engine(dtype: str) -> Callable[[Any, torch.Tensor, int, int], int]:
    loaded = load_model(ModelSettings(name=str(MODEL_DIR), dtype=dtype), None)  # type: ignore[arg-type]

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
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    print(f"{args.requests} requests x {args.tokens} tokens, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    for dtype in args.dtypes.split(","):
        model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=getattr(torch, dtype)).eval()
        mechanisms: dict[str, Callable[[Any, torch.Tensor, int, int], int]] = {
            "serial": serial,
            "padded": padded,
            "hf-cb": hf_continuous,
            "engine": engine(dtype),
        }
        for name in args.mechanisms.split(","):
            rate, cpu = measure(mechanisms[name], name, model, ids, args)
            print(
                f"{dtype:<9} {name:<7} {rate:>7.1f} tok/s {cpu:>6.1f} CPU s  load {os.getloadavg()[0]:.2f}", flush=True
            )


def measure(
    run: Callable[[Any, torch.Tensor, int, int], int], name: str, model: Any, ids: torch.Tensor, args: Any
) -> tuple[float, float]:
    context = torch.no_grad() if name == "hf-cb" else torch.inference_mode()  # hf-cb writes its own tensors
    with context:
        n = 2 if name == "serial" else args.requests  # serial: tokens/s does not depend on N
        run(model, ids, n, 4)  # warm-up with the same N: first-call costs (and hf-cb's sizing) out of the figure
        return timed(lambda: run(model, ids, n, args.tokens))


if __name__ == "__main__":
    main()
