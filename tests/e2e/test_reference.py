"""Our greedy output equals two independent references over the same folder:
transformers' own `generate`, and LangChain's HuggingFacePipeline (langchain-huggingface)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import LiveServer

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Rivers flow into"]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def served(server: LiveServer) -> dict[str, str]:
    """The server's greedy answers, computed once for both references."""
    texts = {}
    with server.client() as client:
        for prompt in PROMPTS:
            body = {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
            response = client.post("/v1/generate", json=body)
            assert response.status_code == 200
            texts[prompt] = response.json()["generated_text"]
    return texts


def test_greedy_matches_transformers_generate(model_dir: Path, served: dict[str, str]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for prompt in PROMPTS:
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
        expected = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        assert served[prompt] == expected


def test_greedy_matches_langchain_huggingface_pipeline(model_dir: Path, served: dict[str, str]) -> None:
    from langchain_huggingface import HuggingFacePipeline

    llm = HuggingFacePipeline.from_model_id(
        model_id=str(model_dir),
        task="text-generation",
        device=-1,
        pipeline_kwargs={"max_new_tokens": MAX_TOKENS, "do_sample": False, "return_full_text": False},
    )
    for prompt in PROMPTS:
        assert served[prompt] == llm.invoke(prompt)
