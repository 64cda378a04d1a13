"""GenerationService on its own: single flight, what lands in the cache, output redaction across token
boundaries, and what each run adds to the metrics. A scripted engine, the real policy objects
(PIIGuard, LLMMetrics, ResponseCache), asyncio through anyio's pytest plugin."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

import pytest

from app.core.cache import ResponseCache
from app.core.config import PII_ENTITIES, PIISettings
from app.core.errors import EngineOverloaded, GenerationFailed, GenerationTimeout
from app.core.metrics import LLMMetrics
from app.core.pii import PIIGuard
from app.engine.types import SamplingParams
from app.services.generation import Completion, GenerationPolicy, GenerationService, cache_key
from tests.conftest import until
from tests.fakes import ScriptedEngine

pytestmark = pytest.mark.anyio

PROMPT = tuple(b"Tell me a story.")
GREEDY = SamplingParams(max_tokens=16, temperature=0.0)
REPLY = "Once upon a time there was a fox."
LEAKY = "Mail jane.roe@example.org or pay with 4111 1111 1111 1111 today."
REDACTED = "Mail [EMAIL] or pay with [CREDIT_CARD] today."


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Setup:
    engine: ScriptedEngine
    service: GenerationService
    metrics: LLMMetrics
    cache: ResponseCache[Completion]

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def rejected(self, reason: str) -> float:
        return self.sample("llm_requests_rejected_total", reason=reason)

    def tokens_generated(self) -> float:
        return self.sample("tokens_generated_total", model="m")

    def submitted(self) -> list[str]:
        return [request.request_id for request in self.engine.submitted]


def setup(engine: ScriptedEngine | None = None, patience_s: float = 360.0) -> Setup:
    engine = engine or ScriptedEngine(reply=lambda prompt: REPLY)
    metrics = LLMMetrics("m", PII_ENTITIES)
    cache: ResponseCache[Completion] = ResponseCache(16, 600)
    policy = GenerationPolicy(
        pii=PIIGuard(PIISettings(), on_redaction=metrics.count_redactions),
        metrics=metrics,
        cache=cache,
        flight_patience_s=patience_s,
    )
    return Setup(engine, GenerationService(engine, "m", 4096, policy), metrics, cache)


KEY = cache_key("m", PROMPT, GREEDY)


async def test_identical_requests_share_one_generation() -> None:
    s = setup(ScriptedEngine(reply=lambda prompt: REPLY, gate=asyncio.Event()))
    leader = await s.service.start("leader", PROMPT, GREEDY)
    follower = await s.service.start("follower", PROMPT, GREEDY)
    assert (leader.cached, follower.cached) == (False, True)
    runs = [asyncio.create_task(run.collect()) for run in (leader, follower)]
    await until(lambda: s.engine.running == 1)
    assert s.engine.gate is not None
    s.engine.gate.set()
    led, followed = await asyncio.gather(*runs)
    assert led.text == followed.text == REPLY
    assert (led.cached, followed.cached) == (False, True)
    assert s.submitted() == ["leader"]
    assert s.tokens_generated() == led.completion_tokens  # once, for the one generation
    assert s.sample("llm_prompt_tokens_total", model="m") == len(PROMPT)


async def test_when_the_leader_fails_the_follower_generates_alone() -> None:
    engine = ScriptedEngine(
        reply=lambda prompt: REPLY,
        gate=asyncio.Event(),
        fail_after_tokens=2,
        mid_stream_error=GenerationFailed("generation failed"),
        fails=lambda request: request.request_id == "leader",
    )
    s = setup(engine)
    leader = await s.service.start("leader", PROMPT, GREEDY)
    follower = await s.service.start("follower", PROMPT, GREEDY)
    leading = asyncio.create_task(leader.collect())
    following = asyncio.create_task(follower.collect())
    await until(lambda: s.engine.running == 1)  # the leader is at the gate, the follower waits for it
    engine.gate.set()  # type: ignore[union-attr]
    with pytest.raises(GenerationFailed):
        await leading
    completion = await following
    assert completion.text == REPLY
    assert s.submitted() == ["leader", "follower"]
    assert s.cache.flight(KEY) is None
    assert s.tokens_generated() == completion.completion_tokens  # the failed attempt finished nothing


async def test_when_the_leaders_client_leaves_the_follower_generates_alone() -> None:
    s = setup(ScriptedEngine(reply=lambda prompt: REPLY, gate=asyncio.Event(), gate_after_tokens=2))
    leader = await s.service.start("leader", PROMPT, GREEDY)
    follower = await s.service.start("follower", PROMPT, GREEDY)
    leading = asyncio.create_task(leader.collect())
    following = asyncio.create_task(follower.collect())
    await until(lambda: s.engine.running == 1)
    leading.cancel()  # the leader's client went away, mid-answer
    with pytest.raises(asyncio.CancelledError):
        await leading
    assert s.engine.aborted == ["leader"]
    s.engine.gate.set()  # type: ignore[union-attr]
    completion = await following
    assert completion.text == REPLY and s.submitted() == ["leader", "follower"]
    assert s.rejected("cancelled") == 1  # the leader's client, not the follower


async def test_a_follower_waits_at_most_its_patience_then_generates_alone() -> None:
    s = setup(ScriptedEngine(reply=lambda prompt: REPLY, gate=asyncio.Event(), gate_after_tokens=1), patience_s=0.05)
    leader = await s.service.start("leader", PROMPT, GREEDY)
    leading = asyncio.create_task(leader.collect())
    await until(lambda: s.engine.running == 1)  # the leader is held mid-answer
    follower = await s.service.start("follower", PROMPT, GREEDY)
    following = asyncio.create_task(follower.collect())
    await until(lambda: len(s.engine.submitted) == 2)  # its patience ran out: it generates alone
    assert s.cache.flight(KEY) is None  # later requests do not follow the slow leader either
    assert not leading.done()
    s.engine.gate.set()  # type: ignore[union-attr]
    led, followed = await asyncio.gather(leading, following)
    assert led.text == followed.text == REPLY
    assert s.cache.get(KEY) == replace(led, cached=True)  # the leader's answer still lands


async def test_a_successful_generation_lands_in_the_cache() -> None:
    s = setup()
    completion = await (await s.service.start("first", PROMPT, GREEDY)).collect()
    assert s.cache.get(KEY) == replace(completion, cached=True)
    generated = s.tokens_generated()

    hit = await s.service.start("second", PROMPT, GREEDY)
    assert hit.cached
    pieces = [text async for text in hit]
    assert pieces == [REPLY]  # replayed whole
    assert hit.completion == replace(completion, cached=True)
    assert s.submitted() == ["first"] and s.tokens_generated() == generated
    assert (s.cache.stats().hits, s.cache.stats().misses) == (1, 1)


async def test_a_failed_generation_is_not_cached() -> None:
    engine = ScriptedEngine(reply=lambda prompt: REPLY, fail_after_tokens=2, mid_stream_error=GenerationTimeout("slow"))
    s = setup(engine)
    with pytest.raises(GenerationTimeout):
        await (await s.service.start("first", PROMPT, GREEDY)).collect()
    assert s.cache.get(KEY) is None and s.cache.flight(KEY) is None
    engine.fail_after_tokens = None
    retry = await s.service.start("second", PROMPT, GREEDY)
    assert not retry.cached
    assert (await retry.collect()).text == REPLY and s.submitted() == ["first", "second"]


async def test_a_cancelled_generation_is_not_cached() -> None:
    s = setup()
    run = await s.service.start("first", PROMPT, GREEDY)
    async for _ in run:
        break  # the client read one piece and left
    await run.aclose()
    assert s.engine.aborted == ["first"]
    assert s.cache.get(KEY) is None and s.cache.flight(KEY) is None
    assert not (await s.service.start("second", PROMPT, GREEDY)).cached


async def test_an_admission_error_leaves_no_flight_behind() -> None:
    s = setup(ScriptedEngine(reply=lambda prompt: REPLY, fail_on_submit=EngineOverloaded("full")))
    with pytest.raises(EngineOverloaded):
        await s.service.start("refused", PROMPT, GREEDY)
    assert s.cache.flight(KEY) is None  # nobody will wait for a generation that never started
    s.engine.fail_on_submit = None
    after = await s.service.start("admitted", PROMPT, GREEDY)
    assert not after.cached and (await after.collect()).text == REPLY
    assert s.rejected("cancelled") == 0


async def test_sampled_requests_bypass_the_cache() -> None:
    s = setup()
    sampled = SamplingParams(max_tokens=16, temperature=0.8)
    for request_id in ("a", "b"):
        run = await s.service.start(request_id, PROMPT, sampled)
        assert not run.cached
        await run.collect()
    assert s.submitted() == ["a", "b"] and s.cache.stats().size == 0
    seeded = replace(sampled, seed=3)
    await (await s.service.start("c", PROMPT, seeded)).collect()
    assert (await s.service.start("d", PROMPT, seeded)).cached


@pytest.mark.parametrize("piece", [1, 2, 3, 4, 7])
async def test_output_redaction_never_leaks_across_token_boundaries(piece: int) -> None:
    """The e-mail and card number arrive over many tokens of `piece` characters each."""
    engine = ScriptedEngine(
        reply=lambda prompt: LEAKY, split=lambda text: [text[i : i + piece] for i in range(0, len(text), piece)]
    )
    s = setup(engine)
    run = await s.service.start("r", PROMPT, SamplingParams(max_tokens=1000, temperature=0.0))
    sent: list[str] = []
    async for text in run:
        sent.append(text)
        assert REDACTED.startswith("".join(sent)), sent  # what was sent is never taken back or different
    assert "".join(sent) == REDACTED and run.completion is not None and run.completion.text == REDACTED
    for secret in ("jane", "roe", "example", "4111", "1111"):
        assert not any(secret in text for text in sent), (secret, sent)
    assert len(sent) > 3  # the text around the PII still flowed as it came
    assert s.sample("llm_pii_redactions_total", entity="email") == 1
    assert s.sample("llm_pii_redactions_total", entity="credit_card") == 1


async def test_the_cache_keeps_the_redacted_answer() -> None:
    s = setup(ScriptedEngine(reply=lambda prompt: LEAKY))
    await (await s.service.start("first", PROMPT, GREEDY)).collect()
    assert (await (await s.service.start("second", PROMPT, GREEDY)).collect()).text == REDACTED


async def test_a_cancelled_run_is_counted_once() -> None:
    s = setup()
    run = await s.service.start("r", PROMPT, GREEDY)
    async for _ in run:
        break
    await run.aclose()
    await run.aclose()  # every layer closes what it holds: a second close adds nothing
    assert s.rejected("cancelled") == 1


async def test_a_run_closed_before_its_first_token_is_cancelled_and_aborted() -> None:
    s = setup(ScriptedEngine(reply=lambda prompt: REPLY, gate=asyncio.Event()))
    run = await s.service.start("r", PROMPT, GREEDY)
    collecting = asyncio.create_task(run.collect())
    await until(lambda: s.engine.running == 1)
    collecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await collecting
    assert s.engine.aborted == ["r"] and s.engine.running == 0
    assert s.rejected("cancelled") == 1


async def test_a_failed_run_is_no_cancellation_and_counts_at_most_once() -> None:
    """Where the failure is counted (the run, or the HTTP mapping that answers it) is the api layer's
    business; exactly once over HTTP is checked in tests/api/test_metrics.py."""
    engine = ScriptedEngine(reply=lambda prompt: REPLY, fail_after_tokens=2, mid_stream_error=GenerationTimeout("slow"))
    s = setup(engine)
    run = await s.service.start("r", PROMPT, GREEDY)
    with pytest.raises(GenerationTimeout):
        await run.collect()
    await run.aclose()
    assert s.rejected("cancelled") == 0
    assert s.rejected("timeout") <= 1


async def test_an_unexpected_failure_is_no_cancellation() -> None:
    s = setup(ScriptedEngine(reply=lambda prompt: REPLY, fail_after_tokens=2))
    with pytest.raises(RuntimeError):
        await (await s.service.start("r", PROMPT, GREEDY)).collect()
    assert s.rejected("cancelled") == 0


async def test_success_callbacks_run_before_the_iteration_ends_and_close_callbacks_once() -> None:
    s = setup()
    seen: list[str] = []

    async def on_success(completion: Completion) -> None:
        seen.append(f"success:{completion.text}")

    run = await s.service.start("r", PROMPT, GREEDY, on_success=on_success, on_close=lambda: seen.append("close"))
    async for _ in run:
        pass
    seen.append("iteration ended")
    await run.aclose()
    assert seen == [f"success:{REPLY}", "close", "iteration ended"]


async def test_no_success_callback_for_a_failed_or_cancelled_run() -> None:
    engine = ScriptedEngine(reply=lambda prompt: REPLY, fail_after_tokens=2, mid_stream_error=GenerationTimeout("slow"))
    s = setup(engine)
    seen: list[str] = []

    async def on_success(completion: Completion) -> None:
        seen.append("success")

    failing = await s.service.start("f", PROMPT, GREEDY, on_success=on_success, on_close=lambda: seen.append("close"))
    with pytest.raises(GenerationTimeout):
        await failing.collect()
    engine.fail_after_tokens = None
    cancelled = await s.service.start("c", PROMPT, GREEDY, on_success=on_success, on_close=lambda: seen.append("close"))
    await cancelled.aclose()
    assert seen == ["close", "close"]


async def test_max_tokens_is_capped_by_the_room_left_in_the_context() -> None:
    s = setup()
    long_prompt = tuple(b"x" * 4090)
    await (await s.service.start("r", long_prompt, SamplingParams(max_tokens=500, temperature=0.7))).collect()
    assert s.engine.submitted[-1].params.max_tokens == 6  # 4096 - 4090


async def test_time_metrics_are_observed_for_the_models_own_work_only() -> None:
    s = setup()
    await (await s.service.start("first", PROMPT, GREEDY)).collect()
    await (await s.service.start("hit", PROMPT, GREEDY)).collect()
    assert s.sample("llm_time_to_first_token_seconds_count", model="m") == 1
    assert s.sample("llm_time_per_output_token_seconds_count", model="m") == 1
