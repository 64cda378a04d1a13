"""Completions of raw prompts (/v1/generate, OpenAI's /v1/completions, TGI): checked, tokenised once, run per choice."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from app.engine.types import SamplingParams
from app.model.chat_format import PromptBuilder
from app.services.generation import Choice, GenerationRun, GenerationService


@dataclass(frozen=True)
class PromptRuns:
    prompts: list[str]
    """The prompts as the model saw them (PII redacted), in request order: what echoes repeat."""
    runs: list[GenerationRun]
    """One run per prompt and choice, the choices of the first prompt first."""


class CompletionService:
    def __init__(self, generation: GenerationService, prompts: PromptBuilder) -> None:
        self._generation = generation
        self._prompts = prompts

    async def start(
        self, request_id: str, prompts: Sequence[str], choices: Sequence[SamplingParams], *, param: str = "prompt"
    ) -> PromptRuns:
        """Check every prompt (size, then PII, `param` naming the field), then admit one run per
        prompt and choice, all or none (see `GenerationService.start_choices`)."""
        for prompt in prompts:
            self._generation.check_prompt_size(len(prompt), param)
        checked = [self._generation.check_input(prompt, param) for prompt in prompts]
        # Tokenising a long prompt takes a while: off the event loop.
        encoded = await asyncio.to_thread(lambda: [self._prompts.encode_prompt(prompt) for prompt in checked])
        choice_list = [
            Choice(prompt_ids, params, log_prompt=prompt, counts_prompt=index == 0)
            for prompt, prompt_ids in zip(checked, encoded, strict=True)
            for index, params in enumerate(choices)
        ]
        runs = await self._generation.start_choices(request_id, choice_list)
        return PromptRuns(prompts=checked, runs=runs)
