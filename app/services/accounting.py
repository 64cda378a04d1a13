"""Who pays for a generation: the caller's token budget and the usage counted per key name."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from app.core.errors import RateLimited
from app.core.metrics import LLMMetrics
from app.core.token_budget import Reservation, TokenBudget
from app.core.usage import ANONYMOUS, UsageCounts, UsageStore


def _ignore_headers(headers: dict[str, str]) -> None:
    pass


@dataclass(frozen=True)
class Caller:
    """The client of one request, as the guard identified it."""

    identity: str
    """Whose token bucket pays: `key:<name>`, or `ip:<address>` without a key."""
    key: str | None = None
    """The API key's name; None without one."""
    publish: Callable[[dict[str, str]], None] = _ignore_headers
    """Where the token-budget headers go (the response of this request)."""

    @property
    def usage_name(self) -> str:
        return self.key or ANONYMOUS


class UsageMeter:
    """Counts usage in the store and in the per-key metrics, alike."""

    def __init__(self, store: UsageStore, metrics: LLMMetrics) -> None:
        self.store = store
        self._metrics = metrics
        self._writes: set[asyncio.Task[None]] = set()
        """Store writes under way; held here, as the loop keeps only weak references to tasks."""

    def record(self, key: str, counts: UsageCounts) -> None:
        """Counted in the metrics at once and in the store by a task of its own: the callers are
        sync callbacks (a run's close), and a shared store answers over the network."""
        write = asyncio.get_running_loop().create_task(self.store.add(key, counts))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        self._metrics.count_key_usage(key, counts.requests, counts.prompt_tokens, counts.completion_tokens)

    async def flush(self) -> None:
        """Until the writes begun so far have ended (a store's `add` never raises)."""
        if self._writes:
            await asyncio.wait(list(self._writes))

    async def read(self, key: str) -> tuple[UsageCounts, UsageCounts]:
        """(today, total), including what this replica recorded just before."""
        await self.flush()
        return await self.store.read(key)


@dataclass(frozen=True)
class Accounting:
    """App-wide: the token budget (None: no budget or quota configured) and the usage meter."""

    usage: UsageMeter
    budget: TokenBudget | None = None

    async def reserve(self, caller: Caller, tokens: int) -> Reservation | None:
        """Hold `tokens` of the caller's budget; a refusal is counted as rate limited and raised.
        The budget headers go out either way."""
        budget = self.budget
        if budget is None:
            return None
        try:
            return await budget.reserve(caller.identity, caller.key, tokens)
        except RateLimited:
            self.usage.record(caller.usage_name, UsageCounts(rate_limited=1))
            raise
        finally:
            caller.publish(await budget.headers(caller.identity, caller.key))

    async def free_ride(self, caller: Caller) -> Reservation | None:
        """A reservation of nothing (for a shared answer), settled with whatever it does use."""
        if self.budget is None:
            return None
        await self.publish_headers(caller)
        return self.budget.nothing(caller.identity, caller.key)

    async def publish_headers(self, caller: Caller) -> None:
        if self.budget is not None:
            caller.publish(await self.budget.headers(caller.identity, caller.key))

    async def settle(self, reservation: Reservation | None, used: int) -> None:
        if reservation is not None and self.budget is not None:
            await self.budget.settle(reservation, used)


@dataclass
class RequestTally:
    """The usage of one request, whose choices run separately: counted once all have ended,
    if one of them answered (a request that failed or was cancelled counts nothing)."""

    meter: UsageMeter
    key: str
    runs_left: int
    counts: UsageCounts = field(default_factory=UsageCounts)
    answered: int = 0
    cached: int = 0

    def answer(self, prompt_tokens: int, completion_tokens: int, cached: bool) -> None:
        self.counts += UsageCounts(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        self.answered += 1
        self.cached += cached

    def run_ended(self) -> None:
        self.runs_left -= 1
        if self.runs_left == 0 and self.answered:
            all_cached = self.cached == self.answered
            self.meter.record(self.key, self.counts + UsageCounts(requests=1, cached_requests=int(all_cached)))
