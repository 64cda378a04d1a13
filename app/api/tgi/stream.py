"""TGI's SSE: one `data: {token event}` line per text delta, the last carrying `generated_text`.

No [DONE] line (TGI sends none). A failure after the stream began is TGI's error event,
`data: {"error": message, "error_type": …}`, which huggingface_hub raises as its own
exception classes; a client that goes away aborts the generation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

from fastapi import Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.sse import guarded, sse_response
from app.api.tgi.models import TGIRequest, TGIStreamDetails, TGIStreamEvent, TGIToken
from app.core.errors import ServiceError
from app.core.request_context import current_request_id
from app.services.generation import GenerationRun


def tgi_sse(run: GenerationRun, body: TGIRequest, request: Request, ping_s: float) -> EventSourceResponse:
    return sse_response(guarded(_events(run, body), _error_event, request), ping_s)


async def _events(run: GenerationRun, body: TGIRequest) -> AsyncGenerator[ServerSentEvent, None]:
    index = 0
    try:
        async for text in run:
            index += 1
            yield _data(TGIStreamEvent(index=index, token=TGIToken(text=text)))
        completion = run.completion
        assert completion is not None
        params = body.parameters
        details = TGIStreamDetails(
            finish_reason=params.finish_reason(completion.finish_reason),
            generated_tokens=completion.completion_tokens,
            seed=params.seed,
            input_length=completion.prompt_tokens,
        )
        prefix = body.inputs if params.return_full_text else ""
        yield _data(
            TGIStreamEvent(
                index=index + 1,
                token=TGIToken(text="", special=True),
                generated_text=prefix + completion.text,
                details=details if params.details else None,
            )
        )
    finally:
        await run.aclose()


def _data(event: TGIStreamEvent) -> ServerSentEvent:
    return ServerSentEvent(data=event.model_dump_json())


def _error_type(exc: ServiceError) -> str:
    if exc.status_code == 503:
        return "overloaded"
    return "validation" if exc.status_code < 500 else "generation"


def _error_event(exc: ServiceError) -> ServerSentEvent:
    body = {"error": exc.message, "error_type": _error_type(exc), "request_id": current_request_id()}
    return ServerSentEvent(data=json.dumps(body, ensure_ascii=False))
