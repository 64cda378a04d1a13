"""The in-place KV cache layer holds exactly what transformers' concatenating one does."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from app.engine.growing_cache import GrowingLayer


def states(rows: int, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(rows, 2, columns, 4), torch.randn(rows, 2, columns, 4)


def test_appends_match_concatenation_across_buffer_growth() -> None:
    torch.manual_seed(0)
    ours, theirs = GrowingLayer(), DynamicLayer()
    for columns in [5, 1, 1, 70, *([1] * 100)]:  # a prompt, steps, a chunk past the spare room, more steps
        keys, values = states(3, columns)
        mine, reference = ours.update(keys, values), theirs.update(keys, values)
        assert torch.equal(mine[0], reference[0]) and torch.equal(mine[1], reference[1])
    assert ours.get_seq_length() == theirs.get_seq_length() == 177


def test_steps_write_in_place_until_the_room_runs_out() -> None:
    layer = GrowingLayer()
    layer.update(*states(2, 10))
    first = layer.keys.data_ptr()
    for _ in range(20):
        layer.update(*states(2, 1))
    assert layer.keys.data_ptr() == first  # no copy of the cache per step
    assert layer.keys.shape[-2] == 30


def test_tensors_assigned_from_outside_are_adopted() -> None:
    """Joining or dropping rows replaces keys/values wholesale; the next step builds on them."""
    torch.manual_seed(1)
    layer = GrowingLayer()
    layer.update(*states(3, 6))
    kept_keys, kept_values = layer.keys[[0, 2]], layer.values[[0, 2]]
    layer.keys, layer.values = kept_keys, kept_values
    keys, values = states(2, 1)
    new_keys, new_values = layer.update(keys, values)
    assert torch.equal(new_keys, torch.cat([kept_keys, keys], dim=-2))
    assert torch.equal(new_values, torch.cat([kept_values, values], dim=-2))
    layer.keys, layer.values = layer.keys[..., :4, :], layer.values[..., :4, :]  # an undone step
    keys, values = states(2, 1)
    assert torch.equal(layer.update(keys, values)[0], torch.cat([kept_keys[..., :4, :], keys], dim=-2))
