"""`python -m app`'s server: the first SIGTERM drains and then exits; a second one, or SIGINT, exits at once."""

from __future__ import annotations

import asyncio
import signal

import pytest
import uvicorn
from sse_starlette.sse import AppStatus

from app.server import DrainingServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def sse_streams_keep_flowing(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn's own handle_exit, as sse-starlette patches it, sets a process-wide flag that ends
    every SSE stream at once; it is put back after each test so that later tests still stream."""
    monkeypatch.setattr(AppStatus, "should_exit", False)


class HeldDrain:
    """A drain that runs until the test lets it finish."""

    def __init__(self, fails: bool = False) -> None:
        self.started = asyncio.Event()
        self.finish = asyncio.Event()
        self.leaving = asyncio.Event()
        """Set as the drain returns (or raises): the server's next step is in the same task step."""
        self.fails = fails

    async def __call__(self) -> None:
        self.started.set()
        await self.finish.wait()
        self.leaving.set()
        if self.fails:
            raise RuntimeError("engine would not stop")


def server_with(drain: HeldDrain) -> DrainingServer:
    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("never served")

    return DrainingServer(uvicorn.Config(app), drain)


@pytest.mark.parametrize("fails", [False, True])
async def test_sigterm_drains_first_and_exits_after(fails: bool) -> None:
    drain = HeldDrain(fails)
    server = server_with(drain)
    server.handle_exit(signal.SIGTERM, None)
    assert not server.should_exit  # still listening: readiness can say "draining"
    assert not AppStatus.should_exit  # running token streams go on
    assert await server.on_tick(1) is False
    async with asyncio.timeout(5):
        await drain.started.wait()
    assert await server.on_tick(2) is False
    drain.finish.set()
    async with asyncio.timeout(5):
        await drain.leaving.wait()
    assert server.should_exit
    assert await server.on_tick(3) is True


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
async def test_a_second_signal_cuts_the_drain_short(second: signal.Signals) -> None:
    drain = HeldDrain()
    server = server_with(drain)
    server.handle_exit(signal.SIGTERM, None)
    await server.on_tick(1)
    async with asyncio.timeout(5):
        await drain.started.wait()
    server.handle_exit(second, None)
    assert server.should_exit
    drain.finish.set()


async def test_sigint_exits_at_once_without_draining() -> None:
    drain = HeldDrain()
    server = server_with(drain)
    server.handle_exit(signal.SIGINT, None)
    assert server.should_exit and not drain.started.is_set()
