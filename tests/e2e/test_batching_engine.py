"""The continuous-batching engine on the real embedded model, driven directly (no HTTP).

Behaviour only, no timing: requests share forward passes, outputs do not depend on the
company a request keeps, a request that leaves frees its slot by the next step, limits hold,
and an out-of-memory error shrinks the batch instead of failing everyone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch

from app.core.config import EngineSettings
from app.core.errors import EngineOverloaded, GenerationFailed, GenerationTimeout, QueueTimeout, ShuttingDown
from app.engine.batching import BatchingEngine
from app.engine.types import GenerationChunk, GenerationRequest, LoadedModel, SamplingParams
from tests.conftest import engine_model

T = TypeVar("T")
PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The capital of France is",
    "def fibonacci(n):",
    "Write a long essay about mountains. Mountains are the oldest witnesses of the earth and",
]
LONG = "Write a long essay about rivers."


@pytest.fixture(scope="module")
def loaded(model_dir: Path) -> LoadedModel:
    return engine_model(model_dir)


@dataclass
class Recorder:
    """The engine's batch observer: the size of every forward pass, in order."""

    sizes: list[int] = field(default_factory=list)

    def __call__(self, size: int) -> None:
        self.sizes.append(size)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(factory())


def request(
    loaded: LoadedModel, request_id: str, prompt: str, max_tokens: int = 12, **sampling: Any
) -> GenerationRequest:
    ids = tuple(loaded.tokenizer(prompt)["input_ids"])
    params = SamplingParams(max_tokens=max_tokens, **{"temperature": 0.0, **sampling})
    return GenerationRequest(request_id=request_id, prompt_ids=ids, params=params)


async def collect(chunks: AsyncIterator[GenerationChunk]) -> str:
    return "".join([chunk.text async for chunk in chunks])


async def first_text(chunks: AsyncIterator[GenerationChunk]) -> str:
    """Wait for the first chunk with text: the request is decoding."""
    while not (chunk := await anext(chunks)).text:
        pass
    return chunk.text


async def until(condition: Callable[[], bool], steps: int = 20_000) -> None:
    """Yield to the engine until the condition it must bring about holds (no wall-clock bound)."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the engine never got there")


def engine_for(loaded: LoadedModel, recorder: Recorder | None = None, **settings: Any) -> BatchingEngine:
    engine = BatchingEngine(loaded, EngineSettings(**settings), on_batch=recorder)
    engine.start()
    return engine


async def alone_then_together(engine: BatchingEngine, requests: list[GenerationRequest]) -> tuple[list[str], list[str]]:
    alone = [await collect(engine.submit(r)) for r in requests]
    together = await asyncio.gather(
        *(collect(engine.submit(replace(r, request_id=f"{r.request_id}-b"))) for r in requests)
    )
    return alone, list(together)


def test_greedy_output_is_the_same_alone_and_in_a_batch(loaded: LoadedModel) -> None:
    recorder = Recorder()
    engine = engine_for(loaded, recorder)

    async def scenario() -> tuple[list[str], list[str]]:
        try:
            return await alone_then_together(engine, [request(loaded, f"g{i}", p) for i, p in enumerate(PROMPTS)])
        finally:
            await engine.shutdown(0)

    alone, together = run(scenario)
    assert together == alone
    assert all(alone)
    assert max(recorder.sizes) == len(PROMPTS)  # the four shared forward passes


def test_requests_join_a_running_batch_and_match_their_solo_output(loaded: LoadedModel) -> None:
    """Joiners shorter and longer than the running sequence: padding on both sides of the join."""
    recorder = Recorder()
    engine = engine_for(loaded, recorder)
    joiners = [request(loaded, f"join{i}", prompt, max_tokens=16) for i, prompt in enumerate(PROMPTS)]

    async def scenario() -> tuple[list[str], list[str]]:
        try:
            solo = [await collect(engine.submit(r)) for r in [request(loaded, "solo", LONG, max_tokens=40), *joiners]]
            steps_alone = len(recorder.sizes)
            running = engine.submit(request(loaded, "running", LONG, max_tokens=40))
            head = await first_text(running)
            for _ in range(4):  # a few steps in: the running sequence is longer than some joiners
                head += (await anext(running)).text
            joined = await asyncio.gather(*(collect(engine.submit(r)) for r in joiners))
            rest = await collect(running)
            assert len(joiners) + 1 in recorder.sizes[steps_alone:]
            return solo, [head + rest, *joined]
        finally:
            await engine.shutdown(0)

    solo, joined = run(scenario)
    assert joined == solo


def test_each_request_keeps_its_own_sampling_parameters(loaded: LoadedModel) -> None:
    engine = engine_for(loaded)
    requests = [
        request(loaded, "seeded", PROMPTS[0], temperature=0.9, top_p=0.9, top_k=40, seed=7),
        request(loaded, "penalised", PROMPTS[2], repetition_penalty=1.5),
        request(loaded, "hot", PROMPTS[3], temperature=1.5, seed=11),
        request(loaded, "greedy", PROMPTS[2]),
    ]

    async def scenario() -> tuple[list[str], list[str]]:
        try:
            return await alone_then_together(engine, requests)
        finally:
            await engine.shutdown(0)

    alone, together = run(scenario)
    assert together == alone
    assert alone[1] != alone[3]  # the penalty changed that request's text, and only that one's


def test_a_stop_in_one_request_ends_only_that_one(loaded: LoadedModel) -> None:
    engine = engine_for(loaded)

    async def scenario() -> tuple[str, list[GenerationChunk], list[GenerationChunk]]:
        try:
            full = await collect(engine.submit(request(loaded, "full", PROMPTS[0])))
            stop = full.split()[2]
            stopped = engine.submit(request(loaded, "stopped", PROMPTS[0], stop=(stop,)))
            other = engine.submit(request(loaded, "other", PROMPTS[0]))
            chunks = await asyncio.gather(_chunks(stopped), _chunks(other))
            return stop, chunks[0], chunks[1]
        finally:
            await engine.shutdown(0)

    stop, stopped, other = run(scenario)
    assert stop not in "".join(c.text for c in stopped)
    assert stopped[-1].finish_reason == "stop"
    assert other[-1].finish_reason == "length" and other[-1].completion_tokens == 12


async def _chunks(chunks: AsyncIterator[GenerationChunk]) -> list[GenerationChunk]:
    return [chunk async for chunk in chunks]


def test_a_cancelled_request_frees_its_slot_by_the_next_step(loaded: LoadedModel) -> None:
    recorder = Recorder()
    engine = engine_for(loaded, recorder, max_batch_size=2)

    async def scenario() -> None:
        try:
            leaving = engine.submit(request(loaded, "leaving", LONG, max_tokens=500))
            staying = engine.submit(request(loaded, "staying", LONG, max_tokens=500))
            await asyncio.gather(first_text(leaving), first_text(staying))
            waiting = engine.submit(request(loaded, "waiting", PROMPTS[1], max_tokens=4))
            assert (engine.stats().queued, engine.stats().running) == (1, 2)
            await leaving.aclose()
            seen = len(recorder.sizes)
            assert await collect(waiting)  # got the freed slot while `staying` still runs
            assert 1 in recorder.sizes[seen : seen + 2]  # at most one more step with the leaver in it
            assert engine.stats().cancelled == 1 and engine.stats().running == 1
            assert await first_text(staying)
            await staying.aclose()
            await until(lambda: engine.stats().running == 0)
            assert engine.stats().cancelled == 2
        finally:
            await engine.shutdown(0)

    run(scenario)


def test_full_batch_and_full_queue_answer_overloaded_at_once(loaded: LoadedModel) -> None:
    engine = engine_for(loaded, max_batch_size=2, max_queue=1)

    async def scenario() -> None:
        try:
            running = [engine.submit(request(loaded, f"r{i}", LONG, max_tokens=500)) for i in range(2)]
            await asyncio.gather(*(first_text(r) for r in running))
            queued = engine.submit(request(loaded, "queued", PROMPTS[1], max_tokens=4))
            with pytest.raises(EngineOverloaded):
                engine.submit(request(loaded, "refused", PROMPTS[1], max_tokens=4))
            assert (engine.stats().queued, engine.stats().running) == (1, 2)
            for stream in running:
                await stream.aclose()
            assert await collect(queued)
        finally:
            await engine.shutdown(0)

    run(scenario)


def test_deadlines_in_the_queue_and_in_the_batch_stop_only_their_request(loaded: LoadedModel) -> None:
    clock = FakeClock()
    settings = EngineSettings(max_batch_size=1, queue_timeout_s=30, request_timeout_s=60)
    engine = BatchingEngine(loaded, settings, clock=clock)
    engine.start()

    async def scenario() -> None:
        try:
            first = engine.submit(request(loaded, "first", LONG, max_tokens=500))
            await first_text(first)
            queued = engine.submit(request(loaded, "queued", PROMPTS[1], max_tokens=4))
            clock.now += 31
            with pytest.raises(QueueTimeout):
                await collect(queued)
            assert await first_text(first)  # still generating
            clock.now += 30
            with pytest.raises(GenerationTimeout):
                await collect(first)
            assert await collect(engine.submit(request(loaded, "after", PROMPTS[1], max_tokens=4)))
        finally:
            await engine.shutdown(0)

    run(scenario)


def test_shutdown_cuts_running_requests_after_the_grace_and_refuses_new_ones(loaded: LoadedModel) -> None:
    engine = engine_for(loaded)

    async def scenario() -> None:
        running = engine.submit(request(loaded, "running", LONG, max_tokens=1000))
        await first_text(running)
        await engine.shutdown(0)
        with pytest.raises(ShuttingDown):
            await collect(running)
        with pytest.raises(ShuttingDown):
            engine.submit(request(loaded, "late", PROMPTS[1]))

    run(scenario)


class OutOfMemoryAbove:
    """The real model, but a forward pass with more rows than `rows` fails as CUDA would."""

    def __init__(self, model: Any, rows: int) -> None:
        self._model = model
        self.rows = rows
        self.failures = 0

    def __call__(self, **inputs: Any) -> Any:
        if inputs["input_ids"].shape[0] > self.rows:
            self.failures += 1
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return self._model(**inputs)


def with_model(loaded: LoadedModel, model: Any) -> LoadedModel:
    return replace(loaded, model=model, decoder=None)  # every step through `model`


def test_out_of_memory_shrinks_the_batch_and_every_request_completes(loaded: LoadedModel) -> None:
    reference = engine_for(loaded)
    flaky = OutOfMemoryAbove(loaded.model, rows=2)
    recorder = Recorder()
    engine = BatchingEngine(with_model(loaded, flaky), EngineSettings(max_batch_size=8), on_batch=recorder)
    engine.start()
    requests = [request(loaded, f"m{i}", p) for i, p in enumerate(PROMPTS)]

    async def scenario() -> tuple[list[str], list[str]]:
        try:
            alone = [await collect(reference.submit(r)) for r in requests]
            together = await asyncio.gather(*(collect(engine.submit(r)) for r in requests))
            return alone, list(together)
        finally:
            await reference.shutdown(0)
            await engine.shutdown(0)

    alone, together = run(scenario)
    assert together == alone
    assert flaky.failures > 0 and max(recorder.sizes) == 2


def test_out_of_memory_with_one_request_fails_that_request_only(loaded: LoadedModel) -> None:
    flaky = OutOfMemoryAbove(loaded.model, rows=0)
    engine = BatchingEngine(with_model(loaded, flaky), EngineSettings())
    engine.start()

    async def scenario() -> str:
        try:
            with pytest.raises(GenerationFailed):
                await collect(engine.submit(request(loaded, "doomed", PROMPTS[0])))
            flaky.rows = 1
            return await collect(engine.submit(request(loaded, "fine", PROMPTS[1])))
        finally:
            await engine.shutdown(0)

    assert run(scenario)


class FailsOnce:
    """The real model, but its next forward pass raises an unexpected error."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.armed = True

    def __call__(self, **inputs: Any) -> Any:
        if self.armed:
            self.armed = False
            raise RuntimeError("a bug in a forward pass")
        return self._model(**inputs)


def test_an_unexpected_error_fails_the_requests_in_the_step_and_the_engine_carries_on(loaded: LoadedModel) -> None:
    engine = BatchingEngine(with_model(loaded, FailsOnce(loaded.model)), EngineSettings())
    engine.start()

    async def scenario() -> str:
        try:
            with pytest.raises(GenerationFailed):
                await collect(engine.submit(request(loaded, "unlucky", PROMPTS[0])))
            assert engine.stats().running == 0
            return await collect(engine.submit(request(loaded, "next", PROMPTS[1])))
        finally:
            await engine.shutdown(0)

    assert run(scenario)
