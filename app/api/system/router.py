"""The operator's routes: GET /health (readiness) and /health/live (liveness), open to all and
never rate limited; GET /status (what runs and what is in force, never the keys); GET /metrics."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import __version__
from app.api.dependencies import MetricsDep, PolicyDep, RuntimeDep, SessionsDep, SettingsDep
from app.api.guard import Gatekeeper
from app.api.openapi import RETRY_AFTER
from app.api.system.models import HealthResponse
from app.model.runtime import ModelState

health_router = APIRouter(tags=["system"])
"""Open to all, never rate limited: probes must not need a key."""
router = APIRouter(tags=["system"])
"""Behind the key, like the generating routes."""
metrics_router = APIRouter(tags=["system"])
"""Open unless `security.protect_metrics`."""

HEALTH_STATUS = {ModelState.READY: "healthy", ModelState.LOADING: "loading", ModelState.FAILED: "unhealthy"}


@health_router.get(
    "/health",
    response_model=HealthResponse,
    responses={
        503: {"model": HealthResponse, "description": "Loading or unhealthy.", "headers": {"Retry-After": RETRY_AFTER}}
    },
)
async def health(runtime: RuntimeDep) -> JSONResponse:
    ready = runtime.state is ModelState.READY
    body = HealthResponse(
        status=HEALTH_STATUS[runtime.state],
        model_loaded=ready,
        model_name=runtime.served_name,
        progress=None if ready else runtime.progress,
        reason=runtime.error,
    )
    headers = {} if ready else {"Retry-After": "5"}
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ready else 503, headers=headers)


@health_router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/status")
async def status(
    runtime: RuntimeDep, sessions: SessionsDep, settings: SettingsDep, policy: PolicyDep, request: Request
) -> dict[str, Any]:
    info = runtime.info
    stats = runtime.engine_stats()
    cache = policy.cache.stats() if policy.cache else None
    gate: Gatekeeper = request.app.state.gatekeeper
    pii = settings.pii
    return {
        "status": HEALTH_STATUS[runtime.state],
        "version": __version__,
        "uptime_s": round(time.time() - runtime.started_at, 3),
        "model": {
            "name": settings.model.name,
            "served_name": runtime.served_name,
            "device": info.device if info else None,
            "dtype": info.dtype if info else None,
            "context_length": info.context_length if info else None,
            "system_prompt_supported": info.system_prompt_supported if info else None,
        },
        "sessions": {
            "active": len(sessions),
            "ttl_seconds": settings.chat_history.ttl_seconds,
            "max_sessions": settings.chat_history.max_sessions,
            "max_messages": settings.chat_history.max_messages,
        },
        "queue": {
            "queued": stats.queued if stats else 0,
            "running": stats.running if stats else 0,
            "cancelled": stats.cancelled if stats else 0,
            "max_queue": settings.engine.max_queue,
        },
        "auth": {
            "enabled": gate.keys.enabled,
            "keys": len(gate.keys),
            "protect_metrics": settings.security.protect_metrics,
        },
        "rate_limit": settings.rate_limit.model_dump(),
        "cache": {
            "enabled": cache is not None,
            "deterministic_only": settings.cache.deterministic_only,
            "ttl_seconds": settings.cache.ttl_seconds,
            "capacity": settings.cache.size,
            "size": cache.size if cache else 0,
            "hits": cache.hits if cache else 0,
            "misses": cache.misses if cache else 0,
            "evictions": cache.evictions if cache else 0,
            "hit_rate": cache.hit_rate if cache else 0.0,
        },
        "pii": {
            "enabled": pii.enabled,
            "mode": pii.mode,
            "redact_input": pii.redact_input,
            "redact_output": pii.redact_output,
            "entities": policy.pii.entity_names,
        },
        "limits": {
            "max_prompt_chars": settings.security.max_prompt_chars,
            "max_body_bytes": settings.security.max_body_bytes,
            "max_tokens": settings.model.max_tokens,
            "default_max_tokens": settings.model.default_max_tokens,
            "queue_timeout_s": settings.engine.queue_timeout_s,
            "request_timeout_s": settings.engine.request_timeout_s,
        },
    }


@metrics_router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format."}
    },
)
async def metrics(llm_metrics: MetricsDep) -> Response:
    return Response(generate_latest(llm_metrics.registry), media_type=CONTENT_TYPE_LATEST)
