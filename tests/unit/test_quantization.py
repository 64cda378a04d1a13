"""Quantized Linear layers: their scales, how close they stay to float32, what gets swapped."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.core.config import ModelSettings
from app.model.quantization import Fp16Linear, Int8Linear, QuantizedLinear, channel_scales, quantize_linear_layers

INPUT_SHAPES = [(1, 96), (5, 7, 96), (2, 3, 96)]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def test_each_output_channel_gets_its_own_scale() -> None:
    weight = torch.tensor([[0.5, -1.27, 0.1], [0.0, 0.0, 0.0], [2.54, 0.0, -0.3]])
    scales = channel_scales(weight)
    assert torch.allclose(scales, torch.tensor([0.01, 1.0, 0.02]))
    quantized = torch.round(weight / scales[:, None])
    assert quantized.abs().amax(dim=1).tolist() == [127.0, 0.0, 127.0]


@pytest.mark.parametrize(("layer", "tolerance"), [(Int8Linear, 0.05), (Fp16Linear, 2e-3)])
@pytest.mark.parametrize("shape", INPUT_SHAPES)
def test_quantized_layer_stays_close_to_float(
    layer: type[QuantizedLinear], tolerance: float, shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    dense = nn.Linear(96, 80)
    # Rows of very different magnitudes: one scale for the whole matrix would crush the small ones.
    with torch.no_grad():
        dense.weight.mul_(torch.logspace(-2, 1, 80)[:, None])
    swapped = layer(dense)
    inputs = torch.randn(*shape)
    with torch.inference_mode():
        expected, actual = dense(inputs), swapped(inputs)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert relative_error(actual, expected) < tolerance
    small = slice(0, 20)  # the rows with the smallest weights keep their precision too
    assert relative_error(actual[..., small], expected[..., small]) < tolerance


def test_int8_layer_keeps_the_bias_and_the_input_dtype() -> None:
    torch.manual_seed(0)
    dense = nn.Linear(64, 32)
    with torch.no_grad():
        dense.bias.fill_(3.0)
    swapped = Int8Linear(dense)
    assert swapped.weight_int8.dtype == torch.int8 and swapped.weight_int8.shape == (32, 64)
    inputs = torch.randn(4, 64)
    with torch.inference_mode():
        assert relative_error(swapped(inputs), dense(inputs)) < 0.05
        assert swapped(inputs.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize(("kind", "layer"), [("int8", Int8Linear), ("fp16", Fp16Linear)])
def test_only_float32_cpu_linear_layers_are_swapped(kind: str, layer: type[QuantizedLinear]) -> None:
    model = nn.Sequential(
        nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8)), nn.Linear(8, 8).to(torch.bfloat16), nn.LayerNorm(8)
    )
    assert quantize_linear_layers(model, kind) == 2
    assert [type(module) for module in model] == [layer, nn.ReLU, nn.Sequential, nn.Linear, nn.LayerNorm]
    assert type(model.get_submodule("2.0")) is layer
    assert f"weights={layer.kind}" in repr(model[0])


def test_loader_refuses_cpu_quantization_on_another_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.model import loader

    monkeypatch.setattr(loader, "resolve_device", lambda requested: torch.device("mps"))
    with pytest.raises(loader.ModelLoadError, match="int8 has CPU kernels only; the device is mps"):
        loader.load_model(ModelSettings(name="no/such-model", quantization="int8"), None)
