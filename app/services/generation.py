"""The one path from a prompt to a completion, shared by every endpoint.

`GenerationService.start` applies, in order: the response cache (a hit replays the stored
answer; an identical request already running is joined, not repeated), the caller's token
budget (only for the model's own work), admission to the engine, PII redaction of the output
stream, the LLM metrics and the caller's usage. The input is checked before,
by `check_prompt_size` and `check_input`, so the model, the cache key and the logs only see
redacted text.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from app.core.cache import Cache, Seat
from app.core.errors import PromptTooLong
from app.core.metrics import LLMMetrics
from app.core.pii import PIIGuard
from app.core.token_budget import Reservation
from app.engine.types import Engine, FinishReason, GenerationChunk, GenerationRequest, SamplingParams
from app.services.accounting import Accounting, Caller, RequestTally

logger = logging.getLogger("app.generation")


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


OnSuccess = Callable[[Completion], Awaitable[None]]
Chunks = AsyncIterator[GenerationChunk]


@dataclass(frozen=True)
class GenerationPolicy:
    """What the app applies to every generation; built once per app from its settings."""

    pii: PIIGuard
    metrics: LLMMetrics
    cache: Cache[Completion] | None = None
    cache_deterministic_only: bool = True
    log_prompts: bool = False
    flight_patience_s: float = 360.0
    """How long an identical request waits for the running one before generating alone."""
    max_prompt_chars: int | None = None
    """Longest prompt (or total of a chat turn's new messages) accepted; None: no limit."""
    accounting: Accounting | None = None
    """Token budgets and usage per caller; None: neither."""

    def cacheable(self, params: SamplingParams) -> bool:
        return self.cache is not None and (
            not self.cache_deterministic_only or params.greedy or params.seed is not None
        )


@dataclass(frozen=True)
class Choice:
    """One of a request's generations: its prompt and sampling parameters."""

    prompt_ids: tuple[int, ...]
    params: SamplingParams
    log_prompt: str | None = None
    """The prompt as logged (when prompts are logged at all)."""
    counts_prompt: bool = True
    """Whether the prompt counts in the request's usage (once per prompt, however many choices)."""


def choice_request_id(request_id: str, index: int) -> str:
    """The engine's id of one choice: the request's own id for the first, suffixed for the others."""
    return request_id if index == 0 else f"{request_id}.{index}"


def cache_key(model: str, prompt_ids: Sequence[int], params: SamplingParams) -> str:
    """Stable across processes: the model, the final prompt's tokens and every sampling field."""
    material = {"model": model, "prompt_ids": list(prompt_ids), "params": asdict(params)}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


class GenerationRun:
    """One admitted generation. Iterate it for text deltas; afterwards `completion` is set.

    `on_success` callbacks run before the iteration ends, so a chat turn is committed before
    the client hears "done"; closing the run early aborts the generation and commits nothing,
    and counts as `cancelled` in llm_requests_rejected_total. An error raised by the run is
    counted where it is answered (app.api), not here.
    """

    def __init__(
        self,
        chunks: Chunks,
        *,
        cached: bool = False,
        on_success: Sequence[OnSuccess] = (),
        on_close: Sequence[Callable[[], None]] = (),
        metrics: LLMMetrics | None = None,
        log_fields: dict[str, Any] | None = None,
        log_output: Callable[[str], str] | None = None,
    ) -> None:
        self._chunks = chunks
        self.cached = cached
        """Answered without the model's own work (a cache hit or a shared generation)."""
        self._on_success = list(on_success)
        self._on_close = list(on_close)
        self._metrics = metrics
        self._log_fields = log_fields or {}
        self._log_output = log_output
        self._failed = False
        self._closed = False
        self.completion: Completion | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        text_parts: list[str] = []
        started = time.perf_counter()
        try:
            async for chunk in self._chunks:
                if chunk.text:
                    text_parts.append(chunk.text)
                    yield chunk.text
                if chunk.finish_reason is not None:
                    completion = Completion(
                        text="".join(text_parts),
                        finish_reason=chunk.finish_reason,
                        prompt_tokens=chunk.prompt_tokens,
                        completion_tokens=chunk.completion_tokens,
                        cached=self.cached,
                    )
                    for callback in self._on_success:
                        await callback(completion)
                    self.completion = completion
                    self._log(completion, time.perf_counter() - started)
        except Exception:
            self._failed = True  # a failure, not a client that left
            raise
        finally:
            await self.aclose()

    async def collect(self) -> Completion:
        async for _ in self:
            pass
        assert self.completion is not None, "engine stream ended without a finish chunk"
        return self.completion

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()
        if self.completion is None and not self._failed and self._metrics is not None:
            self._metrics.reject("cancelled")
        for callback in self._on_close:
            callback()

    async def withdraw(self) -> None:
        """Close a run whose request failed as a whole (a sibling was not admitted): the
        request's own error is what gets counted, not a cancellation, and nothing is charged."""
        self._failed = True
        if isinstance(self._chunks, _ModelStream):
            self._chunks.forgive()
        await self.aclose()

    def _log(self, completion: Completion, duration_s: float) -> None:
        fields = {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "finish_reason": completion.finish_reason,
            "cached": completion.cached,
            "duration_s": round(duration_s, 4),
            **self._log_fields,
        }
        if self._log_output is not None:
            fields["output"] = self._log_output(completion.text)
        logger.info("generation finished", extra=fields)


class GenerationService:
    def __init__(
        self,
        engine: Engine,
        model_name: str,
        context_length: int,
        policy: GenerationPolicy,
        caller: Caller | None = None,
    ) -> None:
        self._engine = engine
        self._model_name = model_name
        self._context_length = context_length
        self._policy = policy
        self._caller = caller
        """Who pays; None: nobody is charged or counted."""

    def check_prompt_size(self, chars: int, param: str) -> None:
        """PromptTooLong (413) if `chars` characters of input are over the limit."""
        limit = self._policy.max_prompt_chars
        if limit is not None and chars > limit:
            raise PromptTooLong(f"{param} has {chars} characters; the limit is {limit}", param=param)

    def check_input(self, text: str, param: str) -> str:
        """The text the model may see (PII redacted), or PIIBlocked in block mode."""
        return self._policy.pii.check_input(text, param)

    async def start_choices(self, request_id: str, choices: Sequence[Choice]) -> list[GenerationRun]:
        """One run per choice under `choice_request_id`, admitted all or none: if one cannot be
        admitted, those already admitted are closed and the error is raised."""
        runs: list[GenerationRun] = []
        tally = self._tally(len(choices))
        try:
            for index, choice in enumerate(choices):
                run_id = choice_request_id(request_id, index)
                runs.append(await self._start(run_id, choice, tally))
        except BaseException:
            for run in runs:
                await run.withdraw()
            raise
        return runs

    async def start(
        self,
        request_id: str,
        prompt_ids: tuple[int, ...],
        params: SamplingParams,
        *,
        log_prompt: str | None = None,
        on_success: OnSuccess | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> GenerationRun:
        """Admit a generation (engine errors such as overloaded, and an exhausted token budget,
        are raised here, at once)."""
        choice = Choice(prompt_ids, params, log_prompt)
        return await self._start(request_id, choice, self._tally(1), on_success=on_success, on_close=on_close)

    async def _start(
        self,
        request_id: str,
        choice: Choice,
        tally: RequestTally | None,
        *,
        on_success: OnSuccess | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> GenerationRun:
        prompt_ids, params, log_prompt = choice.prompt_ids, choice.params, choice.log_prompt
        room = max(1, self._context_length - len(prompt_ids))
        if params.max_tokens > room:
            params = replace(params, max_tokens=room)
        request = GenerationRequest(request_id=request_id, prompt_ids=prompt_ids, params=params)
        policy = self._policy
        successes = [on_success] if on_success else []
        closes = [on_close] if on_close else []
        if tally is not None:
            successes.append(_counter(tally, choice.counts_prompt))
            closes.append(tally.run_ended)
        cache = policy.cache
        if cache is None or not policy.cacheable(params):
            return self._run(await self._generate(request, await self._reserve(request)), successes, closes, log_prompt)

        seat = await cache.board(cache_key(self._model_name, prompt_ids, params))
        if seat.answer is not None:
            await self._publish_budget()
            return self._run(_replay(seat.answer), successes, closes, log_prompt, cached=True)
        if not seat.leads:
            follow = self._follow(seat, request, await self._free_ride())
            return self._run(follow, successes, [seat.leave, *closes], log_prompt, cached=True)
        try:
            chunks = await self._generate(request, await self._reserve(request))
        except BaseException:
            seat.leave()  # nobody may wait for a generation that never started
            raise

        async def land(completion: Completion) -> None:
            await seat.land(replace(completion, cached=True))

        return self._run(chunks, [land, *successes], [seat.leave, *closes], log_prompt)

    def _run(
        self,
        chunks: Chunks,
        on_success: list[OnSuccess],
        on_close: list[Callable[[], None]],
        log_prompt: str | None,
        cached: bool = False,
    ) -> GenerationRun:
        pii = self._policy.pii
        logged = self._policy.log_prompts
        return GenerationRun(
            chunks,
            cached=cached,
            on_success=on_success,
            on_close=on_close,
            metrics=self._policy.metrics,
            log_fields={"prompt": pii.for_log(log_prompt)} if logged and log_prompt is not None else None,
            log_output=pii.for_log if logged else None,
        )

    def _tally(self, runs: int) -> RequestTally | None:
        accounting, caller = self._policy.accounting, self._caller
        if accounting is None or caller is None:
            return None
        return RequestTally(accounting.usage, caller.usage_name, runs)

    async def _reserve(self, request: GenerationRequest) -> Reservation | None:
        """Hold the most this generation can use: its prompt and max_tokens (already capped)."""
        accounting, caller = self._policy.accounting, self._caller
        if accounting is None or caller is None:
            return None
        return await accounting.reserve(caller, len(request.prompt_ids) + request.params.max_tokens)

    async def _free_ride(self) -> Reservation | None:
        accounting, caller = self._policy.accounting, self._caller
        return await accounting.free_ride(caller) if accounting is not None and caller is not None else None

    async def _publish_budget(self) -> None:
        accounting, caller = self._policy.accounting, self._caller
        if accounting is not None and caller is not None:
            await accounting.publish_headers(caller)

    async def _generate(self, request: GenerationRequest, reservation: Reservation | None) -> _ModelStream:
        """Submit now, so that admission errors surface before any response starts. Once the
        engine has the request its prompt is charged, plus every token it produces; the rest
        of the reservation is returned when the stream closes, however it ends."""
        accounting = self._policy.accounting
        settle: Callable[[int], Awaitable[None]] | None = None
        if accounting is not None and reservation is not None:
            settle = functools.partial(accounting.settle, reservation)
        try:
            chunks = self._engine.submit(request)
        except BaseException:
            if settle is not None:
                await settle(0)
            raise
        return _ModelStream(chunks, self._policy, len(request.prompt_ids), settle)

    async def _follow(
        self, seat: Seat[Completion], request: GenerationRequest, reservation: Reservation | None
    ) -> Chunks:
        """Wait for the identical request already running (here or on another replica); if it
        does not land (its client left, it failed, or it took too long), generate alone."""
        completion = await seat.wait(self._policy.flight_patience_s)
        if completion is not None:
            yield _final_chunk(completion)
            return
        own = await self._generate(request, reservation)
        try:
            async for chunk in own:
                yield chunk
        finally:
            await own.aclose()


class _ModelStream(AsyncIterator[GenerationChunk]):
    """The model's own output: PII-redacted as it streams, and measured. Closing it (even
    before the first chunk) aborts the engine request."""

    def __init__(
        self,
        chunks: Chunks,
        policy: GenerationPolicy,
        prompt_tokens: int,
        settle: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self._chunks = chunks
        self._used = prompt_tokens
        self._settle = settle
        self._pii = policy.pii
        self._metrics = policy.metrics
        self._redactor = policy.pii.output_filter()
        self._started = time.perf_counter()
        self._first_at: float | None = None
        self._closed = False

    def __aiter__(self) -> _ModelStream:
        return self

    def forgive(self) -> None:
        """Charge nothing for this generation (its request as a whole was refused)."""
        self._used = 0

    async def __anext__(self) -> GenerationChunk:
        chunk = await anext(self._chunks)
        self._used = max(self._used, chunk.prompt_tokens + chunk.completion_tokens)
        now = time.perf_counter()
        if self._first_at is None:
            self._first_at = now
            self._metrics.observe_first_token(now - self._started)
        text = chunk.text
        if self._redactor is not None:
            text = self._redactor.push(text)
            if chunk.finish_reason is not None:
                text += self._redactor.flush()
        if chunk.finish_reason is not None:
            self._metrics.observe_finished(chunk.prompt_tokens, chunk.completion_tokens, now - self._first_at)
        return replace(chunk, text=text)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._redactor is not None:
                self._pii.report_output(self._redactor)
            close = getattr(self._chunks, "aclose", None)
            if close is not None:
                await close()
        finally:
            # Last: settling may wait on a shared store, and the engine's abort must not wait on it.
            if self._settle is not None:
                await self._settle(self._used)


def _counter(tally: RequestTally, counts_prompt: bool) -> OnSuccess:
    async def count(completion: Completion) -> None:
        prompt_tokens = completion.prompt_tokens if counts_prompt else 0
        tally.answer(prompt_tokens, completion.completion_tokens, completion.cached)

    return count


def _final_chunk(completion: Completion) -> GenerationChunk:
    return GenerationChunk(
        text=completion.text,
        completion_tokens=completion.completion_tokens,
        prompt_tokens=completion.prompt_tokens,
        finish_reason=completion.finish_reason,
    )


async def _replay(completion: Completion) -> Chunks:
    yield _final_chunk(completion)
