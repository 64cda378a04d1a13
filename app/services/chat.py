"""Chat turns: checked messages (after a session's history) -> one prompt -> a run per choice; committed on success."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from app.engine.types import ChatMessage, SamplingParams
from app.model.chat_format import PromptBuilder
from app.services.generation import Choice, Completion, GenerationRun, GenerationService
from app.services.sessions import SessionStore


class ChatService:
    def __init__(self, sessions: SessionStore, prompts: PromptBuilder, generation: GenerationService) -> None:
        self._sessions = sessions
        self._prompts = prompts
        self._generation = generation

    async def start(
        self,
        request_id: str,
        messages: Sequence[ChatMessage],
        choices: Sequence[SamplingParams],
        *,
        session_id: str | None = None,
        owner: str | None = None,
        param: str = "messages",
    ) -> list[GenerationRun]:
        """Check the new messages (their total size, `param` naming the field, then PII), render
        and tokenise the prompt once, and admit one run per choice, all or none.

        With a session (one choice only): the session is held from here until the run ends or is
        closed (a turn already running on it is waited for, see SessionStore.begin_turn), and its
        history changes only if the answer completes."""
        # The limit bounds what the caller sends; a session's stored history is the server's own.
        self._generation.check_prompt_size(sum(len(m.content) for m in messages), param)
        checked = [
            ChatMessage(m.role, self._generation.check_input(m.content, f"messages.{i}.content"))
            for i, m in enumerate(messages)
        ]
        if session_id is not None:
            if len(choices) != 1:
                raise ValueError("a session turn has exactly one choice")
            return [await self._start_turn(request_id, checked, choices[0], session_id, owner)]
        # Choices differ in their seed only, so they share one prompt.
        prompt = await asyncio.to_thread(self._prompts.build_chat, (), checked, choices[0].max_tokens)
        log_prompt = _log_prompt(checked)
        return await self._generation.start_choices(
            request_id,
            [Choice(prompt.prompt_ids, params, log_prompt, counts_prompt=i == 0) for i, params in enumerate(choices)],
        )

    async def _start_turn(
        self, request_id: str, messages: list[ChatMessage], params: SamplingParams, session_id: str, owner: str | None
    ) -> GenerationRun:
        turn = await self._sessions.begin_turn(session_id, owner)
        try:
            prompt = await asyncio.to_thread(self._prompts.build_chat, turn.history, messages, params.max_tokens)
            kept = prompt.kept_history

            async def commit(completion: Completion) -> None:
                answer = ChatMessage("assistant", completion.text)
                await turn.commit([*kept, *messages, answer])

            return await self._generation.start(
                request_id,
                prompt.prompt_ids,
                params,
                log_prompt=_log_prompt(messages),
                on_success=commit,
                on_close=turn.end,
            )
        except BaseException:
            turn.end()
            raise


def _log_prompt(messages: Sequence[ChatMessage]) -> str:
    return "\n".join(m.content for m in messages)
