"""Bodies of the operator's routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from app.core.cache import CacheStats
from app.core.config import CacheSettings, ChatHistorySettings, PIISettings, RateLimitSettings, Settings
from app.engine.types import EngineStats
from app.model.runtime import ModelInfo

HealthStatus = Literal["healthy", "loading", "unhealthy", "draining"]
"""`draining`: told to stop (SIGTERM); running generations finish, new ones get 503 `shutting_down`."""


class HealthResponse(BaseModel):
    status: HealthStatus
    model_loaded: bool
    model_name: str
    state: Literal["ok", "unavailable"] = "ok"
    """Whether the shared state backend answers (always ok for memory). Readiness does not
    depend on it: without Redis a replica still generates (see the README's failure modes)."""
    progress: str | None = None
    reason: str | None = None


class ModelStatus(BaseModel):
    name: str
    """As configured (hub id or path)."""
    served_name: str
    device: str | None
    """None until the model is loaded; so are the fields below."""
    dtype: str | None
    context_length: int | None
    system_prompt_supported: bool | None
    quantization: str | None
    """`model.quantization`: none, bf16, fp16 or int8 (how the weights are stored)."""
    compiled: bool | None
    """Whether decoding steps run compiled (`engine.compile`, and the model's attention allows it)."""

    @classmethod
    def of(cls, name: str, served_name: str, info: ModelInfo | None) -> ModelStatus:
        return cls(
            name=name,
            served_name=served_name,
            device=info.device if info else None,
            dtype=info.dtype if info else None,
            context_length=info.context_length if info else None,
            system_prompt_supported=info.system_prompt_supported if info else None,
            quantization=info.quantization if info else None,
            compiled=info.compiled if info else None,
        )


class SessionsStatus(BaseModel):
    active: int
    ttl_seconds: float
    max_sessions: int
    max_messages: int

    @classmethod
    def of(cls, active: int, settings: ChatHistorySettings) -> SessionsStatus:
        return cls(
            active=active,
            ttl_seconds=settings.ttl_seconds,
            max_sessions=settings.max_sessions,
            max_messages=settings.max_messages,
        )


class QueueStatus(BaseModel):
    queued: int
    running: int
    cancelled: int
    """Requests stopped because their client went away, since start."""
    max_queue: int

    @classmethod
    def of(cls, stats: EngineStats | None, max_queue: int) -> QueueStatus:
        if stats is None:
            return cls(queued=0, running=0, cancelled=0, max_queue=max_queue)
        return cls(queued=stats.queued, running=stats.running, cancelled=stats.cancelled, max_queue=max_queue)


class AuthStatus(BaseModel):
    enabled: bool
    keys: int
    """How many keys are configured; never the keys."""
    protect_metrics: bool


class CacheStatus(BaseModel):
    enabled: bool
    deterministic_only: bool
    ttl_seconds: float
    capacity: int
    size: int
    hits: int
    misses: int
    evictions: int
    hit_rate: float

    @classmethod
    def of(cls, stats: CacheStats | None, settings: CacheSettings) -> CacheStatus:
        return cls(
            enabled=stats is not None,
            deterministic_only=settings.deterministic_only,
            ttl_seconds=settings.ttl_seconds,
            capacity=settings.size,
            size=stats.size if stats else 0,
            hits=stats.hits if stats else 0,
            misses=stats.misses if stats else 0,
            evictions=stats.evictions if stats else 0,
            hit_rate=stats.hit_rate if stats else 0.0,
        )


class PIIStatus(BaseModel):
    enabled: bool
    mode: Literal["redact", "block"]
    redact_input: bool
    redact_output: bool
    entities: list[str]
    """Every entity redacted: the built-in ones enabled and the custom patterns."""

    @classmethod
    def of(cls, settings: PIISettings, entities: list[str]) -> PIIStatus:
        return cls(
            enabled=settings.enabled,
            mode=settings.mode,
            redact_input=settings.redact_input,
            redact_output=settings.redact_output,
            entities=entities,
        )


class LimitsStatus(BaseModel):
    max_prompt_chars: int
    max_body_bytes: int
    max_tokens: int
    default_max_tokens: int
    queue_timeout_s: float
    request_timeout_s: float

    @classmethod
    def of(cls, settings: Settings) -> LimitsStatus:
        return cls(
            max_prompt_chars=settings.security.max_prompt_chars,
            max_body_bytes=settings.security.max_body_bytes,
            max_tokens=settings.model.max_tokens,
            default_max_tokens=settings.model.default_max_tokens,
            queue_timeout_s=settings.engine.queue_timeout_s,
            request_timeout_s=settings.engine.request_timeout_s,
        )


class SamplingDefaults(BaseModel):
    """What a request that leaves a sampling field out gets (the `model.*` settings)."""

    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    max_tokens: int

    @classmethod
    def of(cls, settings: Settings) -> SamplingDefaults:
        model = settings.model
        return cls(
            temperature=model.temperature,
            top_p=model.top_p,
            top_k=model.top_k,
            repetition_penalty=model.repetition_penalty,
            max_tokens=model.default_max_tokens,
        )


class TemplateStatus(BaseModel):
    id: str
    version: str


class StatusResponse(BaseModel):
    """What runs and what is in force; never a key."""

    status: HealthStatus
    version: str
    uptime_s: float
    model: ModelStatus
    sessions: SessionsStatus
    queue: QueueStatus
    auth: AuthStatus
    rate_limit: RateLimitSettings
    cache: CacheStatus
    pii: PIIStatus
    limits: LimitsStatus
    defaults: SamplingDefaults
    templates: list[TemplateStatus]
