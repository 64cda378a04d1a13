"""Bodies of the operator's routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class HealthResponse(BaseModel):
    status: Literal["healthy", "loading", "unhealthy"]
    model_loaded: bool
    model_name: str
    progress: str | None = None
    reason: str | None = None
