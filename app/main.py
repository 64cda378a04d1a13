"""The composition root: `create_app(settings)` wires config, middleware, routers and the model."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI

from app import __version__
from app.api.errors import install_error_handlers
from app.api.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from app.api.routers import chat, generate, health, models, openai, responses, tgi
from app.core.config import Settings
from app.llm.runtime import ModelLoader, ModelRuntime
from app.services.sessions import SessionStore

logger = logging.getLogger("app.main")

FatalHandler = Callable[[str], None]


def create_app(
    settings: Settings, on_fatal: FatalHandler | None = None, model_loader: ModelLoader | None = None
) -> FastAPI:
    """Build an app for these settings. The model loads in the background once it starts;
    `on_fatal` is told (once, with one line) if it cannot be loaded. `model_loader` replaces
    app.llm.loader.load_model (tests use it to hold the loading state)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = ModelRuntime(settings, model_loader)
        app.state.settings = settings
        app.state.runtime = runtime
        app.state.sessions = SessionStore(settings.chat_history)
        loading = asyncio.create_task(_load(runtime, on_fatal), name="model-load")
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
    )
    install_error_handlers(app)
    for module in (generate, chat, health, openai, responses, models, tgi):
        app.include_router(module.router)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.security.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, access_log=settings.logging.access_log)
    return app


async def _load(runtime: ModelRuntime, on_fatal: FatalHandler | None) -> None:
    try:
        await runtime.load()
    except Exception as exc:  # any failure is reported once, as one line, and ends the process
        message = str(exc) or type(exc).__name__
        logger.error(message)
        if on_fatal is not None:
            on_fatal(message)
