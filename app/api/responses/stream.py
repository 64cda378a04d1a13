"""The Responses API's SSE: named, numbered events from `response.created` to `response.completed`
(or `response.incomplete`), text as `response.output_text.delta`; a failure after the stream
began is one `error` event."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import Request
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.openai.models import ResponseHead
from app.api.responses.models import OutputMessage, OutputText, ResponseRequest, message_status, response_object
from app.api.sse import guarded, sse_response
from app.core.errors import ServiceError
from app.core.request_context import current_request_id
from app.services.generation import GenerationRun


class ResponseEvents:
    """The events of one streamed response, numbered in the order they are made."""

    def __init__(self, head: ResponseHead, message_id: str, body: ResponseRequest) -> None:
        self.head = head
        self.message_id = message_id
        self.body = body
        self._sequence = 0

    def make(self, event_type: str, **fields: Any) -> ServerSentEvent:
        data = {key: v.model_dump() if isinstance(v, BaseModel) else v for key, v in fields.items()}
        data = {"type": event_type, "sequence_number": self._sequence, **data}
        self._sequence += 1
        return ServerSentEvent(event=event_type, data=json.dumps(data, ensure_ascii=False))

    def error(self, exc: ServiceError) -> ServerSentEvent:
        return self.make("error", code=exc.code, message=exc.message, param=exc.param, request_id=current_request_id())

    def at_text(self) -> dict[str, Any]:
        return {"item_id": self.message_id, "output_index": 0, "content_index": 0}


def responses_sse(run: GenerationRun, events: ResponseEvents, request: Request, ping_s: float) -> EventSourceResponse:
    return sse_response(guarded(_events(run, events), events.error, request), ping_s)


async def _events(run: GenerationRun, events: ResponseEvents) -> AsyncGenerator[ServerSentEvent, None]:
    try:
        started = response_object(events.head, events.message_id, events.body, None)
        yield events.make("response.created", response=started)
        yield events.make("response.in_progress", response=started)
        item = OutputMessage(id=events.message_id, status="in_progress", content=[])
        yield events.make("response.output_item.added", output_index=0, item=item)
        yield events.make("response.content_part.added", **events.at_text(), part=OutputText(text=""))
        async for text in run:
            yield events.make("response.output_text.delta", **events.at_text(), delta=text, logprobs=[])
        completion = run.completion
        assert completion is not None
        part = OutputText(text=completion.text)
        yield events.make("response.output_text.done", **events.at_text(), text=completion.text, logprobs=[])
        yield events.make("response.content_part.done", **events.at_text(), part=part)
        done = OutputMessage(id=events.message_id, status=message_status(completion), content=[part])
        yield events.make("response.output_item.done", output_index=0, item=done)
        finished = response_object(events.head, events.message_id, events.body, completion)
        yield events.make(f"response.{finished.status}", response=finished)
    finally:
        await run.aclose()
