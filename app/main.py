"""The composition root: `create_app(settings)` wires config, middleware, routers and the model."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import NoReturn

from fastapi import Depends, FastAPI
from prometheus_fastapi_instrumentator import Instrumentator

from app import __version__
from app.api.errors import install_error_handlers
from app.api.guard import Gatekeeper, guard
from app.api.idempotency import Idempotency, install_idempotency
from app.api.middleware import BodySizeLimitMiddleware, LoopbackOnlyMiddleware, RequestContextMiddleware
from app.api.native import router as native
from app.api.openai import router as openai
from app.api.openapi import PROTECTED_ERRORS, error_responses, install_openapi
from app.api.playground import router as playground
from app.api.responses import router as responses
from app.api.system import router as system
from app.api.templates import router as templates_api
from app.api.tgi import router as tgi
from app.api.usage import router as usage
from app.core.config import PII_ENTITIES, ConfigError, Settings, TemplatesSettings, load_settings
from app.core.logging import configure_logging
from app.core.metrics import LiveValues, LLMMetrics
from app.core.pii import PIIGuard
from app.core.security import ApiKeys, key_names
from app.engine.types import PrefixCacheStats
from app.model.runtime import ModelRuntime, ServingModelFactory, load_serving_model
from app.services.accounting import Accounting, UsageMeter
from app.services.generation import GenerationPolicy
from app.services.state import SharedState, build_state
from app.services.templates import TemplateRegistry

logger = logging.getLogger("app.main")

FatalHandler = Callable[[str], None]


def create_app(
    settings: Settings | None = None,
    on_fatal: FatalHandler | None = None,
    serving_model: ServingModelFactory = load_serving_model,
) -> FastAPI:
    """Build an app for these settings. The model loads in the background once it starts;
    `on_fatal` is told (once, with one line) if it cannot be loaded. `serving_model` builds
    the engine (tests pass a scripted fake, or hold the real one to watch the loading state).

    With no settings (`uvicorn --factory app.main:create_app`) it prepares the process as
    `python -m app` does: settings from config and environment, JSON logging, and a model
    that cannot be loaded ends the process."""
    serving = settings is None
    if settings is None:
        settings = serving_settings()
        on_fatal = on_fatal or _end_process
    try:
        # The default folder may be absent (a server started elsewhere); one that was named may not.
        named = settings.templates.dir != TemplatesSettings().dir
        templates = TemplateRegistry.load(settings.templates.dir, must_exist=named)
    except ConfigError as exc:
        if serving:
            config_failed(exc)
        raise
    llm_metrics = _build_metrics(settings)
    state = build_state(settings, llm_metrics)
    policy = _build_policy(settings, llm_metrics, state)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = ModelRuntime(settings, serving_model, on_batch=llm_metrics.observe_batch)
        sessions = state.sessions
        app.state.runtime = runtime
        llm_metrics.watch(
            LiveValues(
                queue=lambda: _queue_counts(runtime),
                batch_slots=settings.engine.max_batch_size,
                cache=lambda: policy.cache.stats() if policy.cache else None,
                sessions=lambda: len(sessions),
                prefix_cache=lambda: _prefix_cache(runtime),
            )
        )
        loading = asyncio.create_task(_load(runtime, llm_metrics, on_fatal), name="model-load")
        try:
            yield
        finally:
            loading.cancel()
            with suppress(asyncio.CancelledError):
                await loading
            await runtime.shutdown()
            if policy.accounting is not None:
                # The last requests' usage reaches the store before its connection closes.
                await policy.accounting.usage.flush()
            await state.close()

    app = FastAPI(
        title="LLM FastAPI Service",
        version=__version__,
        lifespan=lifespan,
        root_path=settings.app.root_path,
        responses=error_responses(500),
    )
    app.state.settings = settings
    app.state.shared_state = state
    app.state.sessions = state.sessions
    app.state.policy = policy
    app.state.templates = templates
    app.state.gatekeeper = Gatekeeper(
        keys=ApiKeys(settings.security.api_keys),
        limiter=state.limiter,
        trust_forwarded_for=settings.rate_limit.trust_forwarded_for,
        usage=state.usage,
    )
    install_error_handlers(app)
    install_idempotency(app, _idempotency(settings, state))
    install_openapi(app, keys_required=app.state.gatekeeper.keys.enabled, templates=templates)
    protected = [Depends(guard)]
    protected_responses = error_responses(*PROTECTED_ERRORS)
    for module in (native, openai, responses, tgi, templates_api, usage, system):
        app.include_router(module.router, dependencies=protected, responses=protected_responses)
    app.include_router(system.health_router)
    if settings.playground.enabled:
        app.include_router(playground.root_router)
        app.include_router(playground.router)
    if settings.security.protect_metrics:
        app.include_router(system.metrics_router, dependencies=protected, responses=protected_responses)
    else:
        app.include_router(system.metrics_router)
    Instrumentator(registry=llm_metrics.registry, excluded_handlers=["/metrics"]).instrument(app)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.security.max_body_bytes, metrics=llm_metrics)
    if not settings.security.api_keys and not settings.security.allow_unauthenticated:
        # uvicorn's or fastapi's own --host can bind wider than app.host; an open server still
        # answers only on this machine's loopback addresses.
        app.add_middleware(LoopbackOnlyMiddleware)
    app.add_middleware(RequestContextMiddleware, access_log=settings.logging.access_log)
    return app


def serving_settings() -> Settings:
    """Settings for a process about to serve, with JSON logging set up; a bad configuration
    ends the process with one line on stderr and status 2."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        config_failed(exc)
    configure_logging(settings.logging.level)
    return settings


def config_failed(exc: ConfigError) -> NoReturn:
    """End the process with one plain line on stderr and status 2."""
    # Logging may not be set up yet (its level is part of the configuration): one plain line.
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None


def __getattr__(name: str) -> FastAPI:
    """`app` for `uvicorn app.main:app` and `fastapi run app/main.py`, built on first use,
    so that importing this module reads no configuration and touches no logging."""
    if name == "app":
        served = _served_app()
        # A CLI may set up its own logging between finding the app and serving it (fastapi-cli
        # hands uvicorn a log config): each look-up puts the JSON lines back.
        configure_logging(served.state.settings.logging.level)
        return served
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # fastapi-cli looks for the app among the module's names before getting it.
    return sorted({*globals(), "app"})


@functools.cache
def _served_app() -> FastAPI:
    return create_app()


def _end_process(message: str) -> None:
    # Under uvicorn's own CLI nothing else holds the server: SIGTERM makes it shut down
    # cleanly and exit non-zero, as `python -m app` does when the model cannot be loaded.
    os.kill(os.getpid(), signal.SIGTERM)


def _build_metrics(settings: Settings) -> LLMMetrics:
    pii_entities = [*PII_ENTITIES, *settings.pii.custom_patterns]
    return LLMMetrics(settings.model.resolved_served_name(), pii_entities, key_names(settings))


def _build_policy(settings: Settings, llm_metrics: LLMMetrics, state: SharedState) -> GenerationPolicy:
    return GenerationPolicy(
        pii=PIIGuard(settings.pii, on_redaction=llm_metrics.count_redactions),
        metrics=llm_metrics,
        cache=state.cache,
        cache_deterministic_only=settings.cache.deterministic_only,
        log_prompts=settings.logging.log_prompts,
        flight_patience_s=settings.engine.queue_timeout_s + settings.engine.request_timeout_s,
        max_prompt_chars=settings.security.max_prompt_chars,
        accounting=Accounting(usage=UsageMeter(state.usage, llm_metrics), budget=state.budget),
    )


def _idempotency(settings: Settings, state: SharedState) -> Idempotency | None:
    if state.idempotency is None:
        return None
    # A waiting repeat waits no longer than the first request may take.
    wait_s = settings.engine.queue_timeout_s + settings.engine.request_timeout_s
    return Idempotency(state.idempotency, settings.idempotency.wait, wait_s)


def _queue_counts(runtime: ModelRuntime) -> tuple[int, int]:
    stats = runtime.engine_stats()
    return (stats.queued, stats.running) if stats else (0, 0)


def _prefix_cache(runtime: ModelRuntime) -> PrefixCacheStats | None:
    stats = runtime.engine_stats()
    return stats.prefix_cache if stats else None


async def _load(runtime: ModelRuntime, llm_metrics: LLMMetrics, on_fatal: FatalHandler | None) -> None:
    try:
        await runtime.load()
        if runtime.info is not None:
            info = runtime.info
            llm_metrics.model_info.info(
                {
                    "model": info.served_name,
                    "device": info.device,
                    "dtype": info.dtype,
                    "quantization": info.quantization,
                }
            )
    except Exception as exc:  # any failure is reported once, as one line, and ends the process
        message = str(exc) or type(exc).__name__
        logger.error(message)
        if on_fatal is not None:
            on_fatal(message)
