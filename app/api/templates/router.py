"""GET /v1/templates (every template) and GET /v1/templates/{template_id} (one, or 404)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.api.dependencies import TemplatesDep
from app.api.native.models import TEMPLATE_ID_PATTERN
from app.api.openapi import error_responses
from app.api.templates.models import TemplateList, TemplateOut

router = APIRouter(tags=["templates"])


@router.get("/v1/templates", response_model=TemplateList)
async def list_templates(templates: TemplatesDep) -> TemplateList:
    return TemplateList(data=[TemplateOut.of(t) for t in templates])


@router.get("/v1/templates/{template_id}", response_model=TemplateOut, responses=error_responses(404, 422))
async def read_template(
    template_id: Annotated[str, Path(pattern=TEMPLATE_ID_PATTERN)], templates: TemplatesDep
) -> TemplateOut:
    return TemplateOut.of(templates.get(template_id))
