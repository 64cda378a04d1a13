"""POST /v1/responses: OpenAI's Responses API (text in, text out) over the service layer."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request

from app.api.collect import collect_unless_disconnected, mark_cache_result
from app.api.dependencies import ChatServiceDep, ReadyModelDep, RequestIdDep, SettingsDep
from app.api.errors import OpenAIRoute
from app.api.idempotency import IDEMPOTENT
from app.api.openai.models import ResponseHead
from app.api.openapi import GENERATION_ERRORS, IDEMPOTENCY_ERRORS, error_responses
from app.api.responses.models import ResponseObject, ResponseRequest, response_object
from app.api.responses.stream import ResponseEvents, responses_sse

router = APIRouter(tags=["openai"], route_class=OpenAIRoute)


@router.post(
    "/v1/responses",
    response_model=ResponseObject,
    responses=error_responses(*GENERATION_ERRORS, *IDEMPOTENCY_ERRORS, sse=True),
    dependencies=IDEMPOTENT,
)
async def create_response(
    body: ResponseRequest,
    request: Request,
    chat_service: ChatServiceDep,
    ready: ReadyModelDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> Any:
    [run] = await chat_service.start(
        request_id, body.to_messages(), [body.to_sampling_params(settings.model)], param="input"
    )
    mark_cache_result(request, run.cached)
    head = ResponseHead.new("resp_", ready.info.served_name)
    message_id = f"msg_{uuid.uuid4().hex}"
    if body.stream:
        return responses_sse(run, ResponseEvents(head, message_id, body), request, settings.engine.sse_ping_s)
    return response_object(head, message_id, body, await collect_unless_disconnected(run, request))
