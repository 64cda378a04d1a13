"""Prompts from messages with the tokenizer's own chat template, trimmed to the context window."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.core.errors import ContextLengthExceeded, InvalidRequest
from app.engine.types import ChatMessage

_PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@dataclass(frozen=True)
class ChatPrompt:
    prompt_ids: tuple[int, ...]
    kept_history: tuple[ChatMessage, ...]
    """The stored history that still fits, oldest messages dropped first."""


class PromptBuilder:
    """Turns raw prompts and chat turns into token ids, within the model's context window."""

    def __init__(self, tokenizer: Any, context_length: int, default_system_prompt: str | None) -> None:
        self._tokenizer = tokenizer
        self.context_length = context_length
        self._template = tokenizer.chat_template or _PLAIN_TEMPLATE
        self.supports_system = self._detect_system_role()
        self._default_system = default_system_prompt if self.supports_system else None

    def encode_prompt(self, prompt: str) -> tuple[int, ...]:
        ids = self._tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return self._check_fits(tuple(ids), reserve=1)

    def build_chat(self, history: Sequence[ChatMessage], new: Sequence[ChatMessage], reserve: int) -> ChatPrompt:
        """Render history + new messages, dropping whole history messages oldest-first until
        the prompt leaves `reserve` tokens (at most a quarter of the window) for the answer."""
        reserve = max(1, min(reserve, self.context_length // 4))
        kept = list(history)
        while True:
            ids = self._encode_chat([*kept, *new])
            if len(ids) + reserve <= self.context_length or not kept:
                return ChatPrompt(self._check_fits(ids, reserve=1), tuple(kept))
            kept = _drop_oldest_turn(kept)

    def _encode_chat(self, messages: Sequence[ChatMessage]) -> tuple[int, ...]:
        text = self.render(self._apply_system_policy(messages))
        return tuple(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: Sequence[ChatMessage]) -> str:
        try:
            rendered = self._tokenizer.apply_chat_template(
                [{"role": m.role, "content": m.content} for m in messages],
                chat_template=self._template,
                tokenize=False,
                add_generation_prompt=True,
            )
        except Exception as exc:  # jinja raises for conversations a template refuses
            raise InvalidRequest(f"the model's chat template rejected the messages: {exc}", param="messages") from exc
        return str(rendered)

    def _apply_system_policy(self, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
        """Add the default system prompt; fold system text into the first user turn where the
        template has no system role of its own."""
        result = list(messages)
        has_system = any(m.role == "system" for m in result)
        if not has_system and self._default_system:
            return [ChatMessage("system", self._default_system), *result]
        if self.supports_system or not has_system:
            return result
        system_text = "\n\n".join(m.content for m in result if m.role == "system")
        rest = [m for m in result if m.role != "system"]
        for index, message in enumerate(rest):
            if message.role == "user":
                rest[index] = ChatMessage("user", f"{system_text}\n\n{message.content}")
                return rest
        return [ChatMessage("user", system_text), *rest]

    def _detect_system_role(self) -> bool:
        """True when the template renders a system turn as its own (not folded into the user's)."""
        probe_system, probe_user = "SYSTEM-PROBE", "USER-PROBE"
        try:
            with_system = self.render([ChatMessage("system", probe_system), ChatMessage("user", probe_user)])
            folded = self.render([ChatMessage("user", f"{probe_system}\n\n{probe_user}")])
        except InvalidRequest:
            return False
        return probe_system in with_system and with_system != folded

    def _check_fits(self, ids: tuple[int, ...], reserve: int) -> tuple[int, ...]:
        if len(ids) + reserve > self.context_length:
            raise ContextLengthExceeded(
                f"prompt is {len(ids)} tokens; the model's context window is {self.context_length}"
            )
        return ids


def _drop_oldest_turn(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Drop the oldest non-system message, and an assistant reply left leading the history."""
    index = next((i for i, m in enumerate(messages) if m.role != "system"), None)
    if index is None:
        return messages[1:]
    rest = messages[:index] + messages[index + 1 :]
    while index < len(rest) and rest[index].role == "assistant":
        rest.pop(index)
    return rest
