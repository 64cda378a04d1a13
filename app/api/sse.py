"""SSE plumbing of the protocol streams: headers and keep-alives, and one policy for failures mid-stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

from fastapi import Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.errors import record_rejection
from app.api.idempotency import mark_unstorable
from app.core.errors import GenerationFailed, ServiceError

logger = logging.getLogger("app.api.sse")

ErrorEvent = Callable[[ServiceError], ServerSentEvent]
"""A protocol's own event for a failure after the stream began."""


def sse_response(events: AsyncGenerator[ServerSentEvent, None], ping_s: float) -> EventSourceResponse:
    return EventSourceResponse(events, ping=ping_s, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def guarded(
    events: AsyncGenerator[ServerSentEvent, None],
    error_event: ErrorEvent,
    request: Request,
    closing: ServerSentEvent | None = None,
) -> AsyncGenerator[ServerSentEvent, None]:
    """Pass the events on. A failure becomes one error event, then `closing` ends the stream as
    it would have; a client that goes away closes `events` (aborting its generation) at once."""
    async with aclosing(events):
        try:
            async for event in events:
                yield event
        except ServiceError as exc:
            record_rejection(request, exc)  # the response began: the HTTP mapping never sees this one
            mark_unstorable(request.scope)
            yield error_event(exc)
        except (asyncio.CancelledError, GeneratorExit):
            logger.info("client disconnected; generation aborted")
            mark_unstorable(request.scope)
            raise
        except Exception:
            logger.exception("stream failed")
            mark_unstorable(request.scope)
            yield error_event(GenerationFailed("generation failed"))
    if closing is not None:
        yield closing
