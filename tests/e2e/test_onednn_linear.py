"""oneDNN-packed Linear layers on CPU: used by default for float32, and they change no output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from app.core.config import ModelSettings
from app.model.loader import load_model
from app.model.onednn_linear import PackedLinear, pack_linear_layers

PROMPTS = ["Once upon a time, in a small village by the sea,", "def fibonacci(n):", "List three uses of copper:"]


def test_packed_linear_computes_what_the_dense_one_does() -> None:
    torch.manual_seed(0)
    dense = nn.Linear(64, 48)
    packed = PackedLinear(dense, batch_hint=16)
    with torch.inference_mode():
        for inputs in (torch.randn(1, 64), torch.randn(5, 7, 64), torch.randn(4, 9, 64)[:, -1:, :]):
            assert torch.allclose(packed(inputs), dense(inputs), rtol=1e-5, atol=1e-5)
            assert packed(inputs).shape == dense(inputs).shape


def test_only_float32_cpu_linear_layers_are_packed() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8).to(torch.bfloat16), nn.LayerNorm(8))
    assert pack_linear_layers(model, batch_hint=16) == 1
    assert [type(layer) for layer in model] == [PackedLinear, nn.ReLU, nn.Linear, nn.LayerNorm]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_the_loader_packs_the_model_and_greedy_text_is_unchanged(model_dir: Path) -> None:
    packed = load_model(ModelSettings(name=str(model_dir), device="cpu"), None)
    dense = load_model(ModelSettings(name=str(model_dir), device="cpu", cpu_onednn_linear=False), None)
    assert isinstance(packed.model.get_submodule("lm_head"), PackedLinear)
    assert not any(isinstance(module, PackedLinear) for module in dense.model.modules())
    for prompt in PROMPTS:
        inputs = packed.tokenizer(prompt, return_tensors="pt")
        options = {"max_new_tokens": 48, "do_sample": False}
        with torch.inference_mode():
            ours = packed.model.generate(**inputs, **options)
            theirs = dense.model.generate(**inputs, **options)
        assert torch.equal(ours, theirs), prompt
