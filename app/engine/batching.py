"""The inference engine: a bounded queue in front of a continuous-batching scheduler.

The event loop only touches the queue (under a lock, never while torch runs) and each
request's own mailbox. One dedicated inference thread owns the scheduler and with it the
batch and every forward pass: it admits queued requests into free batch slots, steps the
batch, and answers requests that waited too long or whose client left.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

import torch

from app.core.config import EngineSettings
from app.core.errors import EngineOverloaded, GenerationFailed, QueueTimeout, ServiceError, ShuttingDown
from app.engine.jobs import Job, JobStream
from app.engine.scheduler import Retired, Scheduler, SchedulerLimits
from app.engine.types import BatchObserver, EngineStats, GenerationChunk, GenerationRequest, LoadedModel

logger = logging.getLogger("app.engine.batching")

Clock = Callable[[], float]
_JOIN_TIMEOUT_S = 5.0


class BatchingEngine:
    """Up to `engine.max_batch_size` requests share each forward pass; `max_queue` more may wait."""

    def __init__(
        self,
        loaded: LoadedModel,
        settings: EngineSettings,
        clock: Clock = time.monotonic,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        limits = SchedulerLimits(
            max_batch_size=settings.max_batch_size,
            request_timeout_s=settings.request_timeout_s,
            prefix_cache_bytes=settings.prefix_cache_mb * 2**20,
        )
        self._scheduler = Scheduler(loaded, limits, clock, on_batch)
        self._lock = threading.Condition()
        # Guarded by _lock: the queue, the jobs and the figures the event loop reads.
        self._queue: deque[Job] = deque()
        self._jobs: set[Job] = set()
        """Every request queued or running: by identity, as clients may reuse a request id."""
        self._active = 0
        self._free = settings.max_batch_size
        self._cancelled = 0
        self._stopping = False
        self._accepting = True
        self._thread = threading.Thread(target=self._run_forever, name="inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if not self._accepting:
            raise ShuttingDown("server is shutting down")
        job = Job(request=request, loop=asyncio.get_running_loop(), enqueued_at=self._clock())
        with self._lock:
            # Requests about to take a free slot are not waiting: only the rest count against max_queue.
            if len(self._queue) >= self._settings.max_queue + self._free:
                raise EngineOverloaded("too many requests are waiting; retry shortly")
            self._queue.append(job)
            self._jobs.add(job)
            self._lock.notify_all()
        return JobStream(job, self._abort_job)

    def stats(self) -> EngineStats:
        with self._lock:
            queued, running, cancelled = len(self._queue), self._active, self._cancelled
        # Integers the inference thread updates: read without its lock, as they are.
        return EngineStats(queued, running, cancelled, prefix_cache=self._scheduler.prefix_stats())

    async def shutdown(self, grace_s: float) -> None:
        """Stop taking requests, let running ones finish within `grace_s`, cut the rest."""
        self._accepting = False
        await asyncio.to_thread(self._wait_idle, grace_s)
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, _JOIN_TIMEOUT_S)
        self._fail_everyone(ShuttingDown("server is shutting down"))

    def _abort_job(self, job: Job) -> None:
        """The client left: the inference thread drops the request before its next step."""
        job.cancelled = True

    def _wait_idle(self, timeout_s: float) -> None:
        with self._lock:
            self._lock.wait_for(lambda: not self._queue and self._active == 0, timeout_s)

    def _run_forever(self) -> None:
        try:
            with torch.inference_mode():
                while self._admit():
                    try:
                        retired = self._scheduler.iterate()
                    except Exception:
                        logger.exception("decoding step failed; the requests in the batch failed")
                        failed = GenerationFailed("generation failed")
                        retired = [Retired(job, "failed", failed) for job in self._scheduler.abandon()]
                    self._retire(retired)
        except BaseException:
            logger.critical("the inference thread died; the engine takes no more requests", exc_info=True)
            self._accepting = False
            self._fail_everyone(GenerationFailed("generation failed"))
            raise

    def _fail_everyone(self, error: ServiceError) -> None:
        """Answer every request still known (queued or running): nobody is left waiting forever."""
        with self._lock:
            leftovers = list(self._jobs)
            self._jobs.clear()
            self._queue.clear()
            self._active = 0
            self._lock.notify_all()
        for job in leftovers:
            job.cancelled = True
            job.deliver(error)

    def _admit(self) -> bool:
        """Move queued requests into free slots; wait while there is nothing to do. False: stop."""
        with self._lock:
            while True:
                if self._stopping:
                    return False
                self._expire_queued()
                free = self._scheduler.free_slots()
                taken = [self._queue.popleft() for _ in range(min(free, len(self._queue)))]
                if taken or self._scheduler.active:
                    self._active = self._scheduler.active + len(taken)
                    self._free = free - len(taken)
                    break
                self._active, self._free = 0, free
                self._lock.notify_all()
                self._lock.wait()
        for job in taken:  # outside the lock: building a sequence's state is torch work
            self._scheduler.admit(job)
        return True

    def _expire_queued(self) -> None:
        """Drop queued requests whose client left or that waited past `queue_timeout_s`."""
        now = self._clock()
        waiting: deque[Job] = deque()
        for job in self._queue:
            if job.cancelled:
                self._forget(Retired(job, "cancelled"))
            elif now - job.enqueued_at > self._settings.queue_timeout_s:
                self._forget(Retired(job, "timeout"))
                job.deliver(QueueTimeout("request waited too long for the engine"))  # lock held: books agree
            else:
                waiting.append(job)
        self._queue = waiting

    def _retire(self, retired: list[Retired]) -> None:
        with self._lock:
            for leaving in retired:
                self._forget(leaving)
            self._active = self._scheduler.active
            self._free = self._scheduler.free_slots()
            self._lock.notify_all()
        for leaving in retired:
            if leaving.last is not None:
                leaving.job.deliver(leaving.last)

    def _forget(self, leaving: Retired) -> None:
        """Called with the lock held; the request's last mail goes once the books show it gone."""
        self._jobs.discard(leaving.job)
        if leaving.outcome == "cancelled":
            self._cancelled += 1
