"""Chat turns: stored history + new messages -> prompt; the turn is committed only on success."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from app.engine.types import ChatMessage, SamplingParams
from app.model.chat_format import PromptBuilder
from app.services.generation import Completion, GenerationRun, GenerationService
from app.services.sessions import SessionStore


class ChatService:
    def __init__(self, sessions: SessionStore, prompts: PromptBuilder, generation: GenerationService) -> None:
        self._sessions = sessions
        self._prompts = prompts
        self._generation = generation

    def check_messages(self, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
        """The messages as the model may see them (PII redacted, or PIIBlocked)."""
        return [
            ChatMessage(m.role, self._generation.check_input(m.content, f"messages.{i}.content"))
            for i, m in enumerate(messages)
        ]

    async def start_turn(
        self,
        request_id: str,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        session_id: str | None = None,
        owner: str | None = None,
    ) -> GenerationRun:
        """Admit one turn of already checked messages. With a session, its lock is held until
        the run ends or is closed, and history changes only if the answer completes."""
        log_prompt = "\n".join(m.content for m in messages)
        if session_id is None:
            prompt = await asyncio.to_thread(self._prompts.build_chat, (), messages, params.max_tokens)
            return self._generation.start(request_id, prompt.prompt_ids, params, log_prompt=log_prompt)
        session = self._sessions.get_or_create(session_id, owner)
        await session.lock.acquire()

        def end_turn() -> None:
            self._sessions.forget_if_uncommitted(session)
            session.lock.release()

        try:
            prompt = await asyncio.to_thread(self._prompts.build_chat, session.messages, messages, params.max_tokens)
            kept = prompt.kept_history

            async def commit(completion: Completion) -> None:
                answer = ChatMessage("assistant", completion.text)
                self._sessions.replace_history(session, [*kept, *messages, answer])

            return self._generation.start(
                request_id, prompt.prompt_ids, params, log_prompt=log_prompt, on_success=commit, on_close=end_turn
            )
        except BaseException:
            end_turn()
            raise
