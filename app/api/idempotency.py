"""Idempotency-Key on the generating POSTs: a repeat of an answered request gets the stored answer.

One mechanism for every route, in two halves. A route dependency (`IDEMPOTENT`, after the
guard, so the caller is known and refused callers never reach the store) decides: run (it
claims the key), replay (the stored answer, with `Idempotent-Replayed: true`), 409 while the
first still runs, or 422 for the key reused with another request. A pure-ASGI middleware
(`IdempotencyRecorder`) sees the bytes the claimed request sends, SSE streams included, and
keeps them only if the answer succeeded and was sent whole; otherwise it frees the key.
Keys are scoped by the API key's name; anonymous callers (no keys configured) share one scope.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.guard import PrincipalDep
from app.core.errors import IdempotencyInProgress, IdempotencyKeyReused
from app.core.idempotency import IdempotencyStore, StoredResponse

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_PATTERN = r"^[\x20-\x7E]{1,255}$"
CLAIM = "idempotency_claim"
"""Where the dependency leaves its claim for the recorder, in the request scope's state."""
_UNSTORABLE = "idempotency_unstorable"
_NOT_REPLAYED = {"content-length", "transfer-encoding", "date", "server"}


@dataclass(frozen=True)
class Idempotency:
    """What the dependency needs from app.state: the store, and how long a repeat may wait."""

    store: IdempotencyStore
    wait: bool
    wait_s: float


class IdempotentReplay(Exception):  # not an error: the stored answer on its way out, past the route
    def __init__(self, response: StoredResponse) -> None:
        super().__init__("replayed")
        self.response = response


@dataclass
class Claim:
    store: IdempotencyStore
    key: str


def mark_unstorable(scope: Scope) -> None:
    """The answer under way is not to be kept (a stream that failed or lost its client)."""
    scope.setdefault("state", {})[_UNSTORABLE] = True


async def idempotency(
    request: Request,
    principal: PrincipalDep,
    key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            min_length=1,
            max_length=255,
            pattern=KEY_PATTERN,
            description="Run this request at most once: a repeat (same key and body) gets the stored answer.",
        ),
    ] = None,
) -> None:
    settings: Idempotency | None = getattr(request.app.state, "idempotency", None)
    if key is None or settings is None:
        return
    body = await request.body()
    fingerprint = hashlib.sha256(b"\n".join([request.method.encode(), request.url.path.encode(), body])).hexdigest()
    scope_name = principal.name if principal is not None else ""
    store_key = hashlib.sha256(f"{scope_name}\n{key}".encode()).hexdigest()
    while True:
        record = await settings.store.claim(store_key, fingerprint)
        if record is None:
            request.scope.setdefault("state", {})[CLAIM] = Claim(settings.store, store_key)
            return
        if record.fingerprint != fingerprint:
            raise IdempotencyKeyReused(f"{HEADER} was used for another request", param=HEADER)
        if record.response is not None:
            raise IdempotentReplay(record.response)
        if not settings.wait:
            raise IdempotencyInProgress(f"a request with this {HEADER} is still running", param=HEADER)
        await settings.store.wait(store_key, settings.wait_s)


IDEMPOTENT = [Depends(idempotency)]
"""`dependencies=` of every generating route."""


async def _replay(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IdempotentReplay)
    stored = exc.response
    headers = {name: value for name, value in stored.headers if name not in _NOT_REPLAYED}
    headers[REPLAYED_HEADER] = "true"
    return Response(content=stored.body, status_code=stored.status, headers=headers)


@dataclass
class _Capture:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False
    left: bool = False

    def record(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))
            self.complete = not message.get("more_body", False)

    def stored(self) -> StoredResponse | None:
        if not self.complete or self.left or not 200 <= self.status < 400:
            return None
        return StoredResponse(self.status, tuple(self.headers), b"".join(self.chunks))


class IdempotencyRecorder:
    """Keeps the answer of a request that claimed an Idempotency-Key, or frees the key."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        capture = _Capture()

        async def receive_watching() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not capture.complete:
                capture.left = True
            return message

        async def send_capturing(message: Message) -> None:
            if state.get(CLAIM) is not None:
                capture.record(message)
            try:
                await send(message)
            except BaseException:
                capture.left = True
                raise

        try:
            await self.app(scope, receive_watching, send_capturing)
        finally:
            claim: Claim | None = state.get(CLAIM)
            if claim is not None:
                stored = None if state.get(_UNSTORABLE) else capture.stored()
                if stored is not None:
                    await claim.store.complete(claim.key, stored)
                else:
                    await claim.store.release(claim.key)


def install_idempotency(app: FastAPI, settings: Idempotency | None) -> None:
    """State, replay handler and recorder; the routes opt in with `IDEMPOTENT`."""
    app.state.idempotency = settings
    app.add_exception_handler(IdempotentReplay, _replay)
    app.add_middleware(IdempotencyRecorder)
