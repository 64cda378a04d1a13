"""The inference engine: one dedicated thread owns the model; each request has its own mailbox.

This engine decodes one request at a time. It is the seam the batching scheduler replaces:
services only use `submit`, `abort` and `stats` (see app.llm.types.Engine).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import torch

from app.core.config import EngineSettings
from app.core.errors import (
    EngineOverloaded,
    GenerationFailed,
    GenerationTimeout,
    QueueTimeout,
    ServiceError,
    ShuttingDown,
)
from app.llm.loader import LoadedModel
from app.llm.sequence import SequenceDecoder
from app.llm.types import BatchObserver, EngineStats, GenerationChunk, GenerationRequest

logger = logging.getLogger("app.llm.engine")

Clock = Callable[[], float]
_Item = GenerationChunk | ServiceError


@dataclass(eq=False)
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    enqueued_at: float
    mailbox: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    def deliver(self, item: _Item) -> None:
        """Thread-safe hand-over to the request's own mailbox on the event loop."""
        try:
            self.loop.call_soon_threadsafe(self.mailbox.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled = True


class _JobStream(AsyncIterator[GenerationChunk]):
    """The consumer's end of a job. Closing it before the end aborts the job."""

    def __init__(self, engine: SerialEngine, job: _Job) -> None:
        self._engine = engine
        self._job = job
        self._done = False

    def __aiter__(self) -> _JobStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._done:
            raise StopAsyncIteration
        item = await self._job.mailbox.get()
        if isinstance(item, ServiceError):
            self._done = True
            raise item
        if item.finish_reason is not None:
            self._done = True
        return item

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._engine.abort(self._job.request.request_id)


class SerialEngine:
    """Runs queued requests on one inference thread, one at a time, token by token."""

    def __init__(
        self,
        loaded: LoadedModel,
        settings: EngineSettings,
        clock: Clock = time.monotonic,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self._loaded = loaded
        self._on_batch = on_batch
        self._settings = settings
        self._clock = clock
        self._queue: deque[_Job] = deque()
        self._jobs: dict[str, _Job] = {}
        self._running: _Job | None = None
        self._wakeup = threading.Condition()
        self._accepting = True
        self._stopping = False
        self._cancelled = 0
        self._thread = threading.Thread(target=self._run_forever, name="inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if not self._accepting:
            raise ShuttingDown("server is shutting down")
        job = _Job(request=request, loop=asyncio.get_running_loop(), enqueued_at=self._clock())
        with self._wakeup:
            if len(self._queue) >= self._settings.max_queue:
                raise EngineOverloaded("too many requests are waiting; retry shortly")
            self._queue.append(job)
            self._jobs[request.request_id] = job
            self._wakeup.notify()
        return _JobStream(self, job)

    def abort(self, request_id: str) -> None:
        with self._wakeup:
            job = self._jobs.get(request_id)
            if job is not None:
                job.cancelled = True

    def stats(self) -> EngineStats:
        with self._wakeup:
            return EngineStats(
                queued=len(self._queue),
                running=int(self._running is not None),
                cancelled=self._cancelled,
            )

    async def shutdown(self, grace_s: float) -> None:
        """Stop taking requests, let running ones finish within `grace_s`, cut the rest."""
        self._accepting = False
        await asyncio.to_thread(self._wait_idle, grace_s)
        with self._wakeup:
            for job in [*self._queue, *([self._running] if self._running else [])]:
                job.cancelled = True
                job.deliver(ShuttingDown("server is shutting down"))
            self._queue.clear()
            self._stopping = True
            self._wakeup.notify_all()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, 5.0)

    def _wait_idle(self, timeout_s: float) -> None:
        with self._wakeup:
            self._wakeup.wait_for(lambda: not self._queue and self._running is None, timeout_s)

    def _next_job(self) -> _Job | None:
        with self._wakeup:
            while not self._queue and not self._stopping:
                self._wakeup.wait()
            if self._stopping:
                return None
            self._running = self._queue.popleft()
            return self._running

    def _run_forever(self) -> None:
        with torch.inference_mode():
            while (job := self._next_job()) is not None:
                try:
                    self._run_job(job)
                except Exception:
                    logger.exception("generation failed", extra={"request_id": job.request.request_id})
                    job.deliver(GenerationFailed("generation failed"))
                finally:
                    with self._wakeup:
                        self._running = None
                        self._jobs.pop(job.request.request_id, None)
                        self._wakeup.notify_all()

    def _run_job(self, job: _Job) -> None:
        if job.cancelled:
            self._cancelled += 1
            return
        started = self._clock()
        if started - job.enqueued_at > self._settings.queue_timeout_s:
            job.deliver(QueueTimeout("request waited too long for the engine"))
            return
        decoder = SequenceDecoder(self._loaded, job.request)
        while not job.cancelled:
            if self._clock() - started > self._settings.request_timeout_s:
                job.deliver(GenerationTimeout("generation exceeded engine.request_timeout_s"))
                return
            chunk = decoder.step()
            if self._on_batch is not None:
                self._on_batch(1)
            if chunk.text or chunk.finish_reason:
                job.deliver(chunk)
            if chunk.finish_reason:
                return
        self._cancelled += 1
