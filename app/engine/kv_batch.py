"""A batch of sequences sharing one left-padded KV cache: forward passes, joins and leaves.

Row i of every layer's keys/values holds sequence i right-aligned: its padding (zeros,
masked out) on the left, its real tokens contiguous up to the last column. Joining pads
whichever side is shorter on the left; leaving drops rows and trims the padding that no
remaining row needs, so a long sequence that finished no longer costs the others.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from app.engine.growing_cache import GrowingCache, GrowingLayer
from app.engine.prefix_cache import LayerKV
from app.engine.types import Decoder


class KVBatch:
    """Owned by the inference thread; never touched from elsewhere."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        self.cache = cache
        self.mask = mask
        """[rows, columns] of 0 (padding) / 1 (a real token), matching the cache's columns."""

    @classmethod
    def empty(cls, rows: int, device: torch.device) -> KVBatch:
        return cls(GrowingCache(), torch.zeros((rows, 0), dtype=torch.long, device=device))

    @classmethod
    def of_prefix(cls, layers: LayerKV, device: torch.device) -> KVBatch:
        """One row holding a cached prefix's KV. Its tensors are only read: the first forward
        pass copies them into the layers' own buffers (see GrowingLayer) before appending."""
        cache = GrowingCache()
        for keys, values in layers:
            layer = GrowingLayer()
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
            cache.layers.append(layer)
        length = int(layers[0][0].shape[-2])
        return cls(cache, torch.ones((1, length), dtype=torch.long, device=device))

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def columns(self) -> int:
        return int(self.mask.shape[1])

    def forward(
        self,
        model: Any,
        input_ids: torch.Tensor,
        new_mask: torch.Tensor | None = None,
        decoder: Decoder | None = None,
    ) -> torch.Tensor:
        """Append `input_ids` [rows, n] to every row; `new_mask` marks which of them are padding.
        A one-token step goes through `decoder` (a compiled step) where there is one.

        Returns the logits after each row's last column, [rows, vocab]. If the model raises
        (an out-of-memory error, say), the cache is put back as it was before the call.
        """
        columns = self.columns
        mask = torch.cat([self.mask, torch.ones_like(input_ids) if new_mask is None else new_mask], dim=-1)
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)[:, columns:]
        try:
            if decoder is not None and input_ids.shape[1] == 1:
                logits = decoder(self.cache, mask, input_ids, positions)
            else:
                outputs = model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=self.cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                logits = outputs.logits[:, -1, :]
        except BaseException:
            self._crop(columns)
            raise
        self.mask = mask
        return logits

    def extend(self, other: KVBatch) -> None:
        """Append `other`'s rows (consumed: do not use it afterwards)."""
        if other.rows == 0:
            return
        if self.rows == 0:
            self.cache, self.mask = other.cache, other.mask
            return
        columns = max(self.columns, other.columns)
        mine, theirs = columns - self.columns, columns - other.columns
        for layer, incoming in zip(_layers(self.cache), _layers(other.cache), strict=True):
            layer.keys = torch.cat([_pad_left(layer.keys, mine), _pad_left(incoming.keys, theirs)])
            layer.values = torch.cat([_pad_left(layer.values, mine), _pad_left(incoming.values, theirs)])
        self.mask = torch.cat([_pad_left(self.mask, mine), _pad_left(other.mask, theirs)])

    def row_tokens(self, row: int) -> int:
        """Columns holding `row`'s tokens: the last ones, as rows are right-aligned."""
        return int(self.mask[row].sum().item())

    def row_bytes(self, row: int) -> int:
        """Bytes that `row_snapshot(row)` would take."""
        length = self.row_tokens(row)
        return sum(
            length * tensor.shape[1] * tensor.shape[-1] * tensor.element_size()
            for layer in _layers(self.cache)
            for tensor in (layer.keys, layer.values)
        )

    @property
    def snapshots_rows(self) -> bool:
        """Whether every layer holds tensors, so that a row's copy can rebuild a cache (not so
        for a model whose layers share KV)."""
        return bool(self.cache.layers) and len(_layers(self.cache)) == len(self.cache.layers)

    def row_snapshot(self, row: int) -> LayerKV:
        """A copy of `row`'s keys and values per layer, `[1, heads, tokens, dim]`."""
        start = self.columns - self.row_tokens(row)
        return [
            (layer.keys[row : row + 1, :, start:, :].clone(), layer.values[row : row + 1, :, start:, :].clone())
            for layer in _layers(self.cache)
        ]

    def _crop(self, columns: int) -> None:
        """Undo a partial forward pass: layers it already extended go back to `columns`."""
        for layer in _layers(self.cache):
            layer.keys = layer.keys[..., :columns, :]
            layer.values = layer.values[..., :columns, :]

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows`, in that order; trim the left padding they all share."""
        if rows == list(range(self.rows)):
            return
        if not rows:
            self.cache, self.mask = GrowingCache(), self.mask[:0, :0]
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        first = int(mask.any(dim=0).int().argmax().item())
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, index)[..., first:, :]
            layer.values = layer.values.index_select(0, index)[..., first:, :]
        self.mask = mask[:, first:]


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's layers that hold tensors (all of them once a forward pass ran)."""
    return [layer for layer in cache.layers if getattr(layer, "is_initialized", False)]


def _pad_left(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """Zeros before the sequence axis (-2 for keys/values [rows, heads, seq, dim], -1 for a mask)."""
    if columns == 0:
        return tensor
    axis = -1 if tensor.dim() == 2 else -2
    shape = list(tensor.shape)
    shape[axis] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)
