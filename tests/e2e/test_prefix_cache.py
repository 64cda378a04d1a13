"""The engine's prefix cache on the real embedded model: a chat's next turn reuses the KV of
the last one, and greedy answers are exactly those of an engine that prefills everything.

Behaviour only, no timing (`python -m bench.chat_turns` measures time to first token).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from app.core.config import EngineSettings
from app.engine.batching import BatchingEngine
from app.engine.types import ChatMessage, GenerationRequest, LoadedModel, SamplingParams
from app.model.chat_format import PromptBuilder
from app.model.runtime import read_system_prompt
from tests.conftest import LiveServer, engine_model, make_settings, metric_value

TOKENS = 24
CHATS = [
    ["Tell me about cats.", "And dogs?", "Which of the two suits a small flat?", "Sum it up in one line."],
    ["What is the capital of France?", "What river runs through it?", "Name a bridge over it.", "How old is it?"],
]


@pytest.fixture(scope="module")
def loaded(model_dir: Path) -> LoadedModel:
    return engine_model(model_dir)


@pytest.fixture(scope="module")
def prompts(loaded: LoadedModel, model_dir: Path) -> PromptBuilder:
    settings = make_settings(model_dir)
    return PromptBuilder(loaded.tokenizer, loaded.context_length, read_system_prompt(settings.model))


class Chats:
    """Chats on one engine: each turn of all of them sent at once, greedy answers."""

    def __init__(self, loaded: LoadedModel, prompts: PromptBuilder, prefix_cache_mb: int) -> None:
        self.engine = BatchingEngine(loaded, EngineSettings(prefix_cache_mb=prefix_cache_mb))
        self._prompts = prompts
        self.prompt_lengths: dict[str, int] = {}
        self.hit_tokens: list[int] = []
        """The engine's counter after each turn."""

    async def run(self, chats: Sequence[Sequence[str]]) -> list[list[str]]:
        """Each chat's answers; the engine is started here and shut down at the end."""
        self.engine.start()
        histories: list[list[ChatMessage]] = [[] for _ in chats]
        try:
            for turn in range(max(len(chat) for chat in chats)):
                asked = [(i, chat[turn]) for i, chat in enumerate(chats) if turn < len(chat)]
                answers = await asyncio.gather(*(self.ask(f"c{i}-t{turn}", histories[i], q) for i, q in asked))
                for (i, question), answer in zip(asked, answers, strict=True):
                    histories[i] += [ChatMessage("user", question), ChatMessage("assistant", answer)]
                self.hit_tokens.append(self.engine.stats().prefix_cache.hit_tokens)
        finally:
            await self.engine.shutdown(0)
        return [[m.content for m in history if m.role == "assistant"] for history in histories]

    async def ask(self, request_id: str, history: list[ChatMessage], question: str) -> str:
        ids = self._prompts.build_chat(history, [ChatMessage("user", question)], TOKENS).prompt_ids
        self.prompt_lengths[request_id] = len(ids)
        request = GenerationRequest(request_id, ids, SamplingParams(max_tokens=TOKENS, temperature=0.0))
        return "".join([chunk.text async for chunk in self.engine.submit(request)])


def test_chats_answer_the_same_with_and_without_the_prefix_cache(loaded: LoadedModel, prompts: PromptBuilder) -> None:
    cached, uncached = Chats(loaded, prompts, 256), Chats(loaded, prompts, 0)
    with_cache = asyncio.run(cached.run(CHATS))
    without = asyncio.run(uncached.run(CHATS))
    assert with_cache == without
    assert all(all(answers) for answers in with_cache)
    stats = cached.engine.stats().prefix_cache
    assert stats.hits == len(CHATS) * (len(CHATS[0]) - 1)  # every turn after the first, in both chats
    assert stats.entries == len(CHATS)  # each chat's newest turn replaced the one it extends
    first_prompts = sum(cached.prompt_lengths[f"c{i}-t0"] for i in range(len(CHATS)))
    assert cached.hit_tokens[0] == 0 and cached.hit_tokens[1] > first_prompts  # turn 1's prompts and answers
    assert uncached.engine.stats().prefix_cache.hits == 0 and uncached.hit_tokens[-1] == 0


def test_branches_from_one_cached_history_each_reuse_it_unchanged(loaded: LoadedModel, prompts: PromptBuilder) -> None:
    """Different follow-ups of the same history (a regenerated turn, say) on one engine: the
    cached KV they share is only ever read, so each answers as a fresh engine does."""
    trunk = ["Tell me about cats.", "And dogs?"]
    branches = [[*trunk, "Which one purrs?"], [*trunk, "Which one barks?"], [*trunk, "Which one purrs?"]]
    cached = Chats(loaded, prompts, 256)
    with_cache = asyncio.run(cached.run(branches))
    without = [asyncio.run(Chats(loaded, prompts, 0).run([branch]))[0] for branch in branches]
    assert with_cache == without
    assert with_cache[0] == with_cache[2]
    # Turn 1 of the three is one prompt: the first to finish caches it for the others' next turns.
    assert cached.engine.stats().prefix_cache.hits >= len(branches) * 2


def chat_turns(server: LiveServer, questions: list[str]) -> list[str]:
    session_id = f"test-{uuid.uuid4().hex}"
    answers: list[str] = []
    with server.client() as client:
        for question in questions:
            body = {
                "messages": [{"role": "user", "content": question}],
                "session_id": session_id,
                "max_tokens": TOKENS,
                "temperature": 0,
            }
            response = client.post("/v1/chat", json=body)
            assert response.status_code == 200, response.text
            answers.append(response.json()["message"]["content"])
    return answers


def hit_tokens(server: LiveServer) -> float:
    with server.client() as client:
        return metric_value(client, "llm_prefix_cache_hit_tokens_total")


def test_a_session_chat_over_http_reuses_its_turns_and_answers_the_same(model_dir: Path) -> None:
    servers = [
        LiveServer(make_settings(model_dir, rate_limit={"enabled": False}, engine={"prefix_cache_mb": mb}))
        for mb in (256, 0)
    ]
    try:
        for server in servers:
            server.start().wait_healthy()
        cached, uncached = servers
        assert chat_turns(cached, CHATS[0]) == chat_turns(uncached, CHATS[0])
        assert hit_tokens(cached) > 100
        assert hit_tokens(uncached) == 0
        with cached.client() as client:
            assert metric_value(client, "llm_prefix_cache_bytes") > 0
            assert metric_value(client, "llm_prefix_cache_hits_total") >= len(CHATS[0]) - 1
    finally:
        for server in servers:
            server.stop()


class OutOfMemoryOnce:
    """The real model, but once armed its next prefill (several columns) or decoding step (one)
    fails as CUDA would when it runs out of memory."""

    def __init__(self, model: Any, during: str) -> None:
        self._model = model
        self._during = during
        self.armed = False

    def __call__(self, **inputs: Any) -> Any:
        decoding = inputs["input_ids"].shape[1] == 1
        if self.armed and decoding == (self._during == "decode"):
            self.armed = False
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return self._model(**inputs)


@pytest.mark.parametrize("during", ["prefill", "decode"])
def test_out_of_memory_empties_the_prefix_cache_before_it_touches_a_request(
    loaded: LoadedModel, prompts: PromptBuilder, during: str
) -> None:
    flaky = OutOfMemoryOnce(loaded.model, during)
    chats = Chats(replace(loaded, model=flaky, decoder=None), prompts, 256)  # every step through `flaky`
    first, second = CHATS[0][:2]

    async def scenario() -> list[str]:
        chats.engine.start()
        try:
            answer = await chats.ask("t0", [], first)
            assert chats.engine.stats().prefix_cache.entries == 1
            flaky.armed = True
            history = [ChatMessage("user", first), ChatMessage("assistant", answer)]
            return [answer, await chats.ask("t1", history, second)]
        finally:
            await chats.engine.shutdown(0)

    answers = asyncio.run(scenario())
    assert not flaky.armed  # the failure happened
    assert answers == asyncio.run(Chats(loaded, prompts, 0).run([[first, second]]))[0]
    stats = chats.engine.stats().prefix_cache
    assert stats.hits == 1 and stats.entries == 1  # emptied, then the second turn's sequence was kept
