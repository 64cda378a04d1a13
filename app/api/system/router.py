"""The operator's routes: GET /health (readiness) and /health/live (liveness), open to all and
never rate limited; GET /status (what runs and what is in force, never the keys); GET /metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import __version__
from app.api.dependencies import (
    MetricsDep,
    PolicyDep,
    RuntimeDep,
    SessionsDep,
    SettingsDep,
    SharedStateDep,
    TemplatesDep,
)
from app.api.guard import Gatekeeper
from app.api.openapi import RETRY_AFTER
from app.api.system.models import (
    AuthStatus,
    CacheStatus,
    HealthResponse,
    HealthStatus,
    LimitsStatus,
    ModelStatus,
    PIIStatus,
    QueueStatus,
    SamplingDefaults,
    SessionsStatus,
    StatusResponse,
    TemplateStatus,
)
from app.model.runtime import ModelState

health_router = APIRouter(tags=["system"])
"""Open to all, never rate limited: probes must not need a key."""
router = APIRouter(tags=["system"])
"""Behind the key, like the generating routes."""
metrics_router = APIRouter(tags=["system"])
"""Open unless `security.protect_metrics`."""

HEALTH_STATUS: dict[ModelState, HealthStatus] = {
    ModelState.READY: "healthy",
    ModelState.LOADING: "loading",
    ModelState.FAILED: "unhealthy",
    ModelState.DRAINING: "draining",
}


@health_router.get(
    "/health",
    response_model=HealthResponse,
    responses={
        503: {
            "model": HealthResponse,
            "description": "Loading, unhealthy, or draining before shutdown.",
            "headers": {"Retry-After": RETRY_AFTER},
        }
    },
)
async def health(runtime: RuntimeDep, shared_state: SharedStateDep) -> JSONResponse:
    ready = runtime.state is ModelState.READY
    body = HealthResponse(
        status=HEALTH_STATUS[runtime.state],
        model_loaded=runtime.info is not None,
        model_name=runtime.served_name,
        state="ok" if await shared_state.healthy() else "unavailable",
        progress=None if runtime.info is not None else runtime.progress,
        reason=runtime.error,
    )
    headers = {} if ready else {"Retry-After": "5"}
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ready else 503, headers=headers)


@health_router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/status", response_model=StatusResponse)
async def status(
    runtime: RuntimeDep,
    sessions: SessionsDep,
    settings: SettingsDep,
    policy: PolicyDep,
    templates: TemplatesDep,
    request: Request,
) -> StatusResponse:
    gate: Gatekeeper = request.app.state.gatekeeper
    auth = AuthStatus(enabled=gate.keys.enabled, keys=len(gate.keys), protect_metrics=settings.security.protect_metrics)
    return StatusResponse(
        status=HEALTH_STATUS[runtime.state],
        version=__version__,
        uptime_s=round(time.time() - runtime.started_at, 3),
        model=ModelStatus.of(settings.model.name, runtime.served_name, runtime.info),
        sessions=SessionsStatus.of(len(sessions), settings.chat_history),
        queue=QueueStatus.of(runtime.engine_stats(), settings.engine.max_queue),
        auth=auth,
        rate_limit=settings.rate_limit,
        cache=CacheStatus.of(policy.cache.stats() if policy.cache else None, settings.cache),
        pii=PIIStatus.of(settings.pii, policy.pii.entity_names),
        limits=LimitsStatus.of(settings),
        defaults=SamplingDefaults.of(settings),
        templates=[TemplateStatus(id=t.spec.id, version=t.spec.version) for t in templates],
    )


@metrics_router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format."}
    },
)
async def metrics(llm_metrics: MetricsDep) -> Response:
    return Response(generate_latest(llm_metrics.registry), media_type=CONTENT_TYPE_LATEST)
