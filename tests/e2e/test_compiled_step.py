"""`engine.compile` on the real embedded model: the compiled decoding step writes what the
eager one writes, at every batch size, without compiling again after start-up.

The graphs are compiled once per test session into the repository's `.cache/torch-compile`
(the default `engine.compile_cache_dir`), so later builds here and in `make test-compiled`
find them there. Speed is `make bench`'s business, not these tests'.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import torch

from app.core.config import EngineSettings
from app.engine.batching import BatchingEngine
from app.engine.compiled_step import compile_decoding
from app.engine.opaque_ops import OpaqueLinear
from app.engine.types import GenerationRequest, LoadedModel, SamplingParams
from app.model.loader import load_model
from app.model.runtime import load_engine_model
from tests.conftest import LiveServer, make_settings, poll

PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The capital of France is",
    "def fibonacci(n):",
    "Write a long essay about mountains. Mountains are the oldest witnesses of the earth and",
    "List three colours:",
]


@pytest.fixture(scope="module")
def progress_seen() -> list[str]:
    return []


@pytest.fixture(scope="module")
def compiled(model_dir: Path, progress_seen: list[str]) -> LoadedModel:
    settings = make_settings(model_dir, engine={"compile": True})
    return load_engine_model(settings, progress_seen.append)


@pytest.fixture(scope="module")
def eager(model_dir: Path) -> LoadedModel:
    return load_engine_model(make_settings(model_dir, engine={"compile": False}), lambda _: None)


def requests(loaded: LoadedModel, max_tokens: int = 20) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            request_id=f"r{i}",
            prompt_ids=tuple(loaded.tokenizer(prompt)["input_ids"]),
            params=SamplingParams(max_tokens=max_tokens + 4 * i, temperature=0.0),
        )
        for i, prompt in enumerate(PROMPTS)
    ]


def answers(loaded: LoadedModel, max_batch_size: int) -> tuple[list[str], list[str]]:
    """Each request alone, then all at once (they join together and leave one by one, as their
    lengths differ): the texts of both rounds."""
    engine = BatchingEngine(loaded, EngineSettings(max_batch_size=max_batch_size))
    engine.start()

    async def collect(request: GenerationRequest) -> str:
        return "".join([chunk.text async for chunk in engine.submit(request)])

    async def scenario() -> tuple[list[str], list[str]]:
        try:
            alone = [await collect(request) for request in requests(loaded)]
            together = await asyncio.gather(
                *(collect(replace(r, request_id=f"{r.request_id}b")) for r in requests(loaded))
            )
            return alone, list(together)
        finally:
            await engine.shutdown(0)

    return asyncio.run(scenario())


def test_start_up_reports_compiling_and_the_model_keeps_its_own_kernels(
    compiled: LoadedModel, progress_seen: list[str]
) -> None:
    assert compiled.decoder is not None
    assert progress_seen[-1] == "compiling the decoding step"
    opaque = [module for module in compiled.model.modules() if isinstance(module, OpaqueLinear)]
    assert len(opaque) == 7 * 30 + 1  # every packed Linear: 7 a layer, and the head
    assert compiled.model.config._attn_implementation == "llm_engine"
    assert any(Path(".cache/torch-compile").rglob("*.py"))  # inductor's kernels, kept for the next start


def test_compiled_steps_write_what_eager_steps_write_alone_and_in_a_batch(
    compiled: LoadedModel, eager: LoadedModel
) -> None:
    expected_alone, expected_together = answers(eager, max_batch_size=8)
    # Joining, leaving and every batch size from 1 to 5 are served by the warm-up's one graph.
    with torch.compiler.set_stance("fail_on_recompile"):
        alone, together = answers(compiled, max_batch_size=8)
    assert alone == expected_alone
    assert together == expected_together == expected_alone
    assert all(alone)


def test_a_model_whose_attention_is_not_supported_is_served_eagerly(
    tmp_path: Path, model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = load_model(make_settings(model_dir).model, None)
    loaded.model.config.sliding_window = 64
    loaded.model.config.use_sliding_window = True
    with caplog.at_level(logging.WARNING, logger="app.engine.compiled_step"):
        result = compile_decoding(loaded, tmp_path, lambda _: None)
    assert result is loaded and result.decoder is None
    assert [r.reason for r in caplog.records if hasattr(r, "reason")] == ["sliding-window attention"]  # type: ignore[attr-defined]
    assert not any(isinstance(module, OpaqueLinear) for module in loaded.model.modules())


@pytest.fixture(scope="module")
def compiled_server(model_dir: Path, compiled: LoadedModel) -> Iterator[tuple[LiveServer, list[str]]]:
    """A server with `engine.compile: true`, and the /health progress lines seen while it loaded."""
    settings = make_settings(model_dir, engine={"compile": True}, rate_limit={"enabled": False})
    live = LiveServer(settings).start()
    seen: list[str] = []
    with httpx.Client(base_url=live.url) as client:

        def loaded() -> bool:
            body = client.get("/health").json()
            seen.append(body.get("progress", ""))
            return bool(body["status"] != "loading")

        assert poll(loaded, timeout_s=300, interval_s=0.02)
    yield live, seen
    live.stop()


def test_health_says_loading_while_the_server_compiles_then_healthy(
    compiled_server: tuple[LiveServer, list[str]],
) -> None:
    live, seen = compiled_server
    assert "compiling the decoding step" in seen
    with live.client() as client:
        assert client.get("/health").json()["status"] == "healthy"
        assert client.get("/status").json()["model"]["compiled"] is True


def test_a_compiled_server_answers_as_the_eager_one(
    compiled_server: tuple[LiveServer, list[str]], client: httpx.Client
) -> None:
    live, _ = compiled_server
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Name three rivers of Europe."}],
        "max_tokens": 24,
        "temperature": 0,
    }
    with live.client() as compiled_client:
        compiled_answer = compiled_client.post("/v1/chat/completions", json=body).json()
    eager_answer = client.post("/v1/chat/completions", json=body).json()
    assert compiled_answer["choices"][0]["message"]["content"] == eager_answer["choices"][0]["message"]["content"]
    assert compiled_answer["usage"]["completion_tokens"] == 24
