"""Load a causal LM and its tokenizer from a hub id, a local folder, or a GGUF file."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as transformers_logging

from app.core.config import ModelSettings
from app.engine.types import LoadedModel
from app.model.onednn_linear import pack_linear_layers
from app.model.quantization import LINEAR_KINDS, quantize_linear_layers

logger = logging.getLogger("app.model.loader")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_FALLBACK_CONTEXT = 2048
_ONEDNN_BATCH_HINT = 16
"""Rows oneDNN's packed layout is tuned for; measured as fast as any other from 1 to 200 rows."""


class ModelLoadError(Exception):
    """The model could not be loaded; the message is one line for the operator."""


def resolve_device(requested: str) -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested != "auto":
        return _DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(
    settings: ModelSettings, token: str | None, progress: Callable[[str], None] = lambda stage: None
) -> LoadedModel:
    """Load model and tokenizer as configured; raise ModelLoadError with a one-line reason."""
    transformers_logging.disable_progress_bar()
    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    try:
        return _load(settings, token, progress)
    except ModelLoadError:
        raise
    except Exception as exc:  # every loader failure becomes one operator-facing line
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if token:
            message = message.replace(token, "***")
        raise ModelLoadError(f"could not load model {settings.name!r}: {type(exc).__name__}: {message}") from exc


def _load(settings: ModelSettings, token: str | None, progress: Callable[[str], None]) -> LoadedModel:
    device = resolve_device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device is {settings.device!r} but CUDA is not available")
    if settings.quantization in LINEAR_KINDS and device.type != "cpu":
        raise ModelLoadError(f"model.quantization {settings.quantization} has CPU kernels only; the device is {device}")
    dtype = resolve_dtype(settings.requested_dtype(), device)
    common: dict[str, Any] = {
        "revision": settings.revision,
        "token": token,
        "trust_remote_code": settings.trust_remote_code,
    }
    if settings.gguf_file:
        common["gguf_file"] = settings.gguf_file
    progress("loading tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(settings.name, **common)
    progress("loading weights")
    model_kwargs: dict[str, Any] = {"dtype": dtype}
    if settings.device_map is not None:
        model_kwargs["device_map"] = settings.device_map
    model: Any = AutoModelForCausalLM.from_pretrained(settings.name, **common, **model_kwargs)
    if settings.device_map is None:
        model = model.to(device)
    else:
        device = next(model.parameters()).device
    model.eval()
    if settings.quantization in LINEAR_KINDS:
        progress(f"quantizing weights ({settings.quantization})")
        swapped = quantize_linear_layers(model, settings.quantization)
        logger.info("linear layers quantized", extra={"layers": swapped, "quantization": settings.quantization})
    if device.type == "cpu" and settings.device_map is None and settings.cpu_onednn_linear:
        progress("packing weights for oneDNN")
        packed = pack_linear_layers(model, batch_hint=_ONEDNN_BATCH_HINT)
        logger.info("linear layers packed for oneDNN", extra={"layers": packed})
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        quantization=settings.quantization,
        context_length=settings.context_length or _context_length(model, tokenizer),
        eos_token_ids=_eos_ids(model, tokenizer),
        served_name=settings.resolved_served_name(),
    )
    logger.info(
        "model loaded",
        extra={
            "model": loaded.served_name,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "quantization": settings.quantization,
        },
    )
    return loaded


def _context_length(model: PreTrainedModel, tokenizer: Any) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else _FALLBACK_CONTEXT


def _eos_ids(model: PreTrainedModel, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)
