"""Several generation runs answering one request (OpenAI's `n`, prompt lists): collected, or merged as a stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from fastapi import Request

from app.api.streaming import collect_unless_disconnected
from app.services.generation import Completion, GenerationRun


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
