"""The one mapping from exceptions to the JSON error body and status, counting each rejection it answers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.core.errors import (
    HTTPStatusError,
    InvalidJSON,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestValidationFailed,
    ServiceError,
    Unauthorized,
)
from app.core.request_context import current_request_id

logger = logging.getLogger("app.errors")

_HTTP_STATUS_ERRORS: dict[int, type[ServiceError]] = {
    401: Unauthorized,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}
"""The web framework's own answers, told as our errors (404 and 400 have their own wording)."""


OPENAI_ROUTE_MARK = "x-openai-route"
"""Set on the OpenAPI operation of every OpenAIRoute, so the document's post-processing
(app.api.openapi) finds them; it removes the mark again."""


class OpenAIRoute(APIRoute):
    """A route of the OpenAI-compatible API: a request its schema rejects is a 400
    `invalid_request_error`, as OpenAI answers, where native routes say 422."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.openapi_extra = {**(self.openapi_extra or {}), OPENAI_ROUTE_MARK: True}


class ErrorDetail(BaseModel):
    type: str = Field(description="OpenAI's error type, e.g. `invalid_request_error`, `authentication_error`.")
    code: str = Field(description="What went wrong, e.g. `validation_error`, `prompt_too_long`, `overloaded`.")
    message: str
    param: str | None = Field(description="The request field at fault, when there is one.")
    request_id: str = Field(description="The same as the X-Request-ID response header.")


class ErrorResponse(BaseModel):
    """The body of every error answer: OpenAI's shape with our request id added."""

    error: ErrorDetail


def error_body(exc: ServiceError) -> dict[str, Any]:
    return {
        "error": {
            "type": exc.error_type,
            "code": exc.code,
            "message": exc.message,
            "param": exc.param,
            "request_id": current_request_id(),
        }
    }


def error_response(exc: ServiceError) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=exc.status_code, headers=exc.response_headers())


def record_rejection(request: Request, exc: ServiceError) -> None:
    """Count the error in llm_requests_rejected_total{reason}, if it rejects a request. Called
    once per answer: by the handlers below, or by a stream that tells the error itself."""
    policy = getattr(request.app.state, "policy", None)
    if policy is not None:
        policy.metrics.reject(exc.reject_reason)


def validation_error(exc: RequestValidationError) -> ServiceError:
    """Malformed JSON is a 400; anything the schema rejects is a 422 naming the field."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return InvalidJSON("request body is not valid JSON in UTF-8")
    raw_loc = tuple(first.get("loc", ()))
    loc = [str(part) for part in raw_loc if part != "body" and _is_field(part)]
    # A header is named as it is sent (`Idempotency-Key`), which is no identifier.
    param = str(raw_loc[1]) if raw_loc[:1] == ("header",) and len(raw_loc) > 1 else ".".join(loc) or None
    message = first.get("msg", "invalid request")
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    if first.get("type") == "missing" and not loc:
        message = "request body is required"
    return RequestValidationFailed(f"{param}: {message}" if param else message, param=param)


def _is_field(part: object) -> bool:
    """Field names and list indexes; not pydantic's tags for union members ("list[str]")."""
    return isinstance(part, int) or (isinstance(part, str) and part.isidentifier())


async def _service_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if isinstance(exc, RequestValidationFailed) and isinstance(request.scope.get("route"), OpenAIRoute):
        # A check past the schema (a template's variables) answers as the schema's own would.
        exc = InvalidRequest(exc.message, param=exc.param)
    record_rejection(request, exc)
    if exc.status_code >= 500:
        logger.warning("request failed", extra={"code": exc.code, "status": exc.status_code})
    return error_response(exc)


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    error = validation_error(exc)
    if isinstance(error, RequestValidationFailed) and isinstance(request.scope.get("route"), OpenAIRoute):
        error = InvalidRequest(error.message, param=error.param)
    record_rejection(request, error)
    return error_response(error)


def http_status_error(exc: StarletteHTTPException) -> ServiceError:
    if exc.status_code == 404:
        return NotFound("route not found")
    if exc.status_code == 400:  # FastAPI's only 400: a body it could not decode (e.g. not UTF-8)
        return InvalidJSON("request body is not valid JSON in UTF-8")
    known = _HTTP_STATUS_ERRORS.get(exc.status_code)
    return known(str(exc.detail)) if known is not None else HTTPStatusError(exc.status_code, str(exc.detail))


_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """Every method some route answers at this path, for the `Allow` header of a 405. Starlette's
    own names only the methods of the first route whose path matched, so a path served by two
    routes (GET and DELETE of a session) advertised half of them; asking every route about every
    method also sees through FastAPI's nested routers."""
    routes = request.app.router.routes

    def served(method: str) -> bool:
        probe = {**request.scope, "method": method}
        return any(route.matches(probe)[0] is Match.FULL for route in routes)

    return ", ".join(method for method in _HTTP_METHODS if served(method))


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    service_error = http_status_error(exc)
    record_rejection(request, service_error)
    response = error_response(service_error)
    for key, value in (exc.headers or {}).items():
        response.headers[key] = value
    if exc.status_code == 405:
        response.headers["Allow"] = allowed_methods(request)
    return response


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error")
    return error_response(ServiceError("internal server error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
