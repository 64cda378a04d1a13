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

import logging

import torch
from torch import nn

logger = logging.getLogger("app.model.onednn_linear")


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
    replaced = 0
    with torch.inference_mode():
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is not nn.Linear or not _packable(child.weight):
                    continue
                packed = PackedLinear(child, batch_hint)
                if not _agrees(child, packed):
                    logger.warning("oneDNN linear disagrees with torch's; layer left as it was", extra={"layer": name})
                    continue
                setattr(parent, name, packed)
                replaced += 1
    return replaced


def _packable(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and weight.dtype == torch.float32


def _agrees(linear: nn.Linear, packed: PackedLinear) -> bool:
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(3, linear.in_features, generator=generator)
    expected, actual = linear(probe), packed(probe)
    return bool(torch.allclose(actual, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max())))
