"""GET /metrics: Prometheus text exposition of this app's registry."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.dependencies import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(llm_metrics: MetricsDep) -> Response:
    return Response(generate_latest(llm_metrics.registry), media_type=CONTENT_TYPE_LATEST)
