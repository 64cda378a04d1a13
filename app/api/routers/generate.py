"""POST /v1/generate: completion of a raw prompt, whole or streamed."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from app.api.dependencies import GenerationServiceDep, ReadyModelDep, RequestIdDep, SettingsDep
from app.api.schemas import GenerateRequest, GenerateResponse, Usage
from app.api.streaming import respond
from app.services.generation import Completion

router = APIRouter(tags=["generate"])


@router.post("/v1/generate", response_model=GenerateResponse)
async def generate(
    body: GenerateRequest,
    request: Request,
    ready: ReadyModelDep,
    generation: GenerationServiceDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> Any:
    body.check_prompt_size(settings.security.max_prompt_chars)
    prompt = generation.check_input(body.prompt, "prompt")
    prompt_ids = await asyncio.to_thread(ready.prompts.encode_prompt, prompt)  # long prompts: off the loop
    run = generation.start(request_id, prompt_ids, body.to_sampling_params(settings.model), log_prompt=prompt)

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
