"""Request and response models of the native API. Requests own their conversion to engine params."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.core.config import ModelSettings
from app.engine.types import ChatMessage, SamplingParams
from app.services.generation import Completion

SESSION_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"


def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid UTF-8 (lone surrogate)") from None
    if "\x00" in text:
        raise ValueError("text must not contain NUL characters")
    return text


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]
NonBlankText = Annotated[Text, AfterValidator(_not_blank)]
StopText = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_valid_unicode)]


class StrictRequest(BaseModel):
    """Native requests: exact types, unknown fields rejected (422)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class SamplingFields(StrictRequest):
    max_tokens: int | None = Field(None, ge=1, description="Capped at model.max_tokens and the context left.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy.")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, description="0 disables top-k.")
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    stop: StopText | list[StopText] | None = Field(None, description="Stop text(s); never part of the output.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False

    def to_sampling_params(self, defaults: ModelSettings) -> SamplingParams:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return SamplingParams(
            max_tokens=min(self.max_tokens or defaults.default_max_tokens, defaults.max_tokens),
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=self.top_p or defaults.top_p,
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            repetition_penalty=self.repetition_penalty or defaults.repetition_penalty,
            seed=self.seed,
            stop=tuple(stops),
        )


class GenerateRequest(SamplingFields):
    prompt: NonBlankText


class ChatMessageIn(StrictRequest):
    role: Literal["system", "user", "assistant"]
    content: Text

    def to_message(self) -> ChatMessage:
        return ChatMessage(role=self.role, content=self.content)


class ChatRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=1000)
    session_id: str | None = Field(None, pattern=SESSION_ID_PATTERN)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, completion: Completion) -> Usage:
        return cls(
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            total_tokens=completion.total_tokens,
        )


class GenerateResponse(BaseModel):
    generated_text: str
    prompt: str
    model: str
    tokens_generated: int
    finish_reason: Literal["stop", "length"]
    cached: bool
    usage: Usage
    request_id: str


class ChatMessageOut(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatResponse(BaseModel):
    message: ChatMessageOut
    model: str
    tokens_generated: int
    finish_reason: Literal["stop", "length"]
    cached: bool
    session_id: str | None
    usage: Usage
    request_id: str


class SessionResponse(BaseModel):
    session_id: str
    messages: list[ChatMessageOut]
    expires_at: float = Field(description="Unix time at which the session expires unless used.")
