"""`python -m app`'s uvicorn server: on SIGTERM it drains before it stops listening.

uvicorn alone closes its listening socket the moment SIGTERM arrives, so a load balancer
polling readiness never sees the replica leave: its next requests are refused at the TCP
level. Here SIGTERM first puts the model runtime into `draining` (/health answers 503
`draining`, new generations 503 `shutting_down`, /health/live stays 200) while running
generations finish within `engine.shutdown_grace_s`; only then does uvicorn's own shutdown
run. A second SIGTERM, or SIGINT, stops at once as plain uvicorn does.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from app.model.runtime import ModelRuntime

logger = logging.getLogger("app.server")

Drain = Callable[[], Awaitable[None]]


async def drain_app(app: FastAPI) -> None:
    """Drain the app's model runtime; nothing to do before the lifespan has built it."""
    runtime: ModelRuntime | None = getattr(app.state, "runtime", None)
    if runtime is not None:
        await runtime.drain()


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self._drain = drain
        self._drain_requested = False
        self._draining: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self._drain_requested and not self.should_exit:
            # A signal handler must not touch the event loop: the next tick (0.1 s) starts the drain.
            # uvicorn's handler is not called: sse-starlette wraps it to end every token stream at
            # once, and it records the signal to re-raise at the end (a drained server exits 0).
            self._drain_requested = True
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_requested and self._draining is None:
            self._draining = asyncio.create_task(self._drain_then_exit(), name="drain")
        return await super().on_tick(counter)

    async def _drain_then_exit(self) -> None:
        try:
            await self._drain()
        except Exception:  # the process is ending either way; say why it ended sooner
            logger.exception("draining failed; shutting down now")
        finally:
            self.should_exit = True
