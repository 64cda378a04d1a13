"""A scripted fake engine and tokenizer: the app's whole HTTP and service behaviour without a model.

`ScriptedEngine` answers every request with the text its `reply` script gives for the prompt,
one word per token, honouring `max_tokens` and stop texts. Tests inject what they need: a gate
that holds generation until released, a failure at admission or after N tokens.
`fake_serving_model(engine)` is a `ServingModelFactory` for `create_app`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import jinja2

from app.core.config import Settings
from app.core.errors import ServiceError
from app.engine.types import BatchObserver, EngineStats, GenerationChunk, GenerationRequest
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
        return jinja2.Template(chat_template).render(messages=messages, add_generation_prompt=add_generation_prompt)


def decode_prompt(request: GenerationRequest) -> str:
    return ByteTokenizer().decode(list(request.prompt_ids))


def echo_reply(prompt: str) -> str:
    """The default script: a fixed sentence that names the prompt's length."""
    return f"This is a scripted answer to a prompt of {len(prompt)} characters."


@dataclass
class ScriptedEngine:
    reply: Callable[[str], str] = echo_reply
    """The whole answer for a prompt (decoded from its byte tokens)."""
    gate: asyncio.Event | None = None
    """When set, every generation waits for this event before its first token."""
    fail_on_submit: ServiceError | None = None
    """Raised by `submit`, as the real engine raises EngineOverloaded or ShuttingDown."""
    fail_after_tokens: int | None = None
    """Raise `mid_stream_error` after this many tokens."""
    mid_stream_error: Exception = field(default_factory=lambda: RuntimeError("scripted failure"))
    submitted: list[GenerationRequest] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    """Request ids whose stream was closed before it finished."""
    running: int = 0
    shut_down: bool = False

    def submit(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if self.fail_on_submit is not None:
            raise self.fail_on_submit
        self.submitted.append(request)
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        params = request.params
        words = re.findall(r"\s*\S+", self.reply(decode_prompt(request)))
        prompt_tokens = len(request.prompt_ids)
        self.running += 1
        finished = False
        try:
            if self.gate is not None:
                await self.gate.wait()
            text = ""
            for count, word in enumerate(words[: params.max_tokens], start=1):
                if self.fail_after_tokens is not None and count > self.fail_after_tokens:
                    raise self.mid_stream_error
                text += word
                stop_at = _first_stop(text, params.stop)
                if stop_at is not None:
                    finished = True
                    yield GenerationChunk(word[: len(word) - (len(text) - stop_at)], count, prompt_tokens, "stop")
                    return
                last = count == min(len(words), params.max_tokens)
                reason = None if not last else ("length" if len(words) > params.max_tokens else "stop")
                finished = last
                yield GenerationChunk(word, count, prompt_tokens, reason)
                await asyncio.sleep(0)
            if not words:
                finished = True
                yield GenerationChunk("", 0, prompt_tokens, "stop")
        finally:
            self.running -= 1
            if not finished:
                self.aborted.append(request.request_id)

    def stats(self) -> EngineStats:
        return EngineStats(queued=0, running=self.running, cancelled=len(self.aborted))

    async def shutdown(self, grace_s: float) -> None:
        self.shut_down = True


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
