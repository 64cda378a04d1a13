"""A request inside the engine: its own mailbox on the event loop, and the consumer's end of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from app.core.errors import ServiceError
from app.engine.types import GenerationChunk, GenerationRequest

MailItem = GenerationChunk | ServiceError


@dataclass(eq=False)
class Job:
    """Created on the event loop by `submit`; handed to the inference thread by the engine."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    enqueued_at: float
    mailbox: asyncio.Queue[MailItem] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    """Set from the event loop when the client went away; read by the inference thread."""

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def deliver(self, item: MailItem) -> None:
        """Thread-safe hand-over to the request's own mailbox on its event loop."""
        try:
            self.loop.call_soon_threadsafe(self.mailbox.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled = True


class JobStream(AsyncIterator[GenerationChunk]):
    """The consumer's end of a job. Closing it before the last chunk aborts the job."""

    def __init__(self, job: Job, abort: Callable[[Job], None]) -> None:
        self._job = job
        self._abort = abort
        self._done = False

    def __aiter__(self) -> JobStream:
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
            self._abort(self._job)
