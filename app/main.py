"""The composition root: `create_app(settings)` wires config, middleware, routers and the model."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from fastapi import Depends, FastAPI
from prometheus_fastapi_instrumentator import Instrumentator

from app import __version__
from app.api.errors import install_error_handlers
from app.api.guard import Gatekeeper, guard
from app.api.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from app.api.native import router as native
from app.api.openai import router as openai
from app.api.openapi import PROTECTED_ERRORS, error_responses, install_openapi
from app.api.responses import router as responses
from app.api.system import router as system
from app.api.tgi import router as tgi
from app.core.cache import ResponseCache
from app.core.config import PII_ENTITIES, Settings
from app.core.metrics import LiveValues, LLMMetrics
from app.core.pii import PIIGuard
from app.core.rate_limit import RateLimiter
from app.core.security import ApiKeys
from app.model.runtime import ModelRuntime, ServingModelFactory, load_serving_model
from app.services.generation import Completion, GenerationPolicy
from app.services.sessions import SessionStore

logger = logging.getLogger("app.main")

FatalHandler = Callable[[str], None]


def create_app(
    settings: Settings,
    on_fatal: FatalHandler | None = None,
    serving_model: ServingModelFactory = load_serving_model,
) -> FastAPI:
    """Build an app for these settings. The model loads in the background once it starts;
    `on_fatal` is told (once, with one line) if it cannot be loaded. `serving_model` builds
    the engine (tests pass a scripted fake, or hold the real one to watch the loading state)."""

    policy = _build_policy(settings)
    llm_metrics = policy.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = ModelRuntime(settings, serving_model, on_batch=llm_metrics.observe_batch)
        sessions = SessionStore(settings.chat_history)
        app.state.runtime = runtime
        app.state.sessions = sessions
        llm_metrics.watch(
            LiveValues(
                queue=lambda: _queue_counts(runtime),
                cache=lambda: policy.cache.stats() if policy.cache else None,
                sessions=lambda: len(sessions),
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

    app = FastAPI(
        title="LLM FastAPI Service",
        version=__version__,
        lifespan=lifespan,
        root_path=settings.app.root_path,
        responses=error_responses(500),
    )
    app.state.settings = settings
    app.state.policy = policy
    app.state.gatekeeper = Gatekeeper(
        keys=ApiKeys(settings.security.api_keys),
        limiter=RateLimiter(settings.rate_limit) if settings.rate_limit.enabled else None,
        trust_forwarded_for=settings.rate_limit.trust_forwarded_for,
    )
    install_error_handlers(app)
    install_openapi(app, keys_required=app.state.gatekeeper.keys.enabled)
    protected = [Depends(guard)]
    protected_responses = error_responses(*PROTECTED_ERRORS)
    for module in (native, openai, responses, tgi, system):
        app.include_router(module.router, dependencies=protected, responses=protected_responses)
    app.include_router(system.health_router)
    if settings.security.protect_metrics:
        app.include_router(system.metrics_router, dependencies=protected, responses=protected_responses)
    else:
        app.include_router(system.metrics_router)
    Instrumentator(registry=llm_metrics.registry, excluded_handlers=["/metrics"]).instrument(app)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.security.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, access_log=settings.logging.access_log)
    return app


def _build_policy(settings: Settings) -> GenerationPolicy:
    pii_entities = [*PII_ENTITIES, *settings.pii.custom_patterns]
    llm_metrics = LLMMetrics(settings.model.resolved_served_name(), pii_entities)
    cache: ResponseCache[Completion] | None = (
        ResponseCache(settings.cache.size, settings.cache.ttl_seconds) if settings.cache.enabled else None
    )
    return GenerationPolicy(
        pii=PIIGuard(settings.pii, on_redaction=llm_metrics.count_redactions),
        metrics=llm_metrics,
        cache=cache,
        cache_deterministic_only=settings.cache.deterministic_only,
        log_prompts=settings.logging.log_prompts,
        flight_patience_s=settings.engine.queue_timeout_s + settings.engine.request_timeout_s,
    )


def _queue_counts(runtime: ModelRuntime) -> tuple[int, int]:
    stats = runtime.engine_stats()
    return (stats.queued, stats.running) if stats else (0, 0)


async def _load(runtime: ModelRuntime, llm_metrics: LLMMetrics, on_fatal: FatalHandler | None) -> None:
    try:
        await runtime.load()
        if runtime.info is not None:
            info = runtime.info
            llm_metrics.model_info.info({"model": info.served_name, "device": info.device, "dtype": info.dtype})
    except Exception as exc:  # any failure is reported once, as one line, and ends the process
        message = str(exc) or type(exc).__name__
        logger.error(message)
        if on_fatal is not None:
            on_fatal(message)
