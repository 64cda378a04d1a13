"""The one mapping from exceptions to SPEC's JSON error body and status."""

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
    InvalidJSON,
    InvalidRequest,
    NotFound,
    RequestValidationFailed,
    ServiceError,
)
from app.core.request_context import current_request_id

logger = logging.getLogger("app.errors")

_HTTP_STATUS_TYPES = {
    400: ("invalid_request_error", "bad_request"),
    401: ("authentication_error", "unauthorized"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
}


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
    """Count the error in llm_requests_rejected_total{reason}, if it rejects a request."""
    policy = getattr(request.app.state, "policy", None)
    if policy is not None:
        policy.metrics.reject_error(exc)


def validation_error(exc: RequestValidationError) -> ServiceError:
    """Malformed JSON is a 400; anything the schema rejects is a 422 naming the field."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return InvalidJSON("request body is not valid JSON in UTF-8")
    loc = [str(part) for part in first.get("loc", ()) if part != "body" and _is_field(part)]
    param = ".".join(loc) or None
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
    error_type, code = _HTTP_STATUS_TYPES.get(exc.status_code, ("invalid_request_error", "http_error"))
    service_error: ServiceError
    if exc.status_code == 404:
        service_error = NotFound("route not found")
    elif exc.status_code == 400:  # FastAPI's only 400: a body it could not decode (e.g. not UTF-8)
        service_error = InvalidJSON("request body is not valid JSON in UTF-8")
    else:
        service_error = ServiceError(str(exc.detail))
        service_error.status_code, service_error.error_type, service_error.code = exc.status_code, error_type, code
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
