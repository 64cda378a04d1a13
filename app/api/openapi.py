"""The OpenAPI document: the answers each route declares besides its 200, and the corrections
FastAPI's generator needs to describe what the server really does."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI

from app.api.errors import OPENAI_ROUTE_MARK, ErrorResponse
from app.services.templates import PromptTemplate

IDEMPOTENCY_HEADER = "Idempotency-Key"

Responses = dict[int | str, dict[str, Any]]

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "A bad request the schema cannot express: malformed JSON, a prompt longer than the model's "
    "context, personal data refused (`pii.mode: block`), a reserve (prompt + max_tokens) larger than the "
    "caller's whole token budget; on OpenAI routes also any schema violation.",
    401: "Missing or wrong API key.",
    403: "The key may not do this (e.g. read another key's usage without being in `security.admin_keys`).",
    404: "Unknown resource.",
    409: (
        "A request with the same `Idempotency-Key`, or another turn of the same chat session, is still "
        "running: retry after `Retry-After`."
    ),
    413: "Prompt longer than `security.max_prompt_chars`, or body over `security.max_body_bytes`.",
    422: "The request does not match the schema (`param` names the field), or its `Idempotency-Key` "
    "was used for another request (`idempotency_key_reused`).",
    429: "Rate limited (request rate, token budget `token_rate_limited`, or daily quota `quota_exceeded`): "
    "retry after `Retry-After` seconds.",
    500: "An unexpected failure (never a stack trace).",
    503: (
        "Model loading or unhealthy, engine overloaded (queue full), shutting down, or the shared state "
        "store (Redis) unreachable (`state_unavailable`): retry after `Retry-After`."
    ),
    504: "Generation exceeded `engine.request_timeout_s`.",
}


def _header(description: str, kind: str = "string", required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": kind}}


RETRY_AFTER = _header("Seconds to wait before retrying.", "integer")
_RATE_LIMIT_HEADERS = {
    "X-RateLimit-Limit": _header("The caller's bucket capacity.", "integer"),
    "X-RateLimit-Remaining": _header("Whole requests left in the bucket.", "integer"),
    "X-RateLimit-Reset": _header("Seconds until the bucket is full again.", "integer"),
    "X-RateLimit-Limit-Tokens": _header("The caller's token budget per minute (when one is set).", "integer"),
    "X-RateLimit-Remaining-Tokens": _header("Whole tokens left in the budget.", "integer"),
    "X-RateLimit-Reset-Tokens": _header("Seconds until the token budget is full again.", "integer"),
}
ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": _header("How to authenticate: `Bearer`.")},
    409: {"Retry-After": RETRY_AFTER},
    429: {"Retry-After": RETRY_AFTER, **_RATE_LIMIT_HEADERS},
    503: {"Retry-After": RETRY_AFTER},
}

ALWAYS_SENT_HEADERS: dict[str, Any] = {
    "X-Request-ID": _header("The request's id: the client's own if well-formed, else a fresh one.", required=True),
    "X-Process-Time": _header("Seconds the server took until the answer began.", required=True),
}

SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
}
"""One Server-Sent Event, as FastAPI describes its own streams (`itemSchema`: each event)."""
SSE_ANSWER: dict[str, Any] = {
    "description": "The answer; with `stream: true` a stream of Server-Sent Events.",
    "content": {"text/event-stream": {"itemSchema": SSE_EVENT}},
}


def error_responses(*statuses: int, sse: bool = False) -> Responses:
    """`responses=` for a route that may answer these error statuses, each with the error body;
    `sse` adds the event-stream form of the 200 answer (`stream: true`)."""
    responses: Responses = {
        status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]}
        | ({"headers": ERROR_HEADERS[status]} if status in ERROR_HEADERS else {})
        for status in statuses
    }
    if sse:
        responses[200] = SSE_ANSWER
    return responses


GENERATION_ERRORS = (400, 413, 503, 504)
"""What every generating route may answer besides its protocol's schema-violation status."""
KEY_REUSED = "The `Idempotency-Key` was used for another request (`idempotency_key_reused`)."
IDEMPOTENCY_ERRORS = (409, 422)
"""What a route that honours `Idempotency-Key` may answer: still running, or the key reused."""
PROTECTED_ERRORS = (401, 429)
"""What every route behind the API key may answer."""


SECURITY_SCHEMES: dict[str, Any] = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "Bearer": {"type": "http", "scheme": "bearer"},
}
"""The two ways to present a key; either will do."""


def install_openapi(app: FastAPI, keys_required: bool, templates: Iterable[PromptTemplate] = ()) -> None:
    """Build the document on first use as FastAPI does, then correct it: OpenAI routes answer 400
    for a schema violation, never the 422 FastAPI adds to every route with parameters; the headers
    every answer carries are stated once for all; when API keys are configured, every route
    that may answer 401 names the key as its security requirement; and each template's
    variables are stated for requests that name it."""
    generate = app.openapi
    template_rules = [_template_rule(template) for template in templates]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    _correct(operation, keys_required)
            _drop_unused_validation_schemas(schema)
            _state_template_variables(schema, template_rules)
            if keys_required:
                schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _correct(operation: dict[str, Any], keys_required: bool) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    idempotent = any(p.get("name") == IDEMPOTENCY_HEADER for p in operation.get("parameters", []))
    if operation.pop(OPENAI_ROUTE_MARK, False):
        # An OpenAI route says 400 for a schema violation; 422 only for a reused Idempotency-Key.
        if idempotent and "422" in responses:
            responses["422"]["description"] = KEY_REUSED
        else:
            responses.pop("422", None)
    for response in responses.values():
        response.setdefault("headers", {}).update(ALWAYS_SENT_HEADERS)
    if keys_required and "401" in responses:
        operation["security"] = [{name: []} for name in SECURITY_SCHEMES]


def _drop_unused_validation_schemas(schema: dict[str, Any]) -> None:
    """FastAPI's own 422 body, once no route refers to it (every route here declares its errors)."""
    components = schema.get("components", {}).get("schemas", {})
    if "#/components/schemas/HTTPValidationError" not in json.dumps(schema.get("paths", {})):
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)


def _template_rule(template: PromptTemplate) -> dict[str, Any]:
    """If a request names this template, its `variables` are the ones the template declares."""
    variables = template.variables_schema()
    then: dict[str, Any] = {"properties": {"variables": variables}}
    if variables["required"]:
        then["required"] = ["variables"]
    return {
        "if": {"properties": {"template_id": {"const": template.spec.id}}, "required": ["template_id"]},
        "then": then,
    }


def _state_template_variables(schema: dict[str, Any], rules: list[dict[str, Any]]) -> None:
    """Every request body that takes `template_id` gets one rule per loaded template."""
    for component in schema.get("components", {}).get("schemas", {}).values():
        if rules and "template_id" in component.get("properties", {}):
            component.setdefault("allOf", []).extend(rules)
