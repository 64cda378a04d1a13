"""Domain exceptions, all of them. Raised anywhere inside; mapped to HTTP once, in app.api.errors."""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Base of every error a client may see. Subclasses fix status, type and code.

    Immutable once built: an error may be seen by several layers (a run, a stream, the HTTP
    mapping), and each must tell the client the same thing.
    """

    status_code: int = 500
    error_type: str = "server_error"
    code: str = "internal_error"
    default_retry_after: ClassVar[int | None] = None
    """Seconds a client should wait before retrying (Retry-After), unless the raiser knows better."""
    reject_reason: ClassVar[str | None] = None
    """`reason` label of llm_requests_rejected_total when this error turns a request away."""

    def __init__(self, message: str, *, param: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = self.default_retry_after if retry_after is None else retry_after
        self._sealed = True

    def __setattr__(self, name: str, value: object) -> None:
        # Python's own bookkeeping (__traceback__, __cause__, __notes__) must stay writable.
        if not name.startswith("__") and self.__dict__.get("_sealed", False):
            raise AttributeError(f"{type(self).__name__} is immutable: pass {name} to its constructor")
        super().__setattr__(name, value)

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


class PIIBlocked(InvalidRequest):
    code = "pii_detected"
    reject_reason = "pii"


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"
    reject_reason = "auth"

    def response_headers(self) -> dict[str, str]:
        return {**super().response_headers(), "WWW-Authenticate": 'Bearer realm="llm-fastapi-service"'}


class TokensOverBudget(InvalidRequest):
    """A request whose reserve (prompt + max_tokens) is more than the caller's whole budget:
    no wait would let it through, so it is no 429."""

    code = "tokens_over_budget"


class RemoteAccessRefused(ServiceError):
    """A server with no API key reached through a non-loopback address."""

    status_code = 403
    error_type = "permission_error"
    code = "remote_access_refused"
    reject_reason = "auth"


class Forbidden(ServiceError):
    status_code = 403
    error_type = "permission_error"
    code = "forbidden"


class NotFound(ServiceError):
    status_code = 404
    error_type = "not_found_error"
    code = "not_found"


class SessionNotFound(NotFound):
    code = "session_not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class KeyNotFound(NotFound):
    code = "key_not_found"


class TemplateNotFound(NotFound):
    code = "template_not_found"


class MethodNotAllowed(ServiceError):
    status_code = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"


class IdempotencyInProgress(ServiceError):
    """The first request with this Idempotency-Key still runs."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "idempotency_in_progress"
    default_retry_after = 1


class SessionBusy(ServiceError):
    """Another turn of the same session is running (on this replica or another)."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "session_busy"
    default_retry_after = 1


class IdempotencyKeyReused(ServiceError):
    """An Idempotency-Key sent again with another request."""

    status_code = 422
    error_type = "invalid_request_error"
    code = "idempotency_key_reused"


class PayloadTooLarge(ServiceError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"
    reject_reason = "validation"


class PromptTooLong(PayloadTooLarge):
    code = "prompt_too_long"


class RequestValidationFailed(ServiceError):
    status_code = 422
    error_type = "invalid_request_error"
    code = "validation_error"
    reject_reason = "validation"


class RateLimited(ServiceError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limited"
    reject_reason = "rate_limit"


class TokenRateLimited(RateLimited):
    """The caller's token budget per minute cannot hold this request's reserve yet."""

    code = "token_rate_limited"


class QuotaExceeded(RateLimited):
    """The key's tokens for this UTC day are spent."""

    code = "quota_exceeded"


class HTTPStatusError(ServiceError):
    """Any other status the web framework answers by itself, in the same error body."""

    code = "http_error"

    def __init__(self, status_code: int, message: str) -> None:
        self.status_code = status_code
        self.error_type = "invalid_request_error" if status_code < 500 else "server_error"
        super().__init__(message)


class ModelNotReady(ServiceError):
    status_code = 503
    error_type = "service_unavailable"
    code = "model_loading"
    default_retry_after = 5


class ModelUnhealthy(ServiceError):
    status_code = 503
    error_type = "service_unavailable"
    code = "model_unhealthy"
    default_retry_after = 30


class EngineOverloaded(ServiceError):
    status_code = 503
    error_type = "service_unavailable"
    code = "overloaded"
    default_retry_after = 1
    reject_reason = "overloaded"


class QueueTimeout(EngineOverloaded):
    code = "queue_timeout"
    reject_reason = "timeout"


class StateUnavailable(ServiceError):
    """The shared state backend (Redis) did not answer in time."""

    status_code = 503
    error_type = "service_unavailable"
    code = "state_unavailable"
    default_retry_after = 2


class ShuttingDown(ServiceError):
    status_code = 503
    error_type = "service_unavailable"
    code = "shutting_down"
    default_retry_after = 5
    reject_reason = "overloaded"


class GenerationTimeout(ServiceError):
    status_code = 504
    error_type = "timeout_error"
    code = "generation_timeout"
    reject_reason = "timeout"


class GenerationFailed(ServiceError):
    """The engine failed on this request; the server itself carries on."""
