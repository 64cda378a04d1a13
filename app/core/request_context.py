"""The current request's id, visible to every log line emitted while serving it."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def accept_or_make_request_id(candidate: str | None) -> str:
    """The client's X-Request-ID when it is well formed, else a fresh one."""
    if candidate and _VALID_ID.match(candidate):
        return candidate
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return request_id_var.get()
