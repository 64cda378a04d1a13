"""On CPU, run the model's float32 Linear layers through oneDNN with weights packed once at load time.

torch's default CPU path for a float32 `Linear` is MKL's sgemm, which on this kind of machine
(AMD EPYC, AVX-512) reaches a fraction of the memory bandwidth a decoding step is bound by:
measured on 2 cores, SmolLM2-135M's 30 layers at 16 rows took 58 ms through MKL and about
20 ms through oneDNN with the weights reordered ("packed") into its blocked layout, which is
what torch.compile's CPU backend does too (`mkldnn._linear_pointwise`). A decoding step is
mostly these matrix products, so this is most of the batching engine's speed on CPU.

The packed weight is an opaque oneDNN tensor; the dense one is dropped unless something else
shares it (a tied embedding keeps its own). Each packed layer is checked against the dense
product once; where oneDNN is missing or disagrees, the layer stays as it was.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from app.model.linear_swap import swap_linear_layers

_TOLERANCE = 2e-4
"""Largest error of a packed layer on a random probe, relative to the product's largest
magnitude: float32 summed in another order, nothing more."""


class PackedLinear(nn.Module):
    """`y = x W^T + b` with W in oneDNN's blocked layout (inference only)."""

    def __init__(self, linear: nn.Linear, batch_hint: int) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint)
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), self.packed_weight, self.bias, "none", [], ""
        )
        return output

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, onednn=packed"


def pack_linear_layers(model: nn.Module, batch_hint: int) -> int:
    """Replace every CPU float32 `nn.Linear` of `model` by a `PackedLinear`; how many were.

    float32 only: bfloat16 already goes through oneDNN in torch, and packing it measured no faster.
    """
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return 0
    return swap_linear_layers(model, partial(PackedLinear, batch_hint=batch_hint), _TOLERANCE, "onednn")
