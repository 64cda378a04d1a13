"""How a generation run reaches the client: SSE events (token/done/error) or one JSON body.

Both paths abort the generation when the client goes away (STYLE practice 9).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

from fastapi import Request
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api import sse
from app.api.errors import error_body
from app.api.guard import add_response_headers
from app.core.errors import ServiceError
from app.services.generation import Completion, GenerationRun

logger = logging.getLogger("app.api.streaming")

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


def mark_cache_result(request: Request, cached: bool) -> None:
    add_response_headers(request, {"X-Cache": "HIT" if cached else "MISS"})


def sse_response(
    run: GenerationRun, build_done: ResponseBuilder, request: Request, ping_s: float
) -> EventSourceResponse:
    mark_cache_result(request, run.cached)
    return sse.sse_response(sse.guarded(_events(run, build_done), _error_event), ping_s)


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


async def collect_unless_disconnected(run: GenerationRun, request: Request) -> Completion:
    """Run to completion, aborting the generation if the client disconnects first."""
    collect = asyncio.ensure_future(run.collect())
    watch = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
        if collect in done:
            return collect.result()
        logger.info("client disconnected; generation aborted")
        collect.cancel()
        raise asyncio.CancelledError
    finally:
        watch.cancel()
        if not collect.done():
            collect.cancel()
        await run.aclose()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
