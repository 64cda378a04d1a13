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
  ms/tok   one decoding step at batch 1 (the first prompt, `--steps` steps)
  ms@16    one decoding step of 16 rows (the batching engine's case, `--steps` steps)

Speeds are measured after the quality, with every setting's model loaded, in `--rounds`
rounds that alternate the settings; each figure is the median step of its median round, so
that a burst of other work on the machine hits every setting alike. They are rough
indications from an eager forward pass on a shared machine; `make bench` measures the server.
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
class Quality:
    setting: str
    agree: float
    prefix: float
    exact: int
    prompts: int
    perplexity: float


@dataclass(frozen=True)
class Speed:
    ms_per_token: float
    ms_per_step_16: float


def load(setting: str) -> LoadedModel:
    return load_model(ModelSettings(name=str(MODEL_DIR), device="cpu", quantization=setting), None)


def chat_prompts(loaded: LoadedModel, limit: int | None) -> list[tuple[int, ...]]:
    builder = PromptBuilder(loaded.tokenizer, loaded.context_length, SYSTEM_PROMPT.read_text(encoding="utf-8").strip())
    texts: list[str] = json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))[:limit]
    return [builder.build_chat([], [ChatMessage(role="user", content=text)], reserve=64).prompt_ids for text in texts]


@torch.inference_mode()
def greedy(loaded: LoadedModel, prompt: tuple[int, ...], tokens: int) -> list[int]:
    """`tokens` argmax tokens after `prompt`; an end-of-turn token does not stop it."""
    cache = DynamicCache()
    logits = loaded.model(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True).logits
    produced: list[int] = []
    while True:
        produced.append(int(logits[0, -1].argmax()))
        if len(produced) == tokens:
            return produced
        step = torch.tensor([[produced[-1]]])
        logits = loaded.model(input_ids=step, past_key_values=cache, use_cache=True).logits


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
def step_ms(loaded: LoadedModel, prompt: tuple[int, ...], rows: int, steps: int) -> float:
    """Median time of one decoding step of `rows` rows (the same prompt in each)."""
    cache = DynamicCache()
    ids = torch.tensor([prompt] * rows)
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
    setting: str,
    loaded: LoadedModel,
    reference: list[list[int]],
    prompts: list[tuple[int, ...]],
    args: argparse.Namespace,
) -> Quality:
    agreeing = prefix = exact = 0
    for prompt, expected in zip(prompts, reference, strict=True):
        forced = forced_argmax(loaded, prompt, expected)
        agreeing += sum(a == b for a, b in zip(forced, expected, strict=True))
        own = greedy(loaded, prompt, args.tokens)
        shared = common_prefix(own, expected)
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
    )


def speeds(models: dict[str, LoadedModel], prompt: tuple[int, ...], args: argparse.Namespace) -> dict[str, Speed]:
    rounds: dict[str, list[tuple[float, float]]] = {setting: [] for setting in models}
    for _ in range(args.rounds):
        for setting, loaded in models.items():
            rounds[setting].append(
                (step_ms(loaded, prompt, 1, args.steps), step_ms(loaded, prompt, BATCH_ROWS, args.steps))
            )
    return {
        setting: Speed(statistics.median(one for one, _ in times), statistics.median(many for _, many in times))
        for setting, times in rounds.items()
    }


def table(rows: dict[str, Quality | None], speed: dict[str, Speed]) -> str:
    lines = [
        "| quantization | agree | prefix | exact | ppl | ms/tok | ms@16 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for setting, row in rows.items():
        quality = (
            "| - | - | - | -"
            if row is None
            else (f"| {row.agree:.1%} | {row.prefix:.1%} | {row.exact}/{row.prompts} | {row.perplexity:.3f}")
        )
        timing = speed[setting]
        lines.append(f"| {setting} {quality} | {timing.ms_per_token:.1f} | {timing.ms_per_step_16:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="bf16,fp16,int8", help="comma-separated model.quantization values")
    parser.add_argument("--tokens", type=int, default=64, help="greedy tokens per prompt")
    parser.add_argument("--prompts", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--window", type=int, default=512, help="perplexity window in tokens")
    parser.add_argument("--steps", type=int, default=32, help="decoding steps timed per round and batch size")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds, alternating the settings")
    parser.add_argument("--speed-only", action="store_true", help="skip the quality columns")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{value:.2f}' for value in os.getloadavg())}", flush=True)
    settings = ["none", *args.settings.split(",")]
    models = {setting: load(setting) for setting in settings}
    prompts = chat_prompts(models["none"], args.prompts)
    rows: dict[str, Quality | None] = dict.fromkeys(settings)
    if not args.speed_only:
        reference = [greedy(models["none"], prompt, args.tokens) for prompt in prompts]
        rows = {setting: measure(setting, models[setting], reference, prompts, args) for setting in settings}
    print(table(rows, speeds(models, prompts[0], args)))
    print(f"load average at end: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
