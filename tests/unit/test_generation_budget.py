"""GenerationService and the token budget: who pays for shared answers, withdrawn choices and
a follower left to generate alone."""

from __future__ import annotations

import asyncio

import pytest

from app.core.cache import ResponseCache
from app.core.config import PII_ENTITIES, PIISettings
from app.core.errors import GenerationFailed, TokenRateLimited
from app.core.metrics import LLMMetrics
from app.core.pii import PIIGuard
from app.core.token_budget import KeyLimits, MemoryTokenBudget, Reservation
from app.core.usage import MemoryUsageStore
from app.engine.types import SamplingParams
from app.services.accounting import Accounting, Caller, UsageMeter
from app.services.generation import Choice, Completion, GenerationPolicy, GenerationService
from tests.conftest import until
from tests.fakes import ScriptedEngine

pytestmark = pytest.mark.anyio

PROMPT = tuple(b"Tell me a story.")  # 16 tokens
GREEDY = SamplingParams(max_tokens=24, temperature=0.0)  # a reserve of 40
REPLY = "Once upon a time there was a fox."  # 8 tokens: 24 used
CALLER = Caller("key:a", "a")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def service(engine: ScriptedEngine, per_minute: int) -> tuple[GenerationService, MemoryTokenBudget]:
    metrics = LLMMetrics("m", PII_ENTITIES)
    budget = MemoryTokenBudget(per_minute, {"a": KeyLimits(per_minute, 0)}, clock=lambda: 0.0, wall_clock=lambda: 0.0)
    policy = GenerationPolicy(
        pii=PIIGuard(PIISettings()),
        metrics=metrics,
        cache=ResponseCache[Completion](16, 600),
        accounting=Accounting(UsageMeter(MemoryUsageStore(lambda: 0.0), metrics), budget),
    )
    return GenerationService(engine, "m", 4096, policy, CALLER), budget


async def left(budget: MemoryTokenBudget) -> int:
    return int((await budget.headers(CALLER.identity, CALLER.key))["X-RateLimit-Remaining-Tokens"])


async def test_a_shared_answer_costs_the_follower_nothing() -> None:
    engine = ScriptedEngine(reply=lambda prompt: REPLY, gate=asyncio.Event())
    generation, budget = service(engine, 100)
    leader = await generation.start("leader", PROMPT, GREEDY)
    follower = await generation.start("follower", PROMPT, GREEDY)
    assert await left(budget) == 60  # the leader's reserve only
    runs = [asyncio.create_task(run.collect()) for run in (leader, follower)]
    await until(lambda: engine.running == 1)
    engine.gate.set()  # type: ignore[union-attr]
    await asyncio.gather(*runs)
    assert await left(budget) == 100 - 24


async def test_a_follower_left_to_generate_alone_pays_what_it_used() -> None:
    engine = ScriptedEngine(
        reply=lambda prompt: REPLY,
        gate=asyncio.Event(),
        fail_after_tokens=2,
        mid_stream_error=GenerationFailed("generation failed"),
        fails=lambda request: request.request_id == "leader",
    )
    generation, budget = service(engine, 100)
    leader = await generation.start("leader", PROMPT, GREEDY)
    follower = await generation.start("follower", PROMPT, GREEDY)
    leading = asyncio.create_task(leader.collect())
    following = asyncio.create_task(follower.collect())
    await until(lambda: engine.running == 1)
    engine.gate.set()  # type: ignore[union-attr]
    with pytest.raises(GenerationFailed):
        await leading
    await following
    assert await left(budget) == 100 - (16 + 2) - 24  # the failed leader's prompt and 2 tokens, the follower's own


async def test_choices_are_reserved_all_or_none_and_a_refused_request_is_charged_nothing() -> None:
    engine = ScriptedEngine(reply=lambda prompt: REPLY)
    generation, budget = service(engine, 70)
    sampled = SamplingParams(max_tokens=24, temperature=0.7)
    with pytest.raises(TokenRateLimited):
        await generation.start_choices("r", [Choice(PROMPT, sampled), Choice(PROMPT, sampled, counts_prompt=False)])
    assert engine.aborted == ["r"]  # the first choice was admitted, then withdrawn
    assert await left(budget) == 70


class WatchedBudget(MemoryTokenBudget):
    """Notes which generations the engine had aborted when each settle began."""

    def __init__(self, engine: ScriptedEngine) -> None:
        super().__init__(100, {}, clock=lambda: 0.0, wall_clock=lambda: 0.0)
        self._engine = engine
        self.aborted_at_settle: list[list[str]] = []

    async def settle(self, reservation: Reservation, used: int) -> None:
        self.aborted_at_settle.append(list(self._engine.aborted))
        await super().settle(reservation, used)


async def test_a_stream_closed_early_aborts_the_engine_before_settling() -> None:
    """Settling may wait on a shared store; the engine's abort must not wait for it."""
    engine = ScriptedEngine(reply=lambda prompt: REPLY, gate=asyncio.Event(), gate_after_tokens=1)
    budget = WatchedBudget(engine)
    metrics = LLMMetrics("m", PII_ENTITIES)
    policy = GenerationPolicy(
        pii=PIIGuard(PIISettings(redact_output=False)),  # each token passes at once, none held back
        metrics=metrics,
        accounting=Accounting(UsageMeter(MemoryUsageStore(lambda: 0.0), metrics), budget),
    )
    run = await GenerationService(engine, "m", 4096, policy, CALLER).start("early", PROMPT, GREEDY)
    async for _ in run:
        break  # the client left after the first token
    await run.aclose()
    assert budget.aborted_at_settle == [["early"]]
    assert await left(budget) == 100 - (16 + 1)
