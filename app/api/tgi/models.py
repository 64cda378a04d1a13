"""Requests and responses of the Text Generation Inference (TGI) API, as huggingface_hub speaks it.

Unknown fields are ignored, as TGI clients send parameters this server does not use
(`typical_p`, `watermark`, `truncate`, `decoder_input_details`…); types are exact, as the
published schema says (TGI itself refuses `"details": 0` too).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.native.models import MAX_JSON_INT, NonBlankText, SamplingFields, StopText, WholeNumber
from app.core.config import ModelSettings
from app.engine.types import FinishReason, SamplingParams

TGIFinishReason = Literal["length", "eos_token", "stop_sequence"]


class TGIRequestModel(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TGIParameters(TGIRequestModel):
    max_new_tokens: Annotated[int, Field(ge=1), WholeNumber] | None = None
    do_sample: bool = False
    temperature: float | None = Field(None, ge=0.0, description="0 = greedy (TGI itself refuses 0).")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: Annotated[int, Field(ge=0), WholeNumber] | None = None
    typical_p: float | None = Field(None, gt=0.0, le=1.0, description="Accepted, not applied.")
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_JSON_INT), WholeNumber] | None = None
    return_full_text: bool = False
    details: bool = False
    best_of: Annotated[int, Field(ge=1, le=1), WholeNumber] | None = Field(None, description="Only 1.")

    def samples(self) -> bool:
        """TGI samples when asked to, or when any sampling parameter is set off its neutral value."""
        warped = (
            (self.temperature is not None and self.temperature != 1.0)
            or (self.top_k is not None and self.top_k != 0)
            or (self.top_p is not None and self.top_p < 1.0)
            or (self.typical_p is not None and self.typical_p < 1.0)
        )
        return self.do_sample or warped

    def to_sampling_params(self, defaults: ModelSettings) -> SamplingParams:
        fields = SamplingFields.model_construct(
            max_tokens=self.max_new_tokens,
            temperature=(1.0 if self.temperature is None else self.temperature) if self.samples() else 0.0,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            stop=self.stop,
            seed=self.seed,
        )
        return fields.to_sampling_params(defaults)

    def finish_reason(self, reason: FinishReason) -> TGIFinishReason:
        """Ours says only stop|length; a stop with stop texts requested is told as one of them."""
        if reason == "length":
            return "length"
        return "stop_sequence" if self.stop else "eos_token"


class TGIRequest(TGIRequestModel):
    inputs: NonBlankText
    parameters: TGIParameters = Field(default_factory=TGIParameters)


class TGICompatRequest(TGIRequest):
    """POST / : either endpoint, chosen by `stream`."""

    stream: bool = False


class TGIToken(BaseModel):
    """Token ids and log-probabilities are not reported: `id` is 0 and `logprob` null."""

    id: int = 0
    text: str
    logprob: float | None = None
    special: bool = False


class TGIDetails(BaseModel):
    finish_reason: TGIFinishReason
    generated_tokens: int
    seed: int | None = None
    """The request's seed; left out of the answer (None fields are dropped) when none was sent."""
    prefill: list[TGIToken] = Field(default_factory=list)
    tokens: list[TGIToken] = Field(default_factory=list)


class TGIResponse(BaseModel):
    generated_text: str
    details: TGIDetails | None = None


class TGIStreamDetails(BaseModel):
    finish_reason: TGIFinishReason
    generated_tokens: int
    seed: int | None = None
    input_length: int


class TGIStreamEvent(BaseModel):
    index: int
    token: TGIToken
    generated_text: str | None = None
    details: TGIStreamDetails | None = None
    top_tokens: None = None


class TGIInfo(BaseModel):
    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_device_type: str
    model_pipeline_tag: str = "text-generation"
    max_concurrent_requests: int
    max_best_of: int = 1
    max_stop_sequences: int = 4
    max_input_tokens: int
    max_total_tokens: int
    max_client_batch_size: int = 1
    router: str = "llm-fastapi-service"
    version: str
    sha: str | None = None
    docker_label: str | None = None
