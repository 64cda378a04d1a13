"""`engine.compile`: the decoding step as one compiled graph, built during start-up.

An eager decoding step of a small model is mostly overhead: on 2 CPU cores SmolLM2-135M
spends ~44 ms per one-row step, of which ~30 ms are its matrix products and the rest several
hundred small operator calls from Python. `torch.compile` (inductor) fuses those into a few
kernels per layer. The matrix products and attention stay out of the graph (see
`opaque_ops`): the products keep the model's own kernels, and attention keeps the engine's
KV cache, which grows by a column a step, so one graph serves every sequence length.

One graph: the batch dimension is dynamic, so joining and leaving never recompiles. It is
compiled during warm-up, while /health says `loading`. inductor keeps what it
compiled in `engine.compile_cache_dir`, so a second start reuses the kernels.

Prefill stays eager: its shapes vary with every prompt, and its cost is in the products.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.fx.experimental._config as fx_config
from torch import nn

from app.engine.kv_batch import KVBatch
from app.engine.opaque_ops import (
    ATTENTION_NAME,
    STEP_FLAG,
    DecodingStep,
    current_step,
    int_attribute,
    make_linear_layers_opaque,
    restore_linear_layers,
)
from app.engine.types import LoadedModel
from app.model.onednn_linear import PackedLinear
from app.model.quantization import QuantizedLinear

logger = logging.getLogger("app.engine.compiled_step")

_WARM_UP_PROMPT = 4
"""Tokens prefilled (eagerly) before the warm-up's decoding step compiles the graph."""


class CompiledDecoder:
    """Runs one decoding step of a batch through the compiled graph (inference thread only)."""

    def __init__(self, model: nn.Module, linears: list[nn.Module]) -> None:
        self._model = model
        self._linears = linears
        self._attention = _attention_modules(model)
        self._compiled: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.compile(
            self._forward,
            dynamic=False,  # only the batch dimension, marked on each call, is dynamic
            # The model's modules never change once loaded: checking each of them on every
            # call (~1 ms a step) buys nothing.
            options={"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe},
        )

    def __call__(
        self, cache: Any, mask: torch.Tensor, input_ids: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Logits [rows, vocab] after appending `input_ids` [rows, 1] to `cache`; `mask`
        [rows, columns] covers the cache's columns and the new one."""
        # Fresh, densely strided copies: the graph guards on strides, and a [rows, 1] column
        # sliced from a wider tensor keeps the wider one's (dynamo would recompile every step).
        input_ids, positions = _dense(input_ids), _dense(positions)
        torch._dynamo.maybe_mark_dynamic(input_ids, 0)
        torch._dynamo.maybe_mark_dynamic(positions, 0)
        padded = None if bool(mask.all()) else mask.bool()[:, None, None, :]
        step = DecodingStep(cache=cache, mask=padded, attention=self._attention, linears=self._linears)
        # torch specialises a dimension of size 1 unless told to reason about sizes without
        # it: then a graph traced on one row serves any number. Set for every call, not just
        # the warm-up, as any later retrace (transformers' registries, which the graph's
        # guards watch, can grow when another model class loads) must stay general too.
        with current_step(step), fx_config.patch(backed_size_oblivious=True):  # type: ignore[attr-defined]
            return self._compiled(input_ids, positions)

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        outputs = self._model(
            input_ids=input_ids,
            position_ids=positions,
            use_cache=False,
            logits_to_keep=1,
            **{STEP_FLAG: True},
        )
        logits: torch.Tensor = outputs.logits[:, -1, :]
        return logits

    def warm_up(self, device: torch.device, progress: Callable[[str], None]) -> None:
        """Compile the one graph every batch size uses (its batch dimension is dynamic)."""
        progress("compiling the decoding step")
        started = time.monotonic()
        batch = KVBatch.empty(1, device)
        prompt = torch.full((1, _WARM_UP_PROMPT), 1, dtype=torch.long, device=device)
        batch.forward(self._model, prompt)
        batch.forward(self._model, prompt[:, :1], decoder=self)
        logger.info("decoding step compiled", extra={"seconds": round(time.monotonic() - started, 1)})


def compile_decoding(loaded: LoadedModel, cache_dir: Path, progress: Callable[[str], None]) -> LoadedModel:
    """`loaded` with a compiled decoding step, or as it was (with a warning) if the model's
    attention is one the compiled step does not implement (sliding windows, soft-capping)."""
    model = loaded.model
    unsupported = unsupported_attention(model.config)
    if unsupported:
        logger.warning("decoding step not compiled; it runs eagerly", extra={"reason": unsupported})
        return loaded
    # inductor reads its cache folder from the environment only.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir.resolve())
    linears = make_linear_layers_opaque(model, (PackedLinear, QuantizedLinear))
    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTENTION_NAME)
    decoder = CompiledDecoder(model, linears)
    try:
        with torch.inference_mode():
            decoder.warm_up(loaded.device, progress)
    except Exception as exc:  # the server still serves, eagerly: slower, never wrong
        logger.warning(
            "decoding step not compiled; it runs eagerly",
            extra={"reason": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"},
        )
        model.set_attn_implementation(previous)
        restore_linear_layers(model)
        torch._dynamo.reset()
        return loaded
    return replace(loaded, decoder=decoder)


def unsupported_attention(config: Any) -> str | None:
    """Why `llm::attend` cannot serve this model's attention, or None if it can."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if any(kind != "full_attention" for kind in getattr(text, "layer_types", None) or ()):
        return "layers with sliding-window or other non-full attention"
    if getattr(text, "sliding_window", None) is not None and getattr(text, "use_sliding_window", True):
        return "sliding-window attention"
    if getattr(text, "attn_logit_softcapping", None) is not None:
        return "soft-capped attention logits"
    return None


def _dense(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.new_empty(tensor.shape).copy_(tensor)


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention modules by layer index: what transformers' SDPA function is given."""
    found = {
        int_attribute(module, "layer_idx"): module
        for module in model.modules()
        if type(module).__name__.endswith("Attention") and isinstance(getattr(module, "layer_idx", None), int)
    }
    return [found[index] for index in sorted(found)]
