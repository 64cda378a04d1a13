"""Two operators that a compiled decoding step calls as they are, instead of tracing into them.

`llm::linear` runs one of the model's own Linear kernels (oneDNN-packed float32, float16 or
int8 weights). Traced, those layers would be rewritten by inductor: on CPU it swaps a packed
float32 product for MKL's, measured 1.2-1.6x slower here, and it cannot see inside the
float16 kernel's packed weights at all. Opaque, they keep their speed, and inductor fuses
only what lies between them (norms, rotary embeddings, activations, residual adds).

`llm::attend` appends a step's keys and values to the batch's KV cache and attends over it.
The cache grows by a column each step and rows come and go, so it cannot live inside a graph
with static shapes; kept outside, one graph serves every length. This is how vLLM splits its
compiled models around attention. Both find what they serve (the layer's kernel, the batch's
cache) through the step in progress on the calling thread (`current_step`), set by whoever
runs the compiled graph.

Both are registered with `torch.library.Library` rather than `torch.library.custom_op`: a
call then costs about 5 us instead of 35, and a step makes ~200 of them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTENTION_NAME = "llm_engine"
"""The attention implementation a compiled model is set to (registered with transformers)."""
STEP_FLAG = "engine_step"
"""The keyword a compiled step passes down to the attention layers: attend through `llm::attend`."""
_UNSUPPORTED = ("sliding_window", "softcap", "s_aux")
"""Attention keywords that `llm::attend` does not implement: such a model is not compiled."""

_library = torch.library.Library("llm", "DEF")  # type: ignore[no-untyped-call]
_library.define("linear(Tensor x, int index, int out_features) -> Tensor")  # type: ignore[no-untyped-call]
_library.define(  # type: ignore[no-untyped-call]
    "attend(Tensor query, Tensor key, Tensor value, int layer, float scaling) -> Tensor"
)


class OpaqueLinear(nn.Module):
    """A Linear replacement that a compiled graph calls through `llm::linear`; eagerly, it is
    the layer it wraps."""

    def __init__(self, inner: nn.Module, index: int) -> None:
        super().__init__()
        self.inner = inner
        self.index = index
        """Its place in the model (`DecodingStep.linears`): the same in every process, so that
        a graph compiled by one start is found in the on-disk cache by the next."""
        self.out_features = int_attribute(inner, "out_features")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            output: torch.Tensor = torch.ops.llm.linear(x, self.index, self.out_features)
            return output
        result: torch.Tensor = self.inner(x)
        return result


def int_attribute(module: nn.Module, name: str) -> int:
    value = getattr(module, name)
    if not isinstance(value, int):
        raise TypeError(f"{type(module).__name__}.{name} is not an int")
    return value


def make_linear_layers_opaque(model: nn.Module, kinds: tuple[type[nn.Module], ...]) -> list[nn.Module]:
    """Wrap every module of one of `kinds` in an `OpaqueLinear`; the wrapped ones, by index."""
    wrapped: list[nn.Module] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kinds):
                setattr(parent, name, OpaqueLinear(child, len(wrapped)))
                wrapped.append(child)
    return wrapped


def restore_linear_layers(model: nn.Module) -> None:
    """Undo `make_linear_layers_opaque`: every `OpaqueLinear` replaced by the layer it wraps."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, OpaqueLinear):
                setattr(parent, name, child.inner)


def _linear(x: torch.Tensor, index: int, out_features: int) -> torch.Tensor:
    output: torch.Tensor = _serving().linears[index].forward(x)
    return output


def _linear_shape(x: torch.Tensor, index: int, out_features: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


@dataclass
class DecodingStep:
    """What `llm::attend` needs from the batch being decoded."""

    cache: Any
    """The batch's KV cache (transformers `Cache`): each layer appends to its own."""
    mask: torch.Tensor | None
    """[rows, 1, 1, columns] bool, True where a row may attend; None when no row has padding."""
    attention: list[nn.Module]
    """The model's attention modules by layer index (for transformers' own SDPA call)."""
    linears: list[nn.Module]
    """The Linear layers behind the model's `OpaqueLinear`s, by index."""


class _CurrentStep(threading.local):
    step: DecodingStep | None = None


_current = _CurrentStep()


@contextmanager
def current_step(step: DecodingStep) -> Iterator[None]:
    """Make `step` the one `llm::attend` serves on this thread while the block runs."""
    _current.step = step
    try:
        yield
    finally:
        _current.step = None


def _serving() -> DecodingStep:
    step = _current.step
    if step is None:
        raise RuntimeError("an llm:: operator was called outside a decoding step")
    return step


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layer: int, scaling: float) -> torch.Tensor:
    step = _serving()
    keys, values = step.cache.layers[layer].update(key, value)
    output, _ = sdpa_attention_forward(
        step.attention[layer], query, keys, values, step.mask, dropout=0.0, scaling=scaling
    )
    return output


def _attend_shape(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layer: int, scaling: float
) -> torch.Tensor:
    rows, heads, tokens, dim = query.shape
    return query.new_empty((rows, tokens, heads, dim))


def engine_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention function for a model set to `ATTENTION_NAME`: `llm::attend` in a
    compiled decoding step, transformers' SDPA everywhere else (prefill stays eager)."""
    if not kwargs.get(STEP_FLAG):
        output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        return output, None
    for name in _UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"a compiled decoding step does not support attention with {name}")
    scaling = kwargs.get("scaling")
    scale = float(scaling) if scaling is not None else float(query.shape[-1]) ** -0.5
    return torch.ops.llm.attend(query, key, value, int_attribute(module, "layer_idx"), scale), None


for _device in ("CPU", "CUDA"):
    _library.impl("attend", _attend, _device)  # type: ignore[no-untyped-call]
_library.impl("linear", _linear, "CPU")  # type: ignore[no-untyped-call]
torch.library.register_fake("llm::linear", _linear_shape, lib=_library)
torch.library.register_fake("llm::attend", _attend_shape, lib=_library)
AttentionInterface.register(ATTENTION_NAME, engine_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)
