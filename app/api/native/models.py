"""Request and response models of the native API. Requests own their conversion to engine params."""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError

from app.core.config import ModelSettings
from app.engine.types import ChatMessage, SamplingParams
from app.services.generation import Completion

SESSION_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"

WHITESPACE_CLASS = r"\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
"""The characters `str.strip()` removes (`str.isspace()`), as a regular-expression class that
JSON Schema (ECMA 262), Python and Rust read alike."""
TEXT_PATTERN = r"^[^\u0000]*$"
"""The schema's reading of `_valid_unicode`: no NUL."""
NON_BLANK_TEXT_PATTERN = rf"^[^\u0000]*[^\u0000{WHITESPACE_CLASS}][^\u0000]*$"
"""The schema's reading of `_valid_unicode` and `_not_blank`: no NUL, and something besides whitespace."""


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


# The validators give the reasons a client reads; the patterns say the same to the schema's readers.
Text = Annotated[str, AfterValidator(_valid_unicode), Field(json_schema_extra={"pattern": TEXT_PATTERN})]
NonBlankText = Annotated[
    str,
    AfterValidator(_valid_unicode),
    AfterValidator(_not_blank),
    Field(min_length=1, json_schema_extra={"pattern": NON_BLANK_TEXT_PATTERN}),
]
StopText = Annotated[Text, Field(min_length=1, max_length=256)]


def _whole_number(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


MAX_JSON_INT = 2**53 - 1
"""The largest integer every JSON client represents exactly (a JavaScript number's limit): the
bound of seeds, so no client's value is rounded on the way and the schema's bound is exact too."""

WholeNumber = BeforeValidator(_whole_number)
"""For an `int` field: read an integer as JSON Schema's `integer` does, `5` or `5.0`, never `5.5`,
`"5"` or `true`. Placed after the field's bounds, `Annotated[int, Field(ge=1), WholeNumber]`, as
pydantic leaves bounds placed after it out of the JSON schema."""


class StrictRequest(BaseModel):
    """Native requests: exact types, unknown fields rejected (422)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class SamplingFields(StrictRequest):
    max_tokens: Annotated[int, Field(ge=1), WholeNumber] | None = Field(
        None, description="Capped at model.max_tokens and the context left."
    )
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy.")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: Annotated[int, Field(ge=0), WholeNumber] | None = Field(None, description="0 disables top-k.")
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    stop: StopText | list[StopText] | None = Field(None, description="Stop text(s); never part of the output.")
    seed: Annotated[int, Field(ge=0, le=MAX_JSON_INT), WholeNumber] | None = None
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


_M = TypeVar("_M", bound=BaseModel)


def not_null(value: object) -> object:
    """For a field whose absence means "not given": an explicit null is what the schema refuses."""
    if value is None:
        raise ValueError("must not be null")
    return value


def one_prompt_source(model: _M) -> _M:
    """Exactly one of `prompt` and `template_id`; the error names the field, as a schema error does."""
    prompt, template_id = getattr(model, "prompt", None), getattr(model, "template_id", None)
    if (prompt is None) == (template_id is None):
        error = (
            InitErrorDetails(type="missing", loc=("prompt",), input=None)
            if prompt is None
            else InitErrorDetails(
                type=PydanticCustomError("one_prompt_source", "give prompt or template_id, not both"),
                loc=("template_id",),
                input=template_id,
            )
        )
        raise ValidationError.from_exception_data(type(model).__name__, [error])
    return model


TEMPLATE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
VariableValue = Text | int | float | bool
VARIABLES_DESCRIPTION = "Values of the template's variables, by name."


class TemplateFields(BaseModel):
    """`template_id` + `variables`: a prompt rendered from a server-side template."""

    template_id: Annotated[str, Field(pattern=TEMPLATE_ID_PATTERN)] | SkipJsonSchema[None] = Field(
        None, description="A template of GET /v1/templates."
    )
    variables: dict[str, VariableValue] = Field(default_factory=dict, description=VARIABLES_DESCRIPTION)

    _no_null_template = field_validator("template_id", mode="before")(not_null)


ONE_PROMPT_SOURCE: JsonDict = {"oneOf": [{"required": ["prompt"]}, {"required": ["template_id"]}]}
"""The schema's reading of `_one_prompt_source`."""


class GenerateRequest(SamplingFields, TemplateFields):
    model_config = ConfigDict(json_schema_extra=ONE_PROMPT_SOURCE)

    prompt: NonBlankText | SkipJsonSchema[None] = None

    _no_null_prompt = field_validator("prompt", mode="before")(not_null)
    _one_prompt_source = model_validator(mode="after")(one_prompt_source)


class ChatMessageIn(StrictRequest):
    role: Literal["system", "user", "assistant"]
    content: Text

    def to_message(self) -> ChatMessage:
        return ChatMessage(role=self.role, content=self.content)


class ChatRequest(SamplingFields, TemplateFields):
    """With `template_id`, the rendered text is the content of the last message if that is the
    user's, else a user message after the others."""

    messages: list[ChatMessageIn] = Field(min_length=1, max_length=1000)
    session_id: str | None = Field(None, pattern=SESSION_ID_PATTERN)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, completion: Completion) -> Usage:
        return cls.model_validate(completion, from_attributes=True)


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
