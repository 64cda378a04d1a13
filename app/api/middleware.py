"""Pure-ASGI middleware: request ids, timing, access log, body-size cap, loopback-only access."""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_body, error_response
from app.core.config import is_loopback
from app.core.errors import PayloadTooLarge, RemoteAccessRefused, ServiceError
from app.core.metrics import LLMMetrics
from app.core.request_context import accept_or_make_request_id, request_id_var

access_logger = logging.getLogger("app.access")
logger = logging.getLogger("app.middleware")


class RequestContextMiddleware:
    """Sets the request id (X-Request-ID in and out), X-Process-Time, and logs one access line."""

    def __init__(self, app: ASGIApp, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = accept_or_make_request_id(incoming)
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        responded = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                headers = MutableHeaders(scope=message)
                for name, value in scope["state"].get("response_headers", {}).items():
                    headers[name] = value
                headers["X-Request-ID"] = request_id
                headers["X-Process-Time"] = f"{time.perf_counter() - started:.4f}"
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            if responded:  # a stream that broke mid-way: its status is sent, nothing more can be said
                raise
            # Answered here rather than by Starlette's outermost handler, which runs after this
            # request's id is gone: a 500 carries the id (header and body) like every other answer.
            logger.exception("unexpected error")
            await error_response(ServiceError("internal server error"))(scope, receive, send_with_headers)
        finally:
            if self.access_log:
                access_logger.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "key": getattr(scope["state"].get("principal"), "name", None),
                        "duration_s": round(time.perf_counter() - started, 4),
                    },
                )
            request_id_var.reset(token)


class BodySizeLimitMiddleware:
    """Answers 413 for bodies over the cap, declared (Content-Length) or streamed (chunked).

    It answers before the app's error handlers could, so it counts its rejections itself."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, metrics: LLMMetrics | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._reject(send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await self._reject(send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        error = PayloadTooLarge(f"request body exceeds {self.max_body_bytes} bytes")
        if self.metrics is not None:
            self.metrics.reject(error.reject_reason)
        await send_error(send, error)


class LoopbackOnlyMiddleware:
    """Answers 403 to requests that reached this machine on a non-loopback address.

    For a server with no API key, bound wider than `app.host` allows (uvicorn's or fastapi's
    own `--host`): the socket's own address is the one the client connected to, so a
    client on this machine is served and one elsewhere is not.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] == "http" and server and _is_remote_address(str(server[0])):
            logger.warning(
                "refused a request on a non-loopback address: no API key is configured",
                extra={"address": server[0]},
            )
            await send_error(
                send,
                RemoteAccessRefused(
                    "this server has no API key and answers only on loopback addresses; "
                    "set security.api_keys or security.allow_unauthenticated"
                ),
            )
            return
        await self.app(scope, receive, send)


def _is_remote_address(host: str) -> bool:
    # Servers report the socket's IP address; only in-process test clients put a name here.
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return not is_loopback(host)


async def send_error(send: Send, exc: ServiceError) -> None:
    """Answer with the JSON error body from below the app, where no exception handler runs."""
    payload: dict[str, Any] = error_body(exc)
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": exc.status_code,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})
