"""Who may call and how often: the one dependency every protected route shares.

Auth first decides the identity (the key's name, or the client IP without a valid key);
that identity's token bucket is charged before any answer, so a 401 costs the caller's IP
a token too and a flood of bad keys ends in 429s. Rate-limit headers ride on every answer.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import Headers

from app.core.errors import RateLimited, Unauthorized
from app.core.rate_limit import RateLimiter
from app.core.security import ApiKeys, Principal
from app.core.usage import ANONYMOUS, UsageCounts, UsageStore
from app.services.accounting import Caller


@dataclass(frozen=True)
class Gatekeeper:
    keys: ApiKeys
    limiter: RateLimiter | None
    trust_forwarded_for: bool = False
    usage: UsageStore | None = None
    """Where a request-rate 429 is counted against the caller's key name."""


def presented_key(headers: Headers) -> str | None:
    """`X-API-Key: K`, else `Authorization: Bearer K`; anything else is no key."""
    key = headers.get("x-api-key", "").strip()
    if key:
        return key
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def client_ip(request: Request, trust_forwarded_for: bool) -> str:
    """The peer's address; behind a trusted proxy, the first well-formed X-Forwarded-For hop."""
    if trust_forwarded_for:
        first_hop = request.headers.get("x-forwarded-for", "").split(",")[0].strip()
        try:
            return str(ipaddress.ip_address(first_hop))
        except ValueError:
            pass
    return request.client.host if request.client else "unknown"


def add_response_headers(request: Request, headers: dict[str, str]) -> None:
    """Headers for whatever response this request ends with (set by RequestContextMiddleware)."""
    pending: dict[str, str] = request.scope.setdefault("state", {}).setdefault("response_headers", {})
    pending.update(headers)


async def guard(request: Request) -> Principal | None:
    gate: Gatekeeper = request.app.state.gatekeeper
    principal = gate.keys.authenticate(presented_key(request.headers)) if gate.keys.enabled else None
    request.state.principal = principal
    identity = f"key:{principal.name}" if principal else f"ip:{client_ip(request, gate.trust_forwarded_for)}"
    request.state.caller = Caller(
        identity, principal.name if principal else None, functools.partial(add_response_headers, request)
    )
    # No decision: the shared store is down and state.on_error lets requests through unlimited.
    decision = await gate.limiter.hit(identity) if gate.limiter is not None else None
    if decision is not None:
        add_response_headers(request, decision.headers())
        if not decision.allowed:
            retry_s = decision.retry_after_s
            if gate.usage is not None:
                await gate.usage.add(principal.name if principal else ANONYMOUS, UsageCounts(rate_limited=1))
            raise RateLimited(f"rate limit exceeded; retry in {retry_s} s", retry_after=retry_s)
    if gate.keys.enabled and principal is None:
        raise Unauthorized("missing or invalid API key: send X-API-Key: <key> or Authorization: Bearer <key>")
    return principal


PrincipalDep = Annotated[Principal | None, Depends(guard)]
"""The caller (None when no keys are configured). FastAPI runs `guard` once per request."""


def caller_name(principal: PrincipalDep) -> str | None:
    return principal.name if principal else None


CallerNameDep = Annotated[str | None, Depends(caller_name)]
"""The calling key's name: the owner of the sessions it creates."""
