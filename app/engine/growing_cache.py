"""A KV cache whose layers append in place: buffers with spare columns instead of a copy per step.

transformers' `DynamicLayer` appends a decoding step with `torch.cat`, so every step copies
every layer's whole cache into fresh memory. Appending in place instead made 16-row decoding
of SmolLM2-135M on 2 CPU cores 5-9 % faster (64 steps; 4 % over 400). Here each
layer's `keys`/`values` are views of the first columns of a larger buffer; a step writes its
one column in place, and only when the spare columns run out is the buffer re-allocated,
with room that grows with the sequence (amortised: a copy every `max(64, length / 4)` steps).

Whoever replaces `keys`/`values` wholesale (joining or dropping rows of a batch) may simply
assign new tensors: the next `update` notices they are not views of the buffer and adopts them.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

_MIN_SPARE_COLUMNS = 64


class GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A `DynamicLayer` whose `keys`/`values` are `[rows, heads, length, dim]` views of buffers."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.keys, self.values
        if keys is None or values is None or self.get_seq_length() == 0:
            keys, values = key_states[..., :0, :], value_states[..., :0, :]
        length, new = keys.shape[-2], key_states.shape[-2]
        if not (self._holds(keys, values) and length + new <= self._capacity()):
            self._adopt(keys, values, spare=max(new, _MIN_SPARE_COLUMNS, length // 4))
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[..., length : length + new, :].copy_(key_states)
        self._value_buffer[..., length : length + new, :].copy_(value_states)
        self.keys = self._key_buffer[..., : length + new, :]
        self.values = self._value_buffer[..., : length + new, :]
        return self.keys, self.values

    def _capacity(self) -> int:
        return 0 if self._key_buffer is None else int(self._key_buffer.shape[-2])

    def _holds(self, keys: torch.Tensor, values: torch.Tensor) -> bool:
        """Whether `keys`/`values` are still the leading columns of this layer's buffers."""
        return _leading_view(keys, self._key_buffer) and _leading_view(values, self._value_buffer)

    def _adopt(self, keys: torch.Tensor, values: torch.Tensor, spare: int) -> None:
        """Copy `keys`/`values` into new buffers with `spare` free columns after them."""
        self._key_buffer = _with_room(keys, spare)
        self._value_buffer = _with_room(values, spare)


class GrowingCache(DynamicCache):
    """A `DynamicCache` made of `GrowingLayer`s (created lazily, one per attention layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_class_to_replicate = GrowingLayer


def _leading_view(tensor: torch.Tensor, buffer: torch.Tensor | None) -> bool:
    return (
        buffer is not None
        and tensor.data_ptr() == buffer.data_ptr()
        and tensor.shape[:2] == buffer.shape[:2]
        and tensor.shape[-1] == buffer.shape[-1]
        and tensor.stride() == buffer.stride()
    )


def _with_room(tensor: torch.Tensor, spare: int) -> torch.Tensor:
    rows, heads, length, dim = tensor.shape
    buffer = tensor.new_empty((rows, heads, length + spare, dim))
    buffer[..., :length, :].copy_(tensor)
    return buffer
