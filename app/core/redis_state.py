"""The connection to the shared state backend: one Redis client for every store that replicas share.

Every call goes through `RedisState.run`: bounded by `state.timeout_s` (nothing waits on a slow
Redis longer than that), failures counted per operation and raised as StateUnavailable, so each
feature decides what an outage means for it. Redis's own client reconnects on the next call,
and the first call that succeeds marks the backend up again: the server recovers by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.core.config import StateSettings
from app.core.errors import StateUnavailable

logger = logging.getLogger("app.state")

T = TypeVar("T")
Call = Callable[["redis.Redis"], Awaitable[T]]


class StateMonitor(Protocol):
    """Where the backend's health is reported (the metrics)."""

    def state_backend_error(self, operation: str) -> None: ...

    def state_backend_up(self, up: bool) -> None: ...


class RedisState:
    """Keys are `key_prefix` + the parts joined by ':'. Used from the event loop only.

    The client is made for the running event loop on first use (tests run several loops in
    one process; a connection belongs to the loop that opened it) and closed by `close`."""

    def __init__(self, settings: StateSettings, monitor: StateMonitor | None = None) -> None:
        self.settings = settings
        self._monitor = monitor
        self._client: redis.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.up = True
        """Whether the last call answered; True until one fails."""
        if monitor is not None:
            monitor.state_backend_up(True)

    @property
    def timeout_s(self) -> float:
        return self.settings.timeout_s

    def key(self, *parts: str) -> str:
        return self.settings.key_prefix + ":".join(parts)

    @property
    def client(self) -> redis.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = redis.Redis.from_url(
                self.settings.redis_url.get_secret_value(),
                socket_timeout=self.settings.timeout_s,
                socket_connect_timeout=self.settings.timeout_s,
                # One try per call: the caller's deadline is `timeout_s`, and a retry would spend it twice.
                retry=Retry(NoBackoff(), 0),
            )
            self._loop = loop
        return self._client

    async def run(self, operation: str, call: Call[T]) -> T:
        """`call` with the client, within `timeout_s`; StateUnavailable if Redis errs or is late.
        `operation` names the feature in llm_state_backend_errors_total (a bounded set)."""
        try:
            result = await asyncio.wait_for(call(self.client), self.settings.timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(operation, exc)
            raise StateUnavailable("the shared state store did not answer; retry shortly") from None
        self._answered()
        return result

    async def ping(self) -> bool:
        try:
            await self.run("health", lambda client: client.ping())
        except StateUnavailable:
            return False
        return True

    async def script(self, operation: str, source: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a Lua script atomically, like `run`: by EVALSHA, loading it again whenever Redis
        has forgotten it (a restart, SCRIPT FLUSH)."""
        return await self.run(operation, lambda client: client.register_script(source)(keys=keys, args=args))

    async def close(self) -> None:
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            # An unreachable or already closed connection has nothing left to close.
            with contextlib.suppress(RedisError, OSError, RuntimeError):
                await client.aclose()

    def _failed(self, operation: str, exc: BaseException) -> None:
        if self._monitor is not None:
            self._monitor.state_backend_error(operation)
            self._monitor.state_backend_up(False)
        if self.up:
            # Once per outage, not once per request: a down Redis must not flood the log.
            logger.warning("state backend unavailable", extra={"operation": operation, "error": type(exc).__name__})
        self.up = False

    def _answered(self) -> None:
        if not self.up:
            logger.info("state backend available again")
            if self._monitor is not None:
                self._monitor.state_backend_up(True)
        self.up = True
