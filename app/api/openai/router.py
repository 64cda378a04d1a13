"""The OpenAI API over the service layer: POST /v1/chat/completions, /v1/completions, and the
model list GET /v1/models[/{model_id}], which is the one served model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.api.collect import collect_all, mark_cache_result
from app.api.dependencies import (
    ChatServiceDep,
    CompletionServiceDep,
    ReadyModelDep,
    RequestIdDep,
    RuntimeDep,
    SettingsDep,
    TemplateRendererDep,
)
from app.api.errors import OpenAIRoute
from app.api.idempotency import IDEMPOTENT
from app.api.openai.build import ChatChunks, CompletionChunks, chat_completion, text_completion
from app.api.openai.models import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    ResponseHead,
    TextCompletion,
)
from app.api.openai.stream import openai_sse
from app.api.openapi import GENERATION_ERRORS, IDEMPOTENCY_ERRORS, error_responses
from app.core.errors import ModelNotFound
from app.model.runtime import ModelRuntime

router = APIRouter(tags=["openai"], route_class=OpenAIRoute)


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses=error_responses(*GENERATION_ERRORS, *IDEMPOTENCY_ERRORS, 404, sse=True),
    dependencies=IDEMPOTENT,
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    chat_service: ChatServiceDep,
    ready: ReadyModelDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
    templates: TemplateRendererDep,
) -> Any:
    messages = templates.chat(body.template_id, body.variables, body.to_messages())
    defaults = templates.sampling_defaults(body.template_id, settings.model)
    runs = await chat_service.start(request_id, messages, body.choice_params(defaults))
    mark_cache_result(request, all(run.cached for run in runs))
    head = ResponseHead.new("chatcmpl-", ready.info.served_name)
    if body.stream:
        return openai_sse(runs, ChatChunks(head, body.n), body.include_usage, request, settings.engine.sse_ping_s)
    return chat_completion(head, await collect_all(runs, request), body.n)


@router.post(
    "/v1/completions",
    response_model=TextCompletion,
    responses=error_responses(*GENERATION_ERRORS, *IDEMPOTENCY_ERRORS, 404, sse=True),
    dependencies=IDEMPOTENT,
)
async def completions(
    body: CompletionRequest,
    request: Request,
    ready: ReadyModelDep,
    completion_service: CompletionServiceDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
    templates: TemplateRendererDep,
) -> Any:
    defaults = templates.sampling_defaults(body.template_id, settings.model)
    sources = body.prompts if body.template_id is None else [templates.prompt(body.template_id, body.variables)]
    started = await completion_service.start(request_id, sources, body.choice_params(defaults))
    prompts, runs = started.prompts, started.runs  # prompts as the model saw them: what `echo` repeats
    mark_cache_result(request, all(run.cached for run in runs))
    head = ResponseHead.new("cmpl-", ready.info.served_name)
    if body.stream:
        chunks = CompletionChunks(head, prompts, body.n, body.echo)
        return openai_sse(runs, chunks, body.include_usage, request, settings.engine.sse_ping_s)
    return text_completion(head, prompts, await collect_all(runs, request), body.n, body.echo)


def _card(runtime: ModelRuntime) -> ModelCard:
    return ModelCard(id=runtime.served_name, created=int(runtime.started_at), owned_by="llm-fastapi-service")


@router.get("/v1/models", response_model=ModelList)
async def list_models(runtime: RuntimeDep) -> ModelList:
    return ModelList(data=[_card(runtime)])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=error_responses(404))
async def retrieve_model(model_id: str, runtime: RuntimeDep) -> ModelCard:
    if model_id != runtime.served_name:
        raise ModelNotFound(f"the model '{model_id}' does not exist; this server serves '{runtime.served_name}'",
                            param="model")  # fmt: skip
    return _card(runtime)
