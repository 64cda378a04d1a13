"""Replace a model's CPU float32 `nn.Linear` layers by faster ones, each checked once.

One mechanism for every kind of replacement (oneDNN-packed float32, float16 or int8
weights): a replacement is tried on a fixed random probe against the layer it replaces,
and a layer whose replacement disagrees by more than `rtol` of the output's scale stays as
it was, with a warning. A kernel that misbehaves on some shape then costs speed, not answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

logger = logging.getLogger("app.model.linear_swap")


def swap_linear_layers(model: nn.Module, make: Callable[[nn.Linear], nn.Module], rtol: float, kind: str) -> int:
    """Replace every CPU float32 `nn.Linear` of `model` by `make(layer)` where it agrees; how many were."""
    replaced = 0
    with torch.inference_mode():
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is not nn.Linear or not _swappable(child.weight):
                    continue
                replacement = make(child)
                if not _agrees(child, replacement, rtol):
                    logger.warning(
                        "replacement linear disagrees with the float one; layer left as it was",
                        extra={"layer": name, "kind": kind},
                    )
                    continue
                setattr(parent, name, replacement)
                replaced += 1
    return replaced


def _swappable(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and weight.dtype == torch.float32


def _agrees(linear: nn.Linear, replacement: nn.Module, rtol: float) -> bool:
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(3, linear.in_features, generator=generator)
    expected, actual = linear(probe), replacement(probe)
    return bool((actual - expected).abs().max() <= rtol * float(expected.abs().max()))
