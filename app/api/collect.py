"""Runs reaching the client: collected whole unless the client leaves, or several merged as one stream
(OpenAI's `n`, prompt lists)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from fastapi import Request

from app.api.guard import add_response_headers
from app.services.generation import Completion, GenerationRun

logger = logging.getLogger("app.api.collect")


@dataclass(frozen=True)
class Delta:
    index: int
    text: str


@dataclass(frozen=True)
class Finished:
    index: int
    completion: Completion


RunEvent = Delta | Finished


async def collect_all(runs: Sequence[GenerationRun], request: Request) -> list[Completion]:
    """Every run's completion, in order; all are aborted if the client disconnects or one fails."""
    tasks = [asyncio.ensure_future(collect_unless_disconnected(run, request)) for run in runs]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def merge_runs(runs: Sequence[GenerationRun]) -> AsyncGenerator[RunEvent, None]:
    """The runs' text deltas as they come, each run ending with its Finished event.

    Each run is pumped by its own task into this request's own mailbox; the first failure
    is raised here, and closing the iterator (or a failure) aborts every run still going.
    """
    mailbox: asyncio.Queue[RunEvent | Exception] = asyncio.Queue()

    async def pump(index: int, run: GenerationRun) -> None:
        try:
            async for text in run:
                mailbox.put_nowait(Delta(index, text))
            assert run.completion is not None, "run ended without a completion"
            mailbox.put_nowait(Finished(index, run.completion))
        except Exception as exc:  # handed to the consumer, which decides what the client sees
            mailbox.put_nowait(exc)

    tasks = [asyncio.ensure_future(pump(index, run)) for index, run in enumerate(runs)]
    try:
        running = len(tasks)
        while running:
            event = await mailbox.get()
            if isinstance(event, Exception):
                raise event
            if isinstance(event, Finished):
                running -= 1
            yield event
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for run in runs:
            await run.aclose()


def mark_cache_result(request: Request, cached: bool) -> None:
    add_response_headers(request, {"X-Cache": "HIT" if cached else "MISS"})


async def collect_unless_disconnected(run: GenerationRun, request: Request) -> Completion:
    """Run to completion, aborting the generation if the client disconnects first."""
    collect = asyncio.ensure_future(run.collect())
    watch = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
        if collect in done:
            return collect.result()
        logger.info("client disconnected; generation aborted")
        collect.cancel()
        raise asyncio.CancelledError
    finally:
        watch.cancel()
        if not collect.done():
            collect.cancel()
        await run.aclose()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
