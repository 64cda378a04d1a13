"""Where the protocol routers (OpenAI, TGI) enter the service layer: one helper per kind of run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from app.engine.types import ChatMessage, SamplingParams
from app.model.chat_format import PromptBuilder
from app.services.chat import ChatService
from app.services.generation import GenerationRun, GenerationService

RunStarter = Callable[[str], Awaitable[GenerationRun]]
"""Starts one run under the engine request id it is given."""


async def start_prompt_run(
    generation: GenerationService, prompts: PromptBuilder, request_id: str, prompt: str, params: SamplingParams
) -> GenerationRun:
    """A completion of an already checked (PII-redacted) raw prompt, as POST /v1/generate runs it."""
    prompt_ids = await asyncio.to_thread(prompts.encode_prompt, prompt)  # long prompts: off the loop
    return generation.start(request_id, prompt_ids, params, log_prompt=prompt)


async def start_chat_run(
    chat: ChatService, request_id: str, messages: Sequence[ChatMessage], params: SamplingParams
) -> GenerationRun:
    """A chat turn of already checked messages without a session, as POST /v1/chat runs it."""
    return await chat.start_turn(request_id, messages, params)


def choice_request_id(request_id: str, index: int) -> str:
    """The engine's id of one choice: the request's own id for the first, suffixed for the others."""
    return request_id if index == 0 else f"{request_id}.{index}"


async def start_runs(starters: Sequence[RunStarter], request_id: str) -> list[GenerationRun]:
    """Admit one run per starter; if one cannot be admitted, those already admitted are closed."""
    runs: list[GenerationRun] = []
    try:
        for index, start in enumerate(starters):
            runs.append(await start(choice_request_id(request_id, index)))
    except BaseException:
        for run in runs:
            await run.aclose()
        raise
    return runs
