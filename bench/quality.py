"""`python -m bench.quality`: what each `model.quantization` costs in answers and gains in speed.

The embedded model is loaded as the server loads it, once per setting, next to the float32
reference (`none`). For each of the chat prompts in bench/quality_prompts.json (rendered
with the model's chat template and the default system prompt, as the server does), the
reference writes `--tokens` greedy tokens; an end-of-turn token is an ordinary token here,
so every prompt gives the same number of positions. Per setting it prints:

  agree    greedy-token agreement: the fraction of all positions where the setting's
           argmax equals the reference's token, the setting fed the reference's own
           continuation (teacher forcing), so one early difference does not hide the rest
  prefix   the setting writing on its own: the mean share of each continuation that
           equals the reference's up to the first difference
  exact    prompts whose whole continuation equals the reference's
  ppl      perplexity on bench/quality_text.txt (windows of `--window` tokens)
  ms/tok   one decoding step at batch 1, mean over the prompts' greedy loops
  ms@16    one decoding step of 16 rows (the batching engine's case), median of `--steps`

Speeds are rough indications from an eager forward pass on a shared machine; `make bench`
measures the server.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DynamicCache

from app.core.config import ModelSettings
from app.engine.types import ChatMessage, LoadedModel
from app.model.chat_format import PromptBuilder
from app.model.loader import load_model

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models" / "smollm2-135m-instruct"
PROMPTS_FILE = Path(__file__).resolve().parent / "quality_prompts.json"
TEXT_FILE = Path(__file__).resolve().parent / "quality_text.txt"
SYSTEM_PROMPT = ROOT / "prompts" / "system.txt"
BATCH_ROWS = 16


@dataclass(frozen=True)
class Continuation:
    tokens: list[int]
    step_seconds: list[float]


@dataclass(frozen=True)
class Quality:
    setting: str
    agree: float
    prefix: float
    exact: int
    prompts: int
    perplexity: float
    ms_per_token: float
    ms_per_step_16: float


def load(setting: str) -> LoadedModel:
    return load_model(ModelSettings(name=str(MODEL_DIR), device="cpu", quantization=setting), None)  # type: ignore[arg-type]


def chat_prompts(loaded: LoadedModel, limit: int | None) -> list[tuple[int, ...]]:
    builder = PromptBuilder(loaded.tokenizer, loaded.context_length, SYSTEM_PROMPT.read_text(encoding="utf-8").strip())
    texts: list[str] = json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))[:limit]
    return [builder.build_chat([], [ChatMessage(role="user", content=text)], reserve=64).prompt_ids for text in texts]


@torch.inference_mode()
def greedy(loaded: LoadedModel, prompt: tuple[int, ...], tokens: int) -> Continuation:
    """`tokens` argmax tokens after `prompt`, and how long each decoding step took."""
    cache = DynamicCache()
    logits = loaded.model(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True).logits
    produced: list[int] = []
    seconds: list[float] = []
    while True:
        produced.append(int(logits[0, -1].argmax()))
        if len(produced) == tokens:
            return Continuation(produced, seconds)
        started = time.perf_counter()
        step = torch.tensor([[produced[-1]]])
        logits = loaded.model(input_ids=step, past_key_values=cache, use_cache=True).logits
        seconds.append(time.perf_counter() - started)


@torch.inference_mode()
def forced_argmax(loaded: LoadedModel, prompt: tuple[int, ...], continuation: list[int]) -> list[int]:
    """The model's argmax at each continuation position, fed the given continuation."""
    ids = torch.tensor([[*prompt, *continuation]])
    logits = loaded.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    return [int(token) for token in logits.argmax(-1)]


@torch.inference_mode()
def perplexity(loaded: LoadedModel, window: int) -> float:
    ids = loaded.tokenizer(TEXT_FILE.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[start : start + window]])
        if chunk.shape[1] < 2:
            break
        logits = loaded.model(input_ids=chunk).logits[0, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum"))
        count += chunk.shape[1] - 1
    return float(torch.exp(torch.tensor(total / count)))


@torch.inference_mode()
def batch_step_ms(loaded: LoadedModel, prompt: tuple[int, ...], steps: int) -> float:
    """Median time of one decoding step of BATCH_ROWS rows (the same prompt in each)."""
    cache = DynamicCache()
    ids = torch.tensor([prompt] * BATCH_ROWS)
    logits = loaded.model(input_ids=ids, past_key_values=cache, use_cache=True).logits
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        logits = loaded.model(input_ids=logits[:, -1:].argmax(-1), past_key_values=cache, use_cache=True).logits
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def common_prefix(left: list[int], right: list[int]) -> int:
    for index, (a, b) in enumerate(zip(left, right, strict=True)):
        if a != b:
            return index
    return len(left)


def measure(
    setting: str, reference: list[Continuation], prompts: list[tuple[int, ...]], args: argparse.Namespace
) -> Quality:
    loaded = load(setting)
    greedy(loaded, prompts[0], 4)  # warm-up: first calls allocate and pick kernels
    agreeing = prefix = exact = 0
    step_seconds: list[float] = []
    for prompt, expected in zip(prompts, reference, strict=True):
        forced = forced_argmax(loaded, prompt, expected.tokens)
        agreeing += sum(a == b for a, b in zip(forced, expected.tokens, strict=True))
        own = greedy(loaded, prompt, args.tokens)
        step_seconds += own.step_seconds
        shared = common_prefix(own.tokens, expected.tokens)
        prefix += shared
        exact += shared == args.tokens
    positions = len(prompts) * args.tokens
    return Quality(
        setting=setting,
        agree=agreeing / positions,
        prefix=prefix / positions,
        exact=exact,
        prompts=len(prompts),
        perplexity=perplexity(loaded, args.window),
        ms_per_token=1000 * sum(step_seconds) / len(step_seconds),
        ms_per_step_16=batch_step_ms(loaded, prompts[0], args.steps),
    )


def table(rows: list[Quality]) -> str:
    lines = [
        "| quantization | agree | prefix | exact | ppl | ms/tok | ms@16 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.setting} | {row.agree:.1%} | {row.prefix:.1%} | {row.exact}/{row.prompts} "
            f"| {row.perplexity:.3f} | {row.ms_per_token:.1f} | {row.ms_per_step_16:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="bf16,fp16,int8", help="comma-separated model.quantization values")
    parser.add_argument("--tokens", type=int, default=64, help="greedy tokens per prompt")
    parser.add_argument("--prompts", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--window", type=int, default=512, help="perplexity window in tokens")
    parser.add_argument("--steps", type=int, default=16, help="decoding steps timed at 16 rows")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{value:.2f}' for value in os.getloadavg())}", flush=True)
    reference_model = load("none")
    prompts = chat_prompts(reference_model, args.prompts)
    reference = [greedy(reference_model, prompt, args.tokens) for prompt in prompts]
    del reference_model
    rows = [measure(setting, reference, prompts, args) for setting in ["none", *args.settings.split(",")]]
    print(table(rows))
    print(f"load average at end: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
