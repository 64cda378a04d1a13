"""GET /health (readiness) and /health/live (liveness): open to all, never rate limited."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.dependencies import RuntimeDep
from app.api.schemas import HealthResponse
from app.llm.runtime import ModelState

router = APIRouter(tags=["health"])

HEALTH_STATUS = {ModelState.READY: "healthy", ModelState.LOADING: "loading", ModelState.FAILED: "unhealthy"}


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
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


@router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "alive"}
