"""The native API: POST /v1/generate, POST /v1/chat and the session resource
GET/DELETE /v1/chat/sessions/{session_id}."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from app.api.dependencies import (
    ChatServiceDep,
    CompletionServiceDep,
    ReadyModelDep,
    RequestIdDep,
    SessionsDep,
    SettingsDep,
    TemplateRendererDep,
)
from app.api.guard import CallerNameDep
from app.api.idempotency import IDEMPOTENT
from app.api.native.models import (
    SESSION_ID_PATTERN,
    ChatMessageOut,
    ChatRequest,
    ChatResponse,
    GenerateRequest,
    GenerateResponse,
    SessionResponse,
    Usage,
)
from app.api.native.stream import respond
from app.api.openapi import GENERATION_ERRORS, IDEMPOTENCY_ERRORS, error_responses
from app.services.generation import Completion

router = APIRouter(tags=["native"])


@router.post(
    "/v1/generate",
    response_model=GenerateResponse,
    responses=error_responses(*GENERATION_ERRORS, *IDEMPOTENCY_ERRORS, 404, sse=True),
    dependencies=IDEMPOTENT,
)
async def generate(
    body: GenerateRequest,
    request: Request,
    ready: ReadyModelDep,
    completions: CompletionServiceDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
    templates: TemplateRendererDep,
) -> Any:
    defaults = templates.sampling_defaults(body.template_id, settings.model)
    source = body.prompt if body.template_id is None else templates.prompt(body.template_id, body.variables)
    assert source is not None  # the request holds exactly one of the two
    started = await completions.start(request_id, [source], [body.to_sampling_params(defaults)])
    [prompt], [run] = started.prompts, started.runs

    def build(completion: Completion) -> GenerateResponse:
        return GenerateResponse(
            generated_text=completion.text,
            prompt=prompt,
            model=ready.info.served_name,
            tokens_generated=completion.completion_tokens,
            finish_reason=completion.finish_reason,
            cached=completion.cached,
            usage=Usage.of(completion),
            request_id=request_id,
        )

    return await respond(run, build, request, body.stream, settings.engine.sse_ping_s)


SessionIdPath = Annotated[str, Path(pattern=SESSION_ID_PATTERN)]


@router.post(
    "/v1/chat",
    response_model=ChatResponse,
    responses=error_responses(*GENERATION_ERRORS, *IDEMPOTENCY_ERRORS, 404, sse=True),
    dependencies=IDEMPOTENT,
)
async def chat(
    body: ChatRequest,
    request: Request,
    chat_service: ChatServiceDep,
    ready: ReadyModelDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
    caller: CallerNameDep,
    templates: TemplateRendererDep,
) -> Any:
    messages = templates.chat(body.template_id, body.variables, [m.to_message() for m in body.messages])
    defaults = templates.sampling_defaults(body.template_id, settings.model)
    [run] = await chat_service.start(
        request_id,
        messages,
        [body.to_sampling_params(defaults)],
        session_id=body.session_id,
        owner=caller,
    )

    def build(completion: Completion) -> ChatResponse:
        return ChatResponse(
            message=ChatMessageOut(role="assistant", content=completion.text),
            model=ready.info.served_name,
            tokens_generated=completion.completion_tokens,
            finish_reason=completion.finish_reason,
            cached=completion.cached,
            session_id=body.session_id,
            usage=Usage.of(completion),
            request_id=request_id,
        )

    return await respond(run, build, request, body.stream, settings.engine.sse_ping_s)


@router.get("/v1/chat/sessions/{session_id}", response_model=SessionResponse, responses=error_responses(404, 422, 503))
async def read_session(session_id: SessionIdPath, sessions: SessionsDep, caller: CallerNameDep) -> SessionResponse:
    session = await sessions.get(session_id, owner=caller)
    return SessionResponse(
        session_id=session.session_id,
        messages=[ChatMessageOut(role=m.role, content=m.content) for m in session.messages],
        expires_at=session.expires_at,
    )


@router.delete("/v1/chat/sessions/{session_id}", status_code=204, responses=error_responses(404, 422, 503))
async def delete_session(session_id: SessionIdPath, sessions: SessionsDep, caller: CallerNameDep) -> Response:
    await sessions.delete(session_id, owner=caller)
    return Response(status_code=204)
