"""A scripted fake engine and tokenizer: the app's whole HTTP and service behaviour without a model.

`ScriptedEngine` answers every request with the text its `reply` script gives for the prompt,
one word per token (or as `split` cuts it), honouring `max_tokens` and stop texts. Tests inject
what they need: a gate that holds generation (before its first token, or after N), a failure at
admission or after N tokens (for every request, or those `fails` picks); it records what was
submitted and what was aborted. `fake_serving_model(engine)` is a `ServingModelFactory` for
`create_app`.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import jinja2

from app.core.config import Settings
from app.core.errors import ServiceError
from app.engine.types import BatchObserver, EngineStats, GenerationChunk, GenerationRequest, PrefixCacheStats
from app.model.chat_format import PromptBuilder
from app.model.runtime import ModelInfo, Progress, ReadyModel, ServingModelFactory

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CONTEXT_LENGTH = 4096


class ByteTokenizer:
    """One token per UTF-8 byte; the chat template is rendered with jinja2 as transformers does."""

    chat_template = CHAT_TEMPLATE

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": list(text.encode("utf-8"))}

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def apply_chat_template(
        self, messages: list[dict[str, str]], chat_template: str, tokenize: bool, add_generation_prompt: bool
    ) -> str:
        return _compiled(chat_template).render(messages=messages, add_generation_prompt=add_generation_prompt)


def decode_prompt(request: GenerationRequest) -> str:
    return ByteTokenizer().decode(list(request.prompt_ids))


def echo_reply(prompt: str) -> str:
    """The default script: a fixed sentence that names the prompt's length."""
    return f"This is a scripted answer to a prompt of {len(prompt)} characters."


def words(text: str) -> list[str]:
    """The default tokens of a reply: one word per token, each with the space before it."""
    return re.findall(r"\s*\S+", text)


def every_request(request: GenerationRequest) -> bool:
    return True


def fresh(error: Exception) -> Exception:
    """A new error like `error`, as the real engine raises one per request: a test's template is
    never raised itself, so nothing a layer records on a raised error leaks into the next request.
    Built field by field, so it works for errors that refuse attribute changes once constructed."""
    copied = type(error).__new__(type(error))
    copied.args = error.args
    copied.__dict__.update(vars(error))
    return copied


@dataclass
class ScriptedEngine:
    reply: Callable[[str], str] = echo_reply
    """The whole answer for a prompt (decoded from its byte tokens)."""
    split: Callable[[str], list[str]] = words
    """How an answer is cut into tokens (`list` gives one character per token)."""
    gate: asyncio.Event | None = None
    """When set, every generation waits for this event before its first token."""
    gate_after_tokens: int = 0
    """How many tokens a generation gives before the gate holds it (0: before the first)."""
    fail_on_submit: ServiceError | None = None
    """Raised by `submit`, as the real engine raises EngineOverloaded or ShuttingDown."""
    fail_after_tokens: int | None = None
    """Raise `mid_stream_error` after this many tokens."""
    fails: Callable[[GenerationRequest], bool] = every_request
    """Which requests `fail_after_tokens` applies to (e.g. only one of two identical requests)."""
    mid_stream_error: Exception = field(default_factory=lambda: RuntimeError("scripted failure"))
    submitted: list[GenerationRequest] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    """Request ids whose stream was closed before it finished (even before its first token)."""
    running: int = 0
    shut_down: bool = False
    prefix_cache: PrefixCacheStats = field(default_factory=PrefixCacheStats)
    """What `stats` reports of the engine's prefix cache."""

    def submit(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if self.fail_on_submit is not None:
            raise fresh(self.fail_on_submit)
        self.submitted.append(request)
        return _ScriptedStream(self, request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        params = request.params
        pieces = self.split(self.reply(decode_prompt(request)))
        fail_after = self.fail_after_tokens if self.fails(request) else None
        prompt_tokens = len(request.prompt_ids)
        self.running += 1
        finished = False
        try:
            text = ""
            for count, piece in enumerate(pieces[: params.max_tokens], start=1):
                if self.gate is not None and count == self.gate_after_tokens + 1:
                    await self.gate.wait()
                if fail_after is not None and count > fail_after:
                    raise fresh(self.mid_stream_error)
                text += piece
                stop_at = _first_stop(text, params.stop)
                if stop_at is not None:
                    finished = True
                    yield GenerationChunk(piece[: len(piece) - (len(text) - stop_at)], count, prompt_tokens, "stop")
                    return
                last = count == min(len(pieces), params.max_tokens)
                reason = None if not last else ("length" if len(pieces) > params.max_tokens else "stop")
                finished = last
                yield GenerationChunk(piece, count, prompt_tokens, reason)
                await asyncio.sleep(0)
            if not pieces:
                finished = True
                yield GenerationChunk("", 0, prompt_tokens, "stop")
        finally:
            self.running -= 1
            if not finished:
                self.aborted.append(request.request_id)

    def stats(self) -> EngineStats:
        return EngineStats(queued=0, running=self.running, cancelled=len(self.aborted), prefix_cache=self.prefix_cache)

    async def shutdown(self, grace_s: float) -> None:
        self.shut_down = True


class _ScriptedStream:
    """A request's reply channel. As the real engine's, closing it aborts the request even before
    its first chunk (when the generator's own `finally` has not started and so cannot record it)."""

    def __init__(self, engine: ScriptedEngine, request: GenerationRequest) -> None:
        self._engine = engine
        self._request = request
        self._chunks = engine._stream(request)
        self._started = False
        self._closed = False

    def __aiter__(self) -> _ScriptedStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        self._started = True
        return await anext(self._chunks)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._started:
            self._engine.aborted.append(self._request.request_id)
        await self._chunks.aclose()


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [text.find(stop) for stop in stops if stop in text]
    return min(found) if found else None


def fake_serving_model(
    engine: ScriptedEngine, system_prompt: str | None = None, context_length: int = CONTEXT_LENGTH
) -> ServingModelFactory:
    """A `ServingModelFactory` serving `engine` under the configured served name."""

    def build(settings: Settings, on_progress: Progress, on_batch: BatchObserver | None) -> ReadyModel:
        on_progress("scripted engine")
        prompts = PromptBuilder(ByteTokenizer(), context_length, system_prompt)
        info = ModelInfo(
            served_name=settings.model.resolved_served_name(),
            device="cpu",
            dtype="float32",
            context_length=context_length,
            system_prompt_supported=prompts.supports_system,
        )
        return ReadyModel(engine=engine, prompts=prompts, info=info)

    return build


@functools.cache
def _compiled(template: str) -> jinja2.Template:
    """Compiling a template costs milliseconds; every app of the suite renders the same one."""
    return jinja2.Template(template)
