"""Completions -> OpenAI response bodies, and text deltas -> OpenAI stream chunks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.api.openai.models import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    CompletionChoice,
    ResponseHead,
    TextCompletion,
    total_usage,
)
from app.services.generation import Completion


@dataclass(frozen=True)
class ChatChunks:
    """The chunks of one streamed chat completion with `n` choices."""

    head: ResponseHead
    n: int

    def _chunk(self, choices: list[ChatChunkChoice]) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.head.id, created=self.head.created, model=self.head.model, choices=choices)

    def opening(self) -> list[ChatCompletionChunk]:
        """OpenAI's first chunk of each choice carries the role."""
        return [
            self._chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
            for i in range(self.n)
        ]

    def delta(self, index: int, text: str) -> ChatCompletionChunk:
        return self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(content=text))])

    def finished(self, index: int, completion: Completion) -> ChatCompletionChunk:
        return self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=completion.finish_reason)])

    def usage(self, completions: Sequence[Completion]) -> ChatCompletionChunk:
        chunk = self._chunk([])
        chunk.usage = total_usage(completions, self.n)
        return chunk


def chat_completion(head: ResponseHead, completions: Sequence[Completion], n: int) -> ChatCompletion:
    choices = [
        ChatChoice(index=i, message=AssistantMessage(content=c.text), finish_reason=c.finish_reason)
        for i, c in enumerate(completions)
    ]
    return ChatCompletion(
        id=head.id, created=head.created, model=head.model, choices=choices, usage=total_usage(completions, n)
    )


@dataclass(frozen=True)
class CompletionChunks:
    """The chunks of one streamed (legacy) completion: `n` choices for each prompt, in prompt order."""

    head: ResponseHead
    prompts: Sequence[str]
    n: int
    echo: bool

    def _chunk(self, choices: list[CompletionChoice]) -> TextCompletion:
        return TextCompletion(id=self.head.id, created=self.head.created, model=self.head.model, choices=choices)

    def opening(self) -> list[TextCompletion]:
        """With `echo`, each choice starts with its prompt."""
        if not self.echo:
            return []
        count = len(self.prompts) * self.n
        return [self.delta(i, self.prompts[i // self.n]) for i in range(count)]

    def delta(self, index: int, text: str) -> TextCompletion:
        return self._chunk([CompletionChoice(index=index, text=text, finish_reason=None)])

    def finished(self, index: int, completion: Completion) -> TextCompletion:
        return self._chunk([CompletionChoice(index=index, text="", finish_reason=completion.finish_reason)])

    def usage(self, completions: Sequence[Completion]) -> TextCompletion:
        chunk = self._chunk([])
        chunk.usage = total_usage(completions, self.n)
        return chunk


def text_completion(
    head: ResponseHead, prompts: Sequence[str], completions: Sequence[Completion], n: int, echo: bool
) -> TextCompletion:
    choices = [
        CompletionChoice(index=i, text=(prompts[i // n] if echo else "") + c.text, finish_reason=c.finish_reason)
        for i, c in enumerate(completions)
    ]
    return TextCompletion(
        id=head.id, created=head.created, model=head.model, choices=choices, usage=total_usage(completions, n)
    )
