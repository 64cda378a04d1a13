"""OpenAI's SSE: `data: {chunk}` lines (no event names) ending with `data: [DONE]`.

A failure after the stream began is one `data: {"error": …}` line before [DONE]; a client
that goes away aborts every run of the request at once, so no batch slot works for nobody.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any, Protocol

from fastapi import Request
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.collect import Delta, merge_runs
from app.api.errors import error_body
from app.api.sse import guarded, sse_response
from app.core.errors import ServiceError
from app.services.generation import Completion, GenerationRun


class ChunkMaker(Protocol):
    def opening(self) -> Sequence[BaseModel]: ...

    def delta(self, index: int, text: str) -> BaseModel: ...

    def finished(self, index: int, completion: Completion) -> BaseModel: ...

    def usage(self, completions: Sequence[Completion]) -> BaseModel: ...


def openai_sse(
    runs: Sequence[GenerationRun], chunks: ChunkMaker, include_usage: bool, request: Request, ping_s: float
) -> EventSourceResponse:
    done = ServerSentEvent(data="[DONE]")
    return sse_response(guarded(_chunks(runs, chunks, include_usage), _error_event, request, closing=done), ping_s)


async def _chunks(
    runs: Sequence[GenerationRun], chunks: ChunkMaker, include_usage: bool
) -> AsyncGenerator[ServerSentEvent, None]:
    # OpenAI sends `usage: null` on every chunk only when the usage chunk was asked for.
    exclude = None if include_usage else {"usage"}
    for chunk in chunks.opening():
        yield ServerSentEvent(data=chunk.model_dump_json(exclude=exclude))
    completions: dict[int, Completion] = {}
    async with aclosing(merge_runs(runs)) as events:
        async for event in events:
            if isinstance(event, Delta):
                chunk = chunks.delta(event.index, event.text)
            else:
                completions[event.index] = event.completion
                chunk = chunks.finished(event.index, event.completion)
            yield ServerSentEvent(data=chunk.model_dump_json(exclude=exclude))
    if include_usage:
        in_order = [completions[index] for index in sorted(completions)]
        yield ServerSentEvent(data=chunks.usage(in_order).model_dump_json())


def _error_event(exc: ServiceError) -> ServerSentEvent:
    body: dict[str, Any] = error_body(exc)
    return ServerSentEvent(data=json.dumps(body, ensure_ascii=False))
