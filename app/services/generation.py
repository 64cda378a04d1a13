"""Generation runs: admit a prompt to the engine, stream its text, finish with a Completion."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from app.llm.types import Engine, FinishReason, GenerationChunk, GenerationRequest, SamplingParams


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


logger = logging.getLogger("app.generation")

OnSuccess = Callable[[Completion], Awaitable[None]]


class GenerationRun:
    """One admitted generation. Iterate it for text deltas; afterwards `completion` is set.

    `on_success` runs before the iteration ends, so a chat turn is committed before the
    client hears "done"; closing the run early aborts the generation and commits nothing.
    """

    def __init__(
        self,
        chunks: AsyncIterator[GenerationChunk],
        on_success: OnSuccess | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._chunks = chunks
        self._on_success = on_success
        self._on_close = on_close
        self.completion: Completion | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        text_parts: list[str] = []
        started = time.perf_counter()
        try:
            async for chunk in self._chunks:
                if chunk.text:
                    text_parts.append(chunk.text)
                    yield chunk.text
                if chunk.finish_reason is not None:
                    completion = Completion(
                        text="".join(text_parts),
                        finish_reason=chunk.finish_reason,
                        prompt_tokens=chunk.prompt_tokens,
                        completion_tokens=chunk.completion_tokens,
                    )
                    if self._on_success is not None:
                        await self._on_success(completion)
                    self.completion = completion
                    logger.info(
                        "generation finished",
                        extra={
                            "prompt_tokens": completion.prompt_tokens,
                            "completion_tokens": completion.completion_tokens,
                            "finish_reason": completion.finish_reason,
                            "duration_s": round(time.perf_counter() - started, 4),
                        },
                    )
        finally:
            await self.aclose()

    async def collect(self) -> Completion:
        async for _ in self:
            pass
        assert self.completion is not None, "engine stream ended without a finish chunk"
        return self.completion

    async def aclose(self) -> None:
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()


def start_generation(
    engine: Engine,
    request_id: str,
    prompt_ids: tuple[int, ...],
    params: SamplingParams,
    context_length: int,
    on_success: OnSuccess | None = None,
    on_close: Callable[[], None] | None = None,
) -> GenerationRun:
    """Clamp max_tokens to the room left in the context window and admit the request."""
    room = max(1, context_length - len(prompt_ids))
    if params.max_tokens > room:
        params = SamplingParams(**{**params.__dict__, "max_tokens": room})
    chunks = engine.submit(GenerationRequest(request_id=request_id, prompt_ids=prompt_ids, params=params))
    return GenerationRun(chunks, on_success=on_success, on_close=on_close)
