"""Continuous batching: the one owner of the running batch, driven by the inference thread.

Each `iterate()` drops the sequences whose client left or whose deadline passed, runs one
decoding step for the whole running batch, then feeds one bounded prefill chunk of newly
admitted sequences, which join the batch as soon as their prompt is in. A sequence that
finishes leaves at once, its KV offered to the prefix cache; a prompt that begins like a
cached sequence (a chat's next turn) is prefilled alone from where the cached KV ends. On
an out-of-memory error the prefix cache is emptied first; if it held nothing, the batch is
halved (the rest is preempted and prefilled again later from its tokens) or, alone, the
one request fails.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch

from app.core.errors import GenerationFailed, GenerationTimeout
from app.engine.jobs import Job, MailItem
from app.engine.kv_batch import KVBatch
from app.engine.prefill import PrefillGroup, group_size
from app.engine.prefix_cache import PrefixCache
from app.engine.sampling import without_tokens
from app.engine.sequence import SequenceState
from app.engine.types import BatchObserver, LoadedModel, PrefixCacheStats

logger = logging.getLogger("app.engine.scheduler")

Outcome = Literal["finished", "cancelled", "failed", "timeout"]
_TIMEOUT_MESSAGE = "generation exceeded engine.request_timeout_s"


@dataclass(frozen=True)
class SchedulerLimits:
    max_batch_size: int
    request_timeout_s: float
    prefill_tokens: int = 256
    """Tokens (rows x columns) per prefill forward pass: bounds how long decoding pauses for it."""
    regrow_after_steps: int = 64
    """Clean decoding steps after which a batch limit lowered by an out-of-memory error grows by one."""
    prefix_cache_bytes: int = 0
    """KV of finished sequences kept for prompts that extend them; 0 keeps none."""
    prefix_min_tokens: int = 32
    """Shorter common prefixes are prefilled again: reusing them would cost the prompt its place in a group."""


@dataclass(eq=False)
class Slot:
    job: Job
    state: SequenceState
    deadline: float


@dataclass(frozen=True)
class Retired:
    """A request that left the scheduler; `last` is its final mail, sent once the engine's books show it gone."""

    job: Job
    outcome: Outcome
    last: MailItem | None = None


class Scheduler:
    def __init__(
        self,
        loaded: LoadedModel,
        limits: SchedulerLimits,
        clock: Callable[[], float],
        on_batch: BatchObserver | None = None,
    ) -> None:
        self._loaded = loaded
        self._limits = limits
        self._clock = clock
        self._on_batch = on_batch
        self._pending: deque[Slot] = deque()
        self._prefill: PrefillGroup | None = None
        self._prefilling: list[Slot | None] = []
        """Rows of the prefill group; None where the request left while its prompt was being fed."""
        self._running: list[Slot] = []
        self._kv = KVBatch.empty(0, loaded.device)
        self._prefixes = PrefixCache(limits.prefix_cache_bytes, limits.prefix_min_tokens)
        self._limit = limits.max_batch_size
        self._group_rows = limits.max_batch_size
        self._clean_steps = 0

    @property
    def active(self) -> int:
        prefilling = sum(slot is not None for slot in self._prefilling)
        return len(self._pending) + prefilling + len(self._running)

    def free_slots(self) -> int:
        return max(0, self._limit - self.active)

    def prefix_stats(self) -> PrefixCacheStats:
        return self._prefixes.stats()

    def admit(self, job: Job) -> None:
        state = SequenceState(self._loaded, job.request)
        self._pending.append(Slot(job, state, self._clock() + self._limits.request_timeout_s))

    def iterate(self) -> list[Retired]:
        """One decoding step and one prefill chunk; returns the requests that left."""
        retired = self._drop_gone()
        if self._running:
            retired += self._decode()
        if self._prefill is None:
            self._start_prefill()
        if self._prefill is not None:
            retired += self._feed_prefill(self._prefill)
        return retired

    def abandon(self) -> list[Job]:
        """Forget every active request (their mailboxes are the caller's to answer)."""
        jobs = [slot.job for slot in [*self._pending, *self._prefilling, *self._running] if slot is not None]
        self._pending.clear()
        self._prefill, self._prefilling, self._running = None, [], []
        self._kv = KVBatch.empty(0, self._loaded.device)
        return jobs

    def _drop_gone(self) -> list[Retired]:
        retired: list[Retired] = []
        now = self._clock()

        def gone(slot: Slot) -> bool:
            outcome = _leaving(slot, now)
            if outcome == "timeout":
                retired.append(Retired(slot.job, outcome, GenerationTimeout(_TIMEOUT_MESSAGE)))
            elif outcome is not None:
                retired.append(Retired(slot.job, outcome))
            return outcome is not None

        self._pending = deque(slot for slot in self._pending if not gone(slot))
        self._prefilling = [None if slot is None or gone(slot) else slot for slot in self._prefilling]
        if self._prefill is not None and not any(self._prefilling):
            self._prefill, self._prefilling = None, []
        keep = [row for row, slot in enumerate(self._running) if not gone(slot)]
        self._set_running(keep)
        return retired

    def _decode(self) -> list[Retired]:
        inputs = torch.tensor(
            [[slot.state.last_token] for slot in self._running], dtype=torch.long, device=self._loaded.device
        )
        try:
            logits = self._kv.forward(self._loaded.model, inputs, decoder=self._loaded.decoder)
        except torch.OutOfMemoryError:
            return self._shrink_after_oom()
        self._observe(len(self._running))
        self._regrow()
        rows = list(enumerate(self._running))
        keep, retired = _accept(rows, logits, self._loaded.eos_token_ids)
        self._remember_finished(self._kv, rows)
        self._set_running(keep)
        return retired

    def _start_prefill(self) -> None:
        room = min(self._limit - len(self._running), self._group_rows, len(self._pending))
        if room <= 0:
            return
        cached = self._prefixes.claim(self._pending[0].state.tokens)
        if cached is not None:
            slot = self._pending.popleft()
            self._prefilling = [slot]
            prefix = KVBatch.of_prefix(cached.layers, self._loaded.device)
            self._prefill = PrefillGroup.continuing(
                prefix, slot.state.tokens[cached.length :], self._limits.prefill_tokens
            )
            return
        # Prompts with a cached beginning go alone, after their cached KV: the group stops before one.
        room = next((i for i in range(1, room) if self._prefixes.usable(self._pending[i].state.tokens)), room)
        lengths = [len(self._pending[i].state.tokens) for i in range(room)]
        rows = group_size(lengths, self._limits.prefill_tokens, room)
        slots = [self._pending.popleft() for _ in range(rows)]
        self._prefilling = list(slots)
        self._prefill = PrefillGroup(
            [slot.state.tokens for slot in slots], self._limits.prefill_tokens, self._loaded.device
        )

    def _feed_prefill(self, group: PrefillGroup) -> list[Retired]:
        try:
            logits = group.step(self._loaded.model)
        except torch.OutOfMemoryError:
            return self._split_after_oom()
        self._observe(group.rows)
        if logits is None:
            return []
        live = [(row, slot) for row, slot in enumerate(self._prefilling) if slot is not None]
        keep, retired = _accept(live, logits, self._loaded.eos_token_ids)
        self._remember_finished(group.kv, live)
        group.kv.keep(keep)
        self._kv.extend(group.kv)
        self._running += [slot for row, slot in live if row in keep]
        self._prefill, self._prefilling = None, []
        return retired

    def _remember_finished(self, kv: KVBatch, rows: list[tuple[int, Slot]]) -> None:
        """Offer the KV of the sequences that just finished to the prefix cache: a next chat turn
        starts with their prompt and answer. It holds every token but the last, never fed."""
        if not self._prefixes.enabled or not kv.snapshots_rows:
            return
        for row, slot in rows:
            state = slot.state
            if state.finish_reason is None or kv.row_tokens(row) != len(state.tokens) - 1:
                continue
            try:
                self._prefixes.store(state.tokens[:-1], kv.row_bytes(row), partial(kv.row_snapshot, row))
            except torch.OutOfMemoryError:  # no room for the copy: the request is done all the same
                self._empty_prefix_cache()
                return

    def _set_running(self, keep: list[int]) -> None:
        self._kv.keep(keep)
        self._running = [self._running[row] for row in keep]

    def _empty_prefix_cache(self) -> bool:
        """Out of memory: the cached KV goes before any request does. False if there was none."""
        if not self._prefixes.clear():
            return False
        _release_memory(self._loaded.device)
        logger.warning("out of memory; the prefix cache was emptied")
        return True

    def _shrink_after_oom(self) -> list[Retired]:
        """Empty the prefix cache and step again; without one, halve the batch: the newer half
        waits to be prefilled again; alone, the request fails."""
        if self._empty_prefix_cache():
            return []
        _release_memory(self._loaded.device)
        if len(self._running) == 1:
            failed = self._fail(self._running[0])
            self._set_running([])
            return [failed]
        keep = len(self._running) // 2
        logger.warning("out of memory while decoding; batch limit lowered", extra={"batch_limit": keep})
        self._pending.extendleft(reversed(self._running[keep:]))
        self._set_running(list(range(keep)))
        self._limit, self._clean_steps = keep, 0
        return []

    def _split_after_oom(self) -> list[Retired]:
        """Empty the prefix cache and prefill the group again; without one, prefill fewer prompts
        at a time from now on; a prompt that fails alone fails its request."""
        live = [slot for slot in self._prefilling if slot is not None]
        self._prefill, self._prefilling = None, []
        if self._empty_prefix_cache():
            self._pending.extendleft(reversed(live))
            return []
        _release_memory(self._loaded.device)
        if len(live) == 1:
            return [self._fail(live[0])]
        self._group_rows, self._clean_steps = max(1, len(live) // 2), 0
        logger.warning("out of memory while prefilling; smaller groups", extra={"group_rows": self._group_rows})
        self._pending.extendleft(reversed(live))
        return []

    def _fail(self, slot: Slot) -> Retired:
        logger.error("out of memory with this request alone; it failed", extra={"request_id": slot.job.request_id})
        return Retired(slot.job, "failed", GenerationFailed("the server ran out of memory for this request"))

    def _regrow(self) -> None:
        self._clean_steps += 1
        if self._clean_steps >= self._limits.regrow_after_steps:
            self._clean_steps = 0
            self._limit = min(self._limits.max_batch_size, self._limit + 1)
            self._group_rows = min(self._limits.max_batch_size, self._group_rows + 1)

    def _observe(self, rows: int) -> None:
        if self._on_batch is None:
            return
        try:
            self._on_batch(rows)
        except Exception:  # observability never breaks generation
            logger.exception("batch observer failed")


def _leaving(slot: Slot, now: float) -> Outcome | None:
    if slot.job.cancelled:
        return "cancelled"
    if now > slot.deadline:
        return "timeout"
    return None


def _accept(
    rows: list[tuple[int, Slot]], logits: torch.Tensor, eos_ids: frozenset[int]
) -> tuple[list[int], list[Retired]]:
    """Each row's next token from its logits row, sent as text; the rows that go on, and the rest."""
    greedy = _GreedyChoices(logits, eos_ids)
    keep: list[int] = []
    retired: list[Retired] = []
    for row, slot in rows:
        state = slot.state
        token = state.choose(logits[row]) if state.needs_own_sampling else greedy.token(row, state.bans_eos)
        chunk = state.accept(token)
        if chunk.finish_reason is not None:
            retired.append(Retired(slot.job, "finished", chunk))
            continue
        keep.append(row)
        if chunk.text:
            slot.job.deliver(chunk)
    return keep, retired


class _GreedyChoices:
    """The argmax of every row at once, with and (only if a row asks) without the EOS tokens:
    one pass over the batch's logits instead of one per row."""

    def __init__(self, logits: torch.Tensor, eos_ids: frozenset[int]) -> None:
        self._logits = logits
        self._eos_ids = eos_ids
        self._plain: list[int] | None = None
        self._no_eos: list[int] | None = None

    def token(self, row: int, bans_eos: bool) -> int:
        if not bans_eos:
            if self._plain is None:
                self._plain = self._logits.argmax(dim=-1).tolist()
            return self._plain[row]
        if self._no_eos is None:
            self._no_eos = without_tokens(self._logits, self._eos_ids).argmax(dim=-1).tolist()
        return self._no_eos[row]


def _release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
