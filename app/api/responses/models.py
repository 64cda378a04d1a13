"""Requests and responses of OpenAI's Responses API (POST /v1/responses), text in and text out.

What a stateless text server can honour: `input` (a string, or messages with text parts),
`instructions`, `max_output_tokens`, `temperature`, `top_p`, `stream`. Unknown fields are
ignored; `previous_response_id` is refused, as no response is stored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, WithJsonSchema, field_validator

from app.api.native.models import NonBlankText, SamplingFields, Text, WholeNumber
from app.api.openai.models import ChatMessageParam, OpenAIRequest, ResponseHead
from app.core.config import ModelSettings
from app.engine.types import ChatMessage, SamplingParams
from app.services.generation import Completion


class ResponseRequest(OpenAIRequest):
    model: str | None = Field(None, description="Any name: the served model answers, under its own name.")
    input: NonBlankText | Annotated[list[ChatMessageParam], Field(min_length=1, max_length=1000)]
    instructions: Text | None = Field(None, description="A system message put before the input.")
    max_output_tokens: Annotated[int, Field(ge=1), WholeNumber] | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stream: bool = False
    previous_response_id: Annotated[
        str | None,
        # Declared as a string so that a client sending one learns why it is refused (400).
        WithJsonSchema({"type": "null", "description": "Always null: no response is stored here."}),
    ] = None

    @field_validator("previous_response_id")
    @classmethod
    def _not_stored(cls, value: str | None) -> None:
        if value is not None:
            raise ValueError("responses are not stored here: send the whole conversation in `input`")

    def to_messages(self) -> list[ChatMessage]:
        system = [ChatMessage("system", self.instructions)] if self.instructions else []
        if isinstance(self.input, str):
            return [*system, ChatMessage("user", self.input)]
        return [*system, *(m.to_message() for m in self.input)]

    def to_sampling_params(self, defaults: ModelSettings) -> SamplingParams:
        fields = SamplingFields.model_construct(
            max_tokens=self.max_output_tokens, temperature=self.temperature, top_p=self.top_p
        )
        return fields.to_sampling_params(defaults)


Status = Literal["in_progress", "completed", "incomplete"]


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Status
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"] = "max_output_tokens"


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Status
    error: None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputMessage]
    parallel_tool_calls: bool = False
    previous_response_id: None = None
    temperature: float | None
    top_p: float | None
    tool_choice: Literal["none"] = "none"
    tools: list[Any] = Field(default_factory=list)
    usage: ResponseUsage | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


def message_status(completion: Completion) -> Status:
    return "incomplete" if completion.finish_reason == "length" else "completed"


def response_object(
    head: ResponseHead, message_id: str, body: ResponseRequest, completion: Completion | None
) -> ResponseObject:
    """The response in progress (no completion yet: no output) or finished."""
    response = ResponseObject(
        id=head.id,
        created_at=head.created,
        status="in_progress",
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        model=head.model,
        output=[],
        temperature=body.temperature,
        top_p=body.top_p,
    )
    if completion is None:
        return response
    response.status = message_status(completion)
    response.output = [OutputMessage(id=message_id, status=response.status, content=[OutputText(text=completion.text)])]
    response.usage = ResponseUsage(
        input_tokens=completion.prompt_tokens,
        output_tokens=completion.completion_tokens,
        total_tokens=completion.total_tokens,
    )
    response.incomplete_details = IncompleteDetails() if response.status == "incomplete" else None
    return response
