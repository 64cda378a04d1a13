"""The engine's interface and the data crossing it. No torch at import: routers and services import this."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

FinishReason = Literal["stop", "length"]

GREEDY_BELOW = 1e-5
"""Temperatures under this are greedy, as in vLLM: they pick the top token anyway, and dividing
scores by a smaller one (the schema allows any temperature above 0) overflows them to inf."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_tokens: int = 0
    """No end-of-text token before this many tokens (vLLM's `min_tokens`)."""
    ignore_eos: bool = False
    """Never end on the end-of-text token: only max_tokens or a stop text ends it."""

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: tuple[int, ...]
    params: SamplingParams


@dataclass(frozen=True)
class GenerationChunk:
    """New text since the last chunk; the last chunk of a stream has `finish_reason` set."""

    text: str
    completion_tokens: int
    prompt_tokens: int
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class PrefixCacheStats:
    """The engine's cache of finished sequences' KV (`engine.prefix_cache_mb`)."""

    entries: int = 0
    bytes: int = 0
    """Bytes of KV tensors held."""
    hits: int = 0
    """Prompts that reused cached KV, since start."""
    hit_tokens: int = 0
    """Prompt tokens those hits did not prefill again, since start."""


@dataclass(frozen=True)
class EngineStats:
    queued: int
    running: int
    cancelled: int = 0
    """Requests stopped because their client went away, since start."""
    prefix_cache: PrefixCacheStats = PrefixCacheStats()


BatchObserver = Callable[[int], None]
"""Told the batch size of every decoding step, on the inference thread (feeds llm_batch_size)."""


class Engine(Protocol):
    """What services see of the engine. A batching scheduler implements the same verbs."""

    def submit(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Admit a request (raising EngineOverloaded/ShuttingDown at once) and stream its chunks.

        Closing the iterator early aborts the request.
        """
        ...

    def stats(self) -> EngineStats: ...

    async def shutdown(self, grace_s: float) -> None:
        """Stop admitting, let running requests finish within `grace_s`, cut the rest."""
        ...


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


Decoder = Callable[[Any, "torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]
"""A compiled decoding step: (KV cache, mask [rows, columns + 1], input ids [rows, 1],
positions [rows, 1]) -> logits [rows, vocab], appending the step to the cache."""


@dataclass
class LoadedModel:
    """A loaded model as the engine runs it (built by app.model.loader)."""

    model: PreTrainedModel
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    context_length: int
    eos_token_ids: frozenset[int]
    served_name: str
    quantization: str = "none"
    """`model.quantization` as loaded: how the weights are stored (`dtype` is the activations')."""
    decoder: Decoder | None = None
    """The compiled decoding step (`engine.compile`), or None: every step runs eagerly."""
