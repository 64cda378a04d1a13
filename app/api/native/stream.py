"""How a native endpoint answers a run: SSE events (token, then done or error) or one JSON body.

Both paths abort the generation when the client goes away, so no batch slot is spent on nobody.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

from fastapi import Request
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api import sse
from app.api.collect import collect_unless_disconnected, mark_cache_result
from app.api.errors import error_body
from app.core.errors import ServiceError
from app.services.generation import Completion, GenerationRun

ResponseBuilder = Callable[[Completion], BaseModel]


async def respond(
    run: GenerationRun, build: ResponseBuilder, request: Request, stream: bool, ping_s: float
) -> BaseModel | EventSourceResponse:
    """The one way a native endpoint answers a run: SSE events, or the whole body once done."""
    if stream:
        return sse_response(run, build, request, ping_s)
    completion = await collect_unless_disconnected(run, request)
    mark_cache_result(request, completion.cached)
    return build(completion)


def sse_response(
    run: GenerationRun, build_done: ResponseBuilder, request: Request, ping_s: float
) -> EventSourceResponse:
    mark_cache_result(request, run.cached)
    return sse.sse_response(sse.guarded(_events(run, build_done), _error_event, request), ping_s)


async def _events(run: GenerationRun, build_done: ResponseBuilder) -> AsyncGenerator[ServerSentEvent, None]:
    try:
        async for text in run:
            yield ServerSentEvent(event="token", data=json.dumps({"text": text}, ensure_ascii=False))
        assert run.completion is not None
        yield ServerSentEvent(event="done", data=build_done(run.completion).model_dump_json())
    finally:
        await run.aclose()


def _error_event(exc: ServiceError) -> ServerSentEvent:
    body: dict[str, Any] = error_body(exc)
    return ServerSentEvent(event="error", data=json.dumps(body, ensure_ascii=False))
