"""The model's life in the server: load in the background, warm up, serve, shut down."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from app.core.config import ModelSettings, Settings
from app.core.errors import ModelNotReady, ModelUnhealthy, ShuttingDown
from app.engine.types import BatchObserver, Engine, EngineStats, GenerationRequest, LoadedModel, SamplingParams
from app.model.chat_format import PromptBuilder

logger = logging.getLogger("app.model.runtime")

T = TypeVar("T")

Progress = Callable[[str], None]


class ModelState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"
    """Told to stop (SIGTERM): running generations finish, new ones are refused."""


@dataclass(frozen=True)
class ModelInfo:
    served_name: str
    device: str
    dtype: str
    context_length: int
    system_prompt_supported: bool
    quantization: str = "none"
    """`model.quantization` in force: how the weights are stored (`dtype` is the activations')."""
    compiled: bool = False
    """Whether decoding steps run through the compiled step (`engine.compile`)."""


@dataclass(frozen=True)
class ReadyModel:
    engine: Engine
    prompts: PromptBuilder
    info: ModelInfo


ServingModelFactory = Callable[[Settings, Progress, BatchObserver | None], ReadyModel]
"""Builds what serves: loads the model and starts its engine, reporting progress; runs on a
loader thread. `load_serving_model` is the real one; tests pass a scripted fake engine."""


def load_serving_model(settings: Settings, on_progress: Progress, on_batch: BatchObserver | None) -> ReadyModel:
    """The configured model on the continuous-batching engine. torch is imported here, off the loop."""
    from app.engine.batching import BatchingEngine

    loaded = load_engine_model(settings, on_progress)
    prompts = PromptBuilder(loaded.tokenizer, loaded.context_length, read_system_prompt(settings.model))
    engine = BatchingEngine(loaded, settings.engine, on_batch=on_batch)
    engine.start()
    return ReadyModel(
        engine=engine,
        prompts=prompts,
        info=ModelInfo(
            served_name=loaded.served_name,
            device=str(loaded.device),
            dtype=str(loaded.dtype).removeprefix("torch."),
            context_length=loaded.context_length,
            system_prompt_supported=prompts.supports_system,
            quantization=loaded.quantization,
            compiled=loaded.decoder is not None,
        ),
    )


def load_engine_model(settings: Settings, on_progress: Progress) -> LoadedModel:
    """The configured model as the engine runs it: loaded, and its decoding step compiled
    when `engine.compile` is on."""
    from app.model.loader import load_model

    token = settings.huggingface_token
    loaded = load_model(settings.model, token.get_secret_value() if token else None, on_progress)
    if not settings.engine.compile:
        return loaded
    from app.engine.compiled_step import compile_decoding

    return compile_decoding(loaded, settings.engine.compile_cache_dir, on_progress)


def read_system_prompt(settings: ModelSettings) -> str | None:
    """The default system prompt (`model.system_prompt_file`); an unreadable file means none."""
    path: Path | None = settings.system_prompt_file
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        logger.warning("system prompt file not readable; no default system prompt", extra={"path": str(path)})
        return None
    return text or None


class ModelRuntime:
    def __init__(
        self,
        settings: Settings,
        factory: ServingModelFactory = load_serving_model,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self._settings = settings
        self._factory = factory
        self._on_batch = on_batch
        self.state = ModelState.LOADING
        self.progress = "starting"
        self.error: str | None = None
        self.started_at = time.time()
        self._ready: ReadyModel | None = None
        self._engine: Engine | None = None
        """Set as soon as the engine starts, before warm-up, so shutdown stops it even if warm-up fails."""

    @property
    def served_name(self) -> str:
        return self._settings.model.resolved_served_name()

    @property
    def info(self) -> ModelInfo | None:
        return self._ready.info if self._ready else None

    def require_ready(self) -> ReadyModel:
        if self._ready is not None and self.state is ModelState.READY:
            return self._ready
        if self.state is ModelState.FAILED:
            raise ModelUnhealthy("the model failed to load")
        if self.state is ModelState.DRAINING:
            raise ShuttingDown("server is shutting down; retry on another replica")
        raise ModelNotReady(f"model is loading ({self.progress}); retry shortly")

    def engine_stats(self) -> EngineStats | None:
        return self._ready.engine.stats() if self._ready else None

    async def load(self) -> None:
        """Load, start the engine, warm up. On failure: state FAILED and the error re-raised."""
        try:
            ready = await _on_own_thread(self._load_blocking)
            if self._settings.model.warmup:
                self._set_progress("warming up")
                await self._warm_up(ready)
        except Exception as exc:
            self.state, self.error = ModelState.FAILED, str(exc) or type(exc).__name__
            raise
        self._ready, self.progress = ready, "ready"
        if self.state is not ModelState.LOADING:  # told to drain while loading: stays draining
            return
        self.state = ModelState.READY
        logger.info(
            "model ready",
            extra={"model": ready.info.served_name, "startup_s": round(time.time() - self.started_at, 2)},
        )

    def _load_blocking(self) -> ReadyModel:
        """Everything slow, torch's import included, off the event loop."""
        ready = self._factory(self._settings, self._set_progress, self._on_batch)
        self._engine = ready.engine
        return ready

    async def drain(self) -> None:
        """Refuse new generations (ShuttingDown; /health says `draining`) and give running ones
        `engine.shutdown_grace_s` to finish; what still runs then is cut. The server keeps
        listening meanwhile, so load balancers see the replica leave before its socket closes."""
        if self.state not in (ModelState.READY, ModelState.LOADING):
            return
        serving, self.state = self.state is ModelState.READY, ModelState.DRAINING
        if not serving:  # nothing runs yet; the lifespan's end stops the loading
            return
        logger.info("draining", extra={"grace_s": self._settings.engine.shutdown_grace_s})
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop the engine (after `drain`, at once: it has nothing left to wait for)."""
        if self._engine is not None:
            await self._engine.shutdown(self._settings.engine.shutdown_grace_s)

    async def _warm_up(self, ready: ReadyModel) -> None:
        prompt_ids = ready.prompts.encode_prompt("Hello")
        request = GenerationRequest("warmup", prompt_ids, SamplingParams(max_tokens=4, temperature=0.0))
        async for _ in ready.engine.submit(request):
            pass

    def _set_progress(self, stage: str) -> None:
        self.progress = stage


async def _on_own_thread(work: Callable[[], T]) -> T:
    """Run `work` on a new thread that ends with it, off the event loop.

    Not `asyncio.to_thread`: its pool thread would outlive the load together with the OpenMP
    workers torch started for it; libgomp, counting more of its threads than CPUs, then puts its
    workers to sleep between parallel regions instead of spinning briefly (as OMP_WAIT_POLICY=PASSIVE
    does, which measured the same). On 2 cores that made the inference thread's decoding steps
    1.2-1.5x slower for the server's whole life; a loader thread that ends takes its workers along.
    """
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(work())
        except BaseException as exc:  # handed to the awaiting coroutine
            future.set_exception(exc)

    threading.Thread(target=run, name="model-loader", daemon=True).start()
    return await asyncio.wrap_future(future)
