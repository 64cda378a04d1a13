"""OpenAI's SSE: `data: {chunk}` lines (no event names) ending with `data: [DONE]`.

A failure after the stream began is one `data: {"error": …}` line before [DONE]; a client
that goes away aborts every run of the request (STYLE practices 9 and 10).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.choices import Delta, merge_runs
from app.api.errors import error_body
from app.core.errors import GenerationFailed, ServiceError
from app.services.generation import Completion, GenerationRun

logger = logging.getLogger("app.api.openai_streaming")


class ChunkMaker(Protocol):
    def opening(self) -> Sequence[BaseModel]: ...

    def delta(self, index: int, text: str) -> BaseModel: ...

    def finished(self, index: int, completion: Completion) -> BaseModel: ...

    def usage(self, completions: Sequence[Completion]) -> BaseModel: ...


def openai_sse(
    runs: Sequence[GenerationRun], chunks: ChunkMaker, include_usage: bool, ping_s: float
) -> EventSourceResponse:
    return EventSourceResponse(
        _events(runs, chunks, include_usage),
        ping=ping_s,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    runs: Sequence[GenerationRun], chunks: ChunkMaker, include_usage: bool
) -> AsyncIterator[ServerSentEvent]:
    # OpenAI sends `usage: null` on every chunk only when the usage chunk was asked for.
    exclude = None if include_usage else {"usage"}
    try:
        for chunk in chunks.opening():
            yield ServerSentEvent(data=chunk.model_dump_json(exclude=exclude))
        completions: dict[int, Completion] = {}
        async for event in merge_runs(runs):
            if isinstance(event, Delta):
                chunk = chunks.delta(event.index, event.text)
            else:
                completions[event.index] = event.completion
                chunk = chunks.finished(event.index, event.completion)
            yield ServerSentEvent(data=chunk.model_dump_json(exclude=exclude))
        if include_usage:
            in_order = [completions[index] for index in sorted(completions)]
            yield ServerSentEvent(data=chunks.usage(in_order).model_dump_json())
    except ServiceError as exc:
        yield _error_event(exc)
    except (asyncio.CancelledError, GeneratorExit):
        logger.info("client disconnected; generation aborted")
        raise
    except Exception:
        logger.exception("stream failed")
        yield _error_event(GenerationFailed("generation failed"))
    yield ServerSentEvent(data="[DONE]")


def _error_event(exc: ServiceError) -> ServerSentEvent:
    body: dict[str, Any] = error_body(exc)
    return ServerSentEvent(data=json.dumps(body, ensure_ascii=False))
