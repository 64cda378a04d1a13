"""One row of the batch's KV copied out for the prefix cache, and a cached prefix made a batch again."""

from __future__ import annotations

import torch

from app.engine.growing_cache import GrowingCache
from app.engine.kv_batch import KVBatch


def batch_of(lengths: list[int], layers: int = 2) -> tuple[KVBatch, list[torch.Tensor]]:
    """Rows right-aligned as the scheduler keeps them: zeros (padding) then each row's values."""
    torch.manual_seed(0)
    columns = max(lengths)
    cache = GrowingCache()
    full: list[torch.Tensor] = []
    for layer in range(layers):
        keys = torch.randn(len(lengths), 2, columns, 4)
        for row, length in enumerate(lengths):
            keys[row, :, : columns - length] = 0
        cache.update(keys, keys + 1, layer)
        full.append(keys)
    mask = torch.tensor([[0] * (columns - n) + [1] * n for n in lengths])
    return KVBatch(cache, mask), full


def test_a_rows_snapshot_is_a_copy_of_its_tokens_only() -> None:
    kv, full = batch_of([3, 7, 5])
    assert kv.snapshots_rows and kv.row_tokens(2) == 5
    snapshot = kv.row_snapshot(2)
    assert len(snapshot) == 2
    for (keys, values), reference in zip(snapshot, full, strict=True):
        assert keys.shape == (1, 2, 5, 4)
        assert torch.equal(keys[0], reference[2, :, 2:]) and torch.equal(values[0], reference[2, :, 2:] + 1)
    assert kv.row_bytes(2) == sum(t.numel() * t.element_size() for pair in snapshot for t in pair)
    snapshot[0][0].zero_()
    assert torch.equal(kv.cache.layers[0].keys, full[0])  # a copy: the batch is untouched


def test_a_cached_prefix_continues_as_a_one_row_batch_and_stays_unchanged() -> None:
    kv, _ = batch_of([6])
    cached = kv.row_snapshot(0)
    before = [(keys.clone(), values.clone()) for keys, values in cached]
    views = [(keys[..., :4, :], values[..., :4, :]) for keys, values in cached]  # what a claim hands out
    prefix = KVBatch.of_prefix(views, torch.device("cpu"))
    assert prefix.rows == 1 and prefix.columns == 4 and prefix.mask.tolist() == [[1, 1, 1, 1]]
    new = torch.randn(1, 2, 3, 4)
    for index, layer in enumerate(prefix.cache.layers):
        keys, _ = layer.update(new, new)
        assert torch.equal(keys, torch.cat([views[index][0], new], dim=-2))
    for (keys, values), (old_keys, old_values) in zip(cached, before, strict=True):
        assert torch.equal(keys, old_keys) and torch.equal(values, old_values)
