"""`model.quantization` on the real model: the server starts with it and still answers sensibly.

Greedy output with quantized weights is not promised to equal float32's (bench.quality
measures how often it does), so these tests check the facts any sane answer shows.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from torch import nn

from app.core.config import ModelSettings
from app.model.loader import load_model
from app.model.quantization import Int8Linear
from tests.conftest import ServedProcess, free_port, served_env

QUESTIONS = {
    "What is the capital of France? Answer in one word.": "paris",
    "What is 2 + 2? Answer with the number only.": "4",
    "Name the planet we live on, in one word.": "earth",
}


@pytest.fixture(scope="module", params=["int8", "bf16"])
def quantized_server(
    request: pytest.FixtureRequest, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedProcess]:
    port = free_port()
    env = served_env(model_dir, APP__PORT=str(port), MODEL__QUANTIZATION=request.param, RATE_LIMIT__ENABLED="false")
    served = ServedProcess([sys.executable, "-m", "app"], env, tmp_path_factory.mktemp(request.param), port)
    served.wait_healthy()
    yield served
    served.stop()


def ask(client: httpx.Client, question: str) -> str:
    body = {"messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 24}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def test_server_reports_the_quantization_and_answers_greedily(quantized_server: ServedProcess) -> None:
    with quantized_server.client() as client:
        model = client.get("/status").json()["model"]
        expected_dtype = "bfloat16" if model["quantization"] == "bf16" else "float32"
        assert (model["quantization"], model["dtype"]) in {("int8", "float32"), ("bf16", "bfloat16")}
        assert model["dtype"] == expected_dtype
        for question, fact in QUESTIONS.items():
            assert fact in ask(client, question).lower(), question


def test_concurrent_requests_batch_through_the_quantized_model(quantized_server: ServedProcess) -> None:
    with quantized_server.client() as client, ThreadPoolExecutor(len(QUESTIONS)) as pool:
        answers = dict(zip(QUESTIONS, pool.map(lambda question: ask(client, question), QUESTIONS), strict=True))
    for question, fact in QUESTIONS.items():
        assert fact in answers[question].lower(), question


def test_int8_swaps_every_linear_layer_and_keeps_the_embeddings(model_dir: Path) -> None:
    loaded = load_model(ModelSettings(name=str(model_dir), device="cpu", quantization="int8"), None)
    modules = list(loaded.model.modules())
    assert not any(type(module) is nn.Linear for module in modules)
    assert sum(isinstance(module, Int8Linear) for module in modules) == 7 * 30 + 1  # 7 per layer, and lm_head
    assert loaded.model.get_input_embeddings().weight.dtype == torch.float32
    assert (loaded.dtype, loaded.quantization) == (torch.float32, "int8")
