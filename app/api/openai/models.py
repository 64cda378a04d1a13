"""Requests and responses of the OpenAI-compatible API. Requests own their conversion to engine params.

Unlike the native schemas, unknown fields are ignored (clients send many this server has
no use for). Types are exact, as OpenAI checks them: `"stream": 0` or `"max_tokens": "5"` is a 400,
so that a request the published schema refuses is refused.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from pydantic.config import JsonDict

from app.api.native.models import (
    MAX_JSON_INT,
    NonBlankText,
    SamplingFields,
    StopText,
    TemplateFields,
    Text,
    Usage,
    WholeNumber,
    one_prompt_source,
)
from app.core.config import ModelSettings
from app.engine.types import ChatMessage, FinishReason, SamplingParams
from app.services.generation import Completion

_SEED_RANGE = 2**63


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(OpenAIRequest):
    include_usage: bool = False


class OpenAISampling(OpenAIRequest):
    """The fields both endpoints share, OpenAI's and the vLLM extras that clients send."""

    model: str | None = Field(None, description="Any name: the served model answers, under its own name.")
    max_tokens: Annotated[int, Field(ge=1), WholeNumber] | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: Annotated[int, Field(ge=1, le=128), WholeNumber] = 1
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None
    seed: Annotated[int, Field(ge=-MAX_JSON_INT, le=MAX_JSON_INT), WholeNumber] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    top_k: Annotated[int, Field(ge=-1), WholeNumber] | None = Field(
        None, description="vLLM extra; -1 or 0 disables top-k."
    )
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0, description="vLLM extra.")
    min_tokens: Annotated[int, Field(ge=0), WholeNumber] = Field(
        0, description="vLLM extra: no end of text before this many tokens."
    )
    ignore_eos: bool = Field(False, description="vLLM extra: generate on past the end-of-text token.")

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def choice_params(self, defaults: ModelSettings) -> list[SamplingParams]:
        """Sampling params for each of the `n` choices; a seed gives each choice its own (seed + index)."""
        return [self._sampling_params(defaults, index) for index in range(self.n)]

    def _sampling_params(self, defaults: ModelSettings, index: int) -> SamplingParams:
        seed = None if self.seed is None else (self.seed + index) % _SEED_RANGE
        fields = SamplingFields.model_construct(
            max_tokens=self._max_tokens(),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=None if self.top_k is None else max(self.top_k, 0),
            repetition_penalty=self.repetition_penalty,
            stop=self.stop,
            seed=seed,
        )
        return replace(fields.to_sampling_params(defaults), min_tokens=self.min_tokens, ignore_eos=self.ignore_eos)

    def _max_tokens(self) -> int | None:
        return self.max_tokens


class TextPart(OpenAIRequest):
    """A text part of a message: Chat Completions says `text`, the Responses API `input_text`/`output_text`."""

    type: Literal["text", "input_text", "output_text"]
    text: Text


class ChatMessageParam(OpenAIRequest):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)
        return self.content or ""

    def to_message(self) -> ChatMessage:
        return ChatMessage(role="system" if self.role == "developer" else self.role, content=self.text())


class ChatCompletionRequest(OpenAISampling, TemplateFields):
    """`template_id` + `variables` (the SDK's `extra_body`) render the last user message's content."""

    messages: list[ChatMessageParam] = Field(min_length=1, max_length=1000)
    max_completion_tokens: Annotated[int, Field(ge=1), WholeNumber] | None = Field(
        None, description="Takes precedence over max_tokens."
    )

    def _max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def to_messages(self) -> list[ChatMessage]:
        return [m.to_message() for m in self.messages]


ONE_OPENAI_PROMPT_SOURCE: JsonDict = {
    "oneOf": [
        {"required": ["prompt"], "properties": {"prompt": {"not": {"type": "null"}}}},
        {"required": ["template_id"]},
    ]
}
"""The schema's reading of `one_prompt_source` where a null prompt counts as none."""


class CompletionRequest(OpenAISampling, TemplateFields):
    """`template_id` + `variables` (the SDK's `extra_body`) instead of `prompt`; a null `prompt` is
    absent, since the SDK's `create` always sends one (`prompt=None`)."""

    model_config = ConfigDict(json_schema_extra=ONE_OPENAI_PROMPT_SOURCE)

    prompt: NonBlankText | Annotated[list[NonBlankText], Field(min_length=1, max_length=64)] | None = None
    echo: bool = False

    _one_prompt_source = model_validator(mode="after")(one_prompt_source)

    @property
    def prompts(self) -> list[str]:
        if self.prompt is None:
            return []
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


@dataclass(frozen=True)
class ResponseHead:
    """What every response and chunk of one request repeats."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, prefix: str, model: str) -> ResponseHead:
        return cls(id=f"{prefix}{uuid.uuid4().hex}", created=int(time.time()), model=model)


def total_usage(completions: Sequence[Completion], choices_per_prompt: int) -> Usage:
    """A prompt counts once however many choices it has; every choice's tokens count."""
    prompt_tokens = sum(c.prompt_tokens for c in completions[::choices_per_prompt])
    completion_tokens = sum(c.completion_tokens for c in completions)
    return Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _only_what_is_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None


class TextCompletion(BaseModel):
    """A (legacy) completion, whole or as one chunk of a stream (then `usage` is null)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
