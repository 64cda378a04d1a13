"""The compiled step's pieces that need no model: which attention it refuses, and its
operators outside a step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from app.engine.compiled_step import unsupported_attention
from app.engine.opaque_ops import (
    DecodingStep,
    OpaqueLinear,
    current_step,
    make_linear_layers_opaque,
    restore_linear_layers,
)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (SimpleNamespace(), None),
        (SimpleNamespace(layer_types=["full_attention"] * 2, sliding_window=None), None),
        (SimpleNamespace(sliding_window=4096, use_sliding_window=False), None),  # Qwen2's default
        (SimpleNamespace(sliding_window=4096), "sliding-window attention"),
        (SimpleNamespace(layer_types=["sliding_attention", "full_attention"]), "layers with sliding-window"),
        (SimpleNamespace(attn_logit_softcapping=50.0), "soft-capped attention logits"),
    ],
)
def test_attention_the_compiled_step_cannot_serve_is_named(config: SimpleNamespace, reason: str | None) -> None:
    found = unsupported_attention(config)
    assert found == reason if reason is None else (found or "").startswith(reason)


def test_a_multimodal_config_is_judged_by_its_text_part() -> None:
    text = SimpleNamespace(sliding_window=512)
    config = SimpleNamespace(get_text_config=lambda: text)
    assert unsupported_attention(config) == "sliding-window attention"


class Doubling(nn.Module):
    out_features = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def test_opaque_linear_layers_are_the_layers_they_wrap_when_eager() -> None:
    model = nn.Sequential(Doubling(), nn.ReLU(), Doubling())
    wrapped = make_linear_layers_opaque(model, (Doubling,))
    assert [type(layer) for layer in model] == [OpaqueLinear, nn.ReLU, OpaqueLinear]
    assert [layer.index for layer in model if isinstance(layer, OpaqueLinear)] == [0, 1]
    assert wrapped == [model[0].inner, model[2].inner]
    assert torch.equal(model(torch.tensor([[-1.0, 1.0, 2.0]])), torch.tensor([[0.0, 4.0, 8.0]]))


def test_a_failed_compile_gives_the_model_its_own_layers_back() -> None:
    model = nn.Sequential(Doubling(), nn.ReLU(), Doubling())
    layers = list(model)
    make_linear_layers_opaque(model, (Doubling,))
    restore_linear_layers(model)
    assert list(model) == layers


def test_the_operators_serve_only_inside_a_step() -> None:
    layer = Doubling()
    step = DecodingStep(cache=None, mask=None, attention=[], linears=[layer])
    x = torch.ones(1, 1, 3)
    with current_step(step):
        assert torch.equal(torch.ops.llm.linear(x, 0, 3), x * 2)
    with pytest.raises(RuntimeError, match="outside a decoding step"):
        torch.ops.llm.linear(x, 0, 3)
