"""The idempotency recorder keeps a claimed answer only when it succeeded and reached the client whole."""

from __future__ import annotations

import asyncio

from starlette.types import Message, Receive, Scope, Send

from app.api.idempotency import CLAIM, Claim, IdempotencyRecorder
from app.core.config import IdempotencySettings
from app.core.idempotency import MemoryIdempotencyStore


def run(disconnect_first: bool, status: int = 200) -> MemoryIdempotencyStore:
    store = MemoryIdempotencyStore(IdempotencySettings())

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert await store.claim("k", "fp") is None
        scope["state"][CLAIM] = Claim(store, "k")
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        if disconnect_first:
            await receive()  # what a streaming response's disconnect listener does
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pass

    asyncio.run(IdempotencyRecorder(app)({"type": "http", "method": "POST", "state": {}}, receive, send))
    return store


def stored(store: MemoryIdempotencyStore) -> bytes | None:
    record = asyncio.run(store.claim("k", "fp"))
    return record.response.body if record is not None and record.response is not None else None


def test_a_whole_answer_is_kept() -> None:
    assert stored(run(disconnect_first=False)) == b"part"


def test_an_answer_whose_client_left_is_not_kept() -> None:
    assert stored(run(disconnect_first=True)) is None


def test_an_error_answer_is_not_kept() -> None:
    assert stored(run(disconnect_first=False, status=503)) is None
