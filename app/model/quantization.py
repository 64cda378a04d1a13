"""On CPU, swap the model's Linear layers for cheaper-weight ones at load (`model.quantization`).

A decoding step reads every weight once per token, so at a few rows it is bound by memory
traffic, not arithmetic: halving or quartering the bytes of the weights is what makes it
faster. The kernels are fbgemm's (torch's x86 quantized backend), chosen by measurement on
an AVX2 CPU without AVX512-BF16 (see bench/README.md):

  fp16  float16 weights, float32 activations and accumulation (`linear_dynamic_fp16`):
        half the bytes, answers within float16's rounding of float32's.
  int8  int8 weights with one scale per output channel; activations quantised to 8 bits
        per call with one scale for the whole input (`linear_dynamic`): a quarter of the
        bytes and integer arithmetic. That activation scale spans every row of a batch, so
        a sequence's logits depend slightly on its batch-mates.

`bf16` is not a layer swap: it loads the whole model in bfloat16 (see the loader).
Every swapped layer is checked against the float product once; where it disagrees more than
its format explains, the layer stays float32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

logger = logging.getLogger("app.model.quantization")

INT8_MAX = 127


class QuantizedLinear(nn.Module):
    """`y = x W^T + b` through one of fbgemm's packed-weight kernels (inference only)."""

    kind = "quantized"

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = None if linear.bias is None else linear.bias.detach().float().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float().contiguous()
        output = self._matmul(rows)
        if self.bias is not None:
            output = output + self.bias
        return output.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _matmul(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights={self.kind}"


class Fp16Linear(QuantizedLinear):
    """float16 weights packed for fbgemm; float32 activations and accumulation."""

    kind = "float16"

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear)
        self.packed = torch.ops.quantized.linear_prepack_fp16(linear.weight.detach().float(), None)

    def _matmul(self, rows: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = torch.ops.quantized.linear_dynamic_fp16(rows, self.packed)
        return output


class Int8Linear(QuantizedLinear):
    """int8 weights with a scale per output channel; activations quantised per call."""

    kind = "int8"

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear)
        weight = linear.weight.detach().float()
        scales = channel_scales(weight)
        quantized = torch.quantize_per_channel(
            weight, scales.double(), torch.zeros(weight.shape[0], dtype=torch.long), 0, torch.qint8
        )
        self.packed = torch.ops.quantized.linear_prepack(quantized, None)

    def _matmul(self, rows: torch.Tensor) -> torch.Tensor:
        # reduce_range: 7-bit activations, so that fbgemm's 16-bit pairwise sums cannot saturate.
        output: torch.Tensor = torch.ops.quantized.linear_dynamic(rows, self.packed, True)
        return output


def channel_scales(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 scale of each output channel (row of W): its largest |w| maps to 127."""
    largest = weight.abs().amax(dim=1)
    return torch.where(largest > 0, largest / INT8_MAX, torch.ones_like(largest))


LINEAR_KINDS: dict[str, Callable[[nn.Linear], QuantizedLinear]] = {"fp16": Fp16Linear, "int8": Int8Linear}
"""`model.quantization` values that swap Linear layers, and the layer each one swaps in."""

_TOLERANCE = {"fp16": 1e-2, "int8": 0.1}
"""Largest error of a swapped layer on a random probe, relative to the product's largest
magnitude, that its format explains (float16's rounding; 8-bit weights and activations)."""


def quantize_linear_layers(model: nn.Module, kind: str) -> int:
    """Replace every CPU float32 `nn.Linear` of `model` by the `kind` layer; how many were."""
    make = LINEAR_KINDS[kind]
    replaced = 0
    with torch.inference_mode():
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is not nn.Linear or not _swappable(child.weight):
                    continue
                swapped = make(child)
                if not _agrees(child, swapped, _TOLERANCE[kind]):
                    logger.warning("quantized linear disagrees with float's; layer left as it was", extra={"layer": name})
                    continue
                setattr(parent, name, swapped)
                replaced += 1
    return replaced


def _swappable(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and weight.dtype == torch.float32


def _agrees(linear: nn.Linear, swapped: QuantizedLinear, tolerance: float) -> bool:
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(3, linear.in_features, generator=generator)
    expected, actual = linear(probe), swapped(probe)
    return bool((actual - expected).abs().max() <= tolerance * float(expected.abs().max()))
