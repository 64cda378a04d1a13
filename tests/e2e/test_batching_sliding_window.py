"""Sliding-window attention (Gemma 2/3, Mistral-style) inside the shared, left-padded batch cache.

No sliding-window model is embedded, so a small randomly initialised Gemma 3 (window of 8
tokens, one full-attention layer among sliding ones) is saved next to the embedded tokenizer
and served by the real engine: every answer, 30 tokens long so that it runs far past the
window, must equal transformers' own `generate` alone, and be the same inside a batch.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

from app.core.config import EngineSettings
from app.engine.batching import BatchingEngine
from app.engine.types import GenerationRequest, LoadedModel, SamplingParams
from tests.conftest import engine_model

PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The capital of France is",
    "def fibonacci(n):",
    "Write a long essay about mountains. Mountains are the oldest witnesses of the earth and",
]
TOKENS = 30


@pytest.fixture(scope="module")
def sliding(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
        max_position_embeddings=512,
        initializer_range=0.2,  # wide logit margins: greedy choices far from ties (relative gap >= 4e-3)
        bos_token_id=tokenizer.bos_token_id or 0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    Gemma3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return engine_model(folder)


def reference(loaded: LoadedModel, prompt: str) -> str:
    inputs = loaded.tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        output = loaded.model.generate(**inputs, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False)
    text: str = loaded.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return text


def test_sliding_window_model_matches_generate_alone_and_in_a_batch(sliding: LoadedModel) -> None:
    params = SamplingParams(max_tokens=TOKENS, temperature=0.0, ignore_eos=True)
    requests = [
        GenerationRequest(f"s{i}", tuple(sliding.tokenizer(prompt)["input_ids"]), params)
        for i, prompt in enumerate(PROMPTS)
    ]

    async def scenario() -> tuple[list[str], list[str]]:
        engine = BatchingEngine(sliding, EngineSettings(max_batch_size=8))
        engine.start()

        async def text(request: GenerationRequest) -> str:
            return "".join([chunk.text async for chunk in engine.submit(request)])

        try:
            alone = [await text(request) for request in requests]
            together = await asyncio.gather(*(text(replace(r, request_id=f"{r.request_id}-b")) for r in requests))
            return alone, list(together)
        finally:
            await engine.shutdown(0)

    alone, together = asyncio.run(scenario())
    assert alone == [reference(sliding, prompt) for prompt in PROMPTS]
    assert together == alone
    assert all(len(sliding.tokenizer(text)["input_ids"]) > 8 for text in alone)  # each outran the window


def test_a_prompt_extending_a_finished_sequence_reuses_its_kv_and_matches_generate(sliding: LoadedModel) -> None:
    """The prefix cache with sliding windows: the follow-up prefills only its new tokens, past
    the window, after the cached KV of the first request's prompt and answer."""
    first = tuple(sliding.tokenizer(PROMPTS[3])["input_ids"])
    with torch.inference_mode():
        output = sliding.model.generate(
            torch.tensor([first]), max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False
        )
    follow_up = (*output[0].tolist(), *sliding.tokenizer(" And then?", add_special_tokens=False)["input_ids"])
    params = SamplingParams(max_tokens=TOKENS, temperature=0.0, ignore_eos=True)

    async def scenario() -> tuple[str, int, int]:
        engine = BatchingEngine(sliding, EngineSettings(prefix_cache_mb=16))
        engine.start()
        try:
            async for _ in engine.submit(GenerationRequest("first", first, params)):
                pass
            text = "".join([chunk.text async for chunk in engine.submit(GenerationRequest("next", follow_up, params))])
            stats = engine.stats().prefix_cache
            return text, stats.hits, stats.hit_tokens
        finally:
            await engine.shutdown(0)

    text, hits, hit_tokens = asyncio.run(scenario())
    assert (hits, hit_tokens) == (1, len(first) + TOKENS - 1)  # all but the answer's last token, never fed
    with torch.inference_mode():
        expected = sliding.model.generate(
            torch.tensor([follow_up]), max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False
        )
    assert text == sliding.tokenizer.decode(expected[0, len(follow_up) :], skip_special_tokens=True)
