"""POST /v1/generate on the real model: shape, sampling controls, stops, usage, headers."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from transformers import AutoTokenizer

PROMPT = "The three primary colors are"


def generate(client: httpx.Client, **fields: object) -> dict[str, object]:
    response = client.post("/v1/generate", json={"prompt": PROMPT, "max_tokens": 12, **fields})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_response_shape_and_usage(client: httpx.Client, model_dir: Path) -> None:
    response = client.post("/v1/generate", json={"prompt": PROMPT, "max_tokens": 8, "temperature": 0})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "generated_text", "prompt", "model", "tokens_generated", "finish_reason", "cached", "usage", "request_id",
    }  # fmt: skip
    assert body["prompt"] == PROMPT
    assert body["model"] == "smollm2-135m-instruct"
    assert body["cached"] is False
    assert body["finish_reason"] == "length"
    assert body["tokens_generated"] == 8
    prompt_tokens = len(AutoTokenizer.from_pretrained(model_dir)(PROMPT)["input_ids"])
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 8, "total_tokens": prompt_tokens + 8}
    assert body["request_id"] == response.headers["x-request-id"]
    assert float(response.headers["x-process-time"]) > 0


def test_greedy_is_deterministic_and_top_k_1_is_greedy(client: httpx.Client) -> None:
    greedy = generate(client, temperature=0)["generated_text"]
    assert greedy and greedy == generate(client, temperature=0)["generated_text"]
    assert generate(client, temperature=1.0, top_k=1, seed=5)["generated_text"] == greedy
    assert generate(client, temperature=1.0, top_p=1e-6, seed=5)["generated_text"] == greedy


def test_seed_makes_sampling_reproducible(client: httpx.Client) -> None:
    first = generate(client, temperature=1.5, seed=1234, max_tokens=16)["generated_text"]
    assert first == generate(client, temperature=1.5, seed=1234, max_tokens=16)["generated_text"]
    others = {generate(client, temperature=1.5, seed=seed, max_tokens=16)["generated_text"] for seed in range(4)}
    assert len(others | {first}) > 1, "different seeds should sample different texts"


def test_repetition_penalty_changes_a_repetitive_greedy_text(client: httpx.Client) -> None:
    prompt = "one two one two one two one two"
    plain = client.post("/v1/generate", json={"prompt": prompt, "max_tokens": 12, "temperature": 0}).json()
    penalised = client.post(
        "/v1/generate", json={"prompt": prompt, "max_tokens": 12, "temperature": 0, "repetition_penalty": 2.0}
    ).json()
    assert plain["generated_text"] != penalised["generated_text"]


@pytest.mark.parametrize("as_list", [False, True])
def test_stop_text_ends_generation_and_is_never_returned(client: httpx.Client, as_list: bool) -> None:
    full = str(generate(client, temperature=0, max_tokens=24)["generated_text"])
    words = full.split()
    assert len(words) >= 4, full
    stop_word = words[len(words) // 2]
    stop = [stop_word, "\u2603never"] if as_list else stop_word
    body = generate(client, temperature=0, max_tokens=24, stop=stop)
    assert body["finish_reason"] == "stop"
    assert body["generated_text"] == full[: full.index(stop_word)]
    assert stop_word not in str(body["generated_text"])
