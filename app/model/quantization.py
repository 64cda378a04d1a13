"""On CPU, swap the model's Linear layers for cheaper-weight ones at load (`model.quantization`).

A decoding step reads every weight once per token, so at a few rows it is bound by memory
traffic, not arithmetic: fewer bytes per weight is what makes it faster. Two layers,
kernels chosen by measurement (bench/README.md has the figures):

  fp16  float16 weights, float32 activations and accumulation (fbgemm's
        `linear_dynamic_fp16`, vectorised for AVX2 and AVX-512): half the bytes, answers
        within float16's rounding of float32's.
  int8  int8 weights with one scale per output channel, weight-only (torch's
        `_weight_int8pack_mm`, which torchao uses on CPU): a quarter of the bytes. The kernel
        takes bfloat16 activations, so each layer's input is rounded to bfloat16 and its
        output returned in float32.

Dynamic int8 (fbgemm's `linear_dynamic`, which also quantises each layer's input to 7 bits
with one scale for the whole batch) was faster still but lost the answers on this model
(53 % greedy agreement, perplexity 15.6 -> 41), so it is not offered. `bf16` is not a layer
swap: it loads the whole model in bfloat16 (see the loader). Every swapped layer is checked
against the float product once; where it disagrees more than its format explains, the
layer stays float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from app.model.linear_swap import swap_linear_layers

INT8_MAX = 127
INT8_ACTIVATIONS = torch.bfloat16
"""What torch's int8 weight-only kernel is fed: its float32 path is scalar code, 8-10x slower
than its bfloat16 one on the CPUs measured."""


class QuantizedLinear(nn.Module):
    """`y = x W^T + b` with the weights stored smaller (inference only); float32 in between."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            return super().forward(x)
        # The kernel takes any leading dimensions: a decoding step's ~200 calls skip the
        # reshapes around it (17 us a call on 2 cores, ~3.5 ms a step of SmolLM2-135M).
        output: torch.Tensor = torch.ops.quantized.linear_dynamic_fp16(x.contiguous(), self.packed)
        return output if self.bias is None else output + self.bias

    def _matmul(self, rows: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = torch.ops.quantized.linear_dynamic_fp16(rows, self.packed)
        return output


class Int8Linear(QuantizedLinear):
    """int8 weights with a scale per output channel (weight-only: activations stay floating point)."""

    kind = "int8"

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear)
        weight = linear.weight.detach().float()
        scales = channel_scales(weight)
        self.weight_int8 = torch.round(weight / scales[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        self.scales = scales.to(INT8_ACTIVATIONS)

    def _matmul(self, rows: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = torch.ops.aten._weight_int8pack_mm(
            rows.to(INT8_ACTIVATIONS), self.weight_int8, self.scales
        )
        return output.float()


def channel_scales(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 scale of each output channel (row of W): its largest |w| maps to 127."""
    largest = weight.abs().amax(dim=1)
    return torch.where(largest > 0, largest / INT8_MAX, torch.ones_like(largest))


LINEAR_KINDS: dict[str, Callable[[nn.Linear], QuantizedLinear]] = {"fp16": Fp16Linear, "int8": Int8Linear}
"""`model.quantization` values that swap Linear layers, and the layer each one swaps in."""

_TOLERANCE = {"fp16": 1e-2, "int8": 5e-2}
"""Largest error of a swapped layer on a random probe, relative to the product's largest
magnitude, that its format explains (float16's rounding; int8 weights, bfloat16 inputs)."""


def quantize_linear_layers(model: nn.Module, kind: str) -> int:
    """Replace every CPU float32 `nn.Linear` of `model` by the `kind` layer; how many were."""
    return swap_linear_layers(model, LINEAR_KINDS[kind], _TOLERANCE[kind], kind)
