"""POST /v1/chat/completions and /v1/completions: the OpenAI API over the service layer."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request

from app.api.choices import collect_all
from app.api.dependencies import ChatServiceDep, GenerationServiceDep, ReadyModelDep, RequestIdDep, SettingsDep
from app.api.errors import OpenAIRoute
from app.api.openai_responses import ChatChunks, CompletionChunks, chat_completion, text_completion
from app.api.openai_schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    ResponseHead,
    TextCompletion,
)
from app.api.openai_streaming import openai_sse
from app.api.runs import RunStarter, start_chat_run, start_prompt_run, start_runs
from app.api.streaming import mark_cache_result

router = APIRouter(tags=["openai"], route_class=OpenAIRoute)


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    chat_service: ChatServiceDep,
    ready: ReadyModelDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> Any:
    body.check_prompt_size(settings.security.max_prompt_chars)
    messages = chat_service.check_messages(body.to_messages())
    starters: list[RunStarter] = [
        partial(start_chat_run, chat_service, messages=messages, params=params)
        for params in body.choice_params(settings.model)
    ]
    runs = await start_runs(starters, request_id)
    mark_cache_result(request, all(run.cached for run in runs))
    head = ResponseHead.new("chatcmpl-", ready.info.served_name)
    if body.stream:
        return openai_sse(runs, ChatChunks(head, body.n), body.include_usage, settings.engine.sse_ping_s)
    return chat_completion(head, await collect_all(runs, request), body.n)


@router.post("/v1/completions", response_model=TextCompletion)
async def completions(
    body: CompletionRequest,
    request: Request,
    ready: ReadyModelDep,
    generation: GenerationServiceDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> Any:
    body.check_prompt_size(settings.security.max_prompt_chars)
    body = body.model_copy(update={"prompt": [generation.check_input(p, "prompt") for p in body.prompts]})
    choice_params = body.choice_params(settings.model)
    starters: list[RunStarter] = [
        partial(start_prompt_run, generation, ready.prompts, prompt=prompt, params=params)
        for prompt in body.prompts
        for params in choice_params
    ]
    runs = await start_runs(starters, request_id)
    mark_cache_result(request, all(run.cached for run in runs))
    head = ResponseHead.new("cmpl-", ready.info.served_name)
    if body.stream:
        chunks = CompletionChunks(head, body.prompts, body.n, body.echo)
        return openai_sse(runs, chunks, body.include_usage, settings.engine.sse_ping_s)
    return text_completion(head, body.prompts, await collect_all(runs, request), body.n, body.echo)
