"""GET /health (readiness), /health/live (liveness) and /status (what is in force)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app import __version__
from app.api.dependencies import RuntimeDep, SessionsDep, SettingsDep
from app.api.schemas import HealthResponse
from app.llm.runtime import ModelState

router = APIRouter(tags=["health"])

_HEALTH_STATUS = {ModelState.READY: "healthy", ModelState.LOADING: "loading", ModelState.FAILED: "unhealthy"}


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(runtime: RuntimeDep) -> JSONResponse:
    ready = runtime.state is ModelState.READY
    body = HealthResponse(
        status=_HEALTH_STATUS[runtime.state],
        model_loaded=ready,
        model_name=runtime.served_name,
        progress=None if ready else runtime.progress,
        reason=runtime.error,
    )
    headers = {} if ready else {"Retry-After": "5"}
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ready else 503, headers=headers)


@router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/status")
async def status(runtime: RuntimeDep, sessions: SessionsDep, settings: SettingsDep) -> dict[str, Any]:
    info = runtime.info
    stats = runtime.engine_stats()
    return {
        "status": _HEALTH_STATUS[runtime.state],
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
        "limits": {
            "max_prompt_chars": settings.security.max_prompt_chars,
            "max_body_bytes": settings.security.max_body_bytes,
            "max_tokens": settings.model.max_tokens,
            "default_max_tokens": settings.model.default_max_tokens,
            "queue_timeout_s": settings.engine.queue_timeout_s,
            "request_timeout_s": settings.engine.request_timeout_s,
        },
    }
