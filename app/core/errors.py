"""Domain exceptions. Raised anywhere inside; mapped to HTTP once, in app.api.errors."""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Base of every error a client may see. Subclasses fix status, type and code."""

    status_code = 500
    error_type = "server_error"
    code = "internal_error"
    retry_after: int | None = None
    reject_reason: ClassVar[str | None] = None
    """`reason` label of llm_requests_rejected_total when this error turns a request away."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.counted = False
        """Already counted in llm_requests_rejected_total (a run and the HTTP mapping both see it)."""

    def response_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class InvalidRequest(ServiceError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"
    reject_reason = "validation"


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class RequestValidationFailed(ServiceError):
    status_code = 422
    error_type = "invalid_request_error"
    code = "validation_error"
    reject_reason = "validation"


class PayloadTooLarge(ServiceError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"
    reject_reason = "validation"


class PromptTooLong(PayloadTooLarge):
    code = "prompt_too_long"


class NotFound(ServiceError):
    status_code = 404
    error_type = "not_found_error"
    code = "not_found"


class SessionNotFound(NotFound):
    code = "session_not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class ModelNotReady(ServiceError):
    status_code = 503
    error_type = "service_unavailable"
    code = "model_loading"
    retry_after = 5


class EngineOverloaded(ServiceError):
    status_code = 503
    error_type = "service_unavailable"
    code = "overloaded"
    retry_after = 1
    reject_reason = "overloaded"


class QueueTimeout(EngineOverloaded):
    code = "queue_timeout"
    reject_reason = "timeout"


class ShuttingDown(ServiceError):
    status_code = 503
    error_type = "service_unavailable"
    code = "shutting_down"
    retry_after = 5
    reject_reason = "overloaded"


class GenerationTimeout(ServiceError):
    status_code = 504
    error_type = "timeout_error"
    code = "generation_timeout"
    reject_reason = "timeout"


class GenerationFailed(ServiceError):
    """The engine failed on this request; the server itself carries on."""
