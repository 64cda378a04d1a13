"""GET /v1/usage: the calling key's usage; admin keys may read any key's with `?key=NAME`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.dependencies import PolicyDep, SettingsDep
from app.api.guard import CallerNameDep
from app.api.openapi import error_responses
from app.api.usage.models import UsagePeriod, UsageResponse
from app.core.errors import Forbidden, KeyNotFound
from app.core.security import key_names
from app.core.usage import ANONYMOUS, UsageCounts

router = APIRouter(tags=["usage"])

KeyQuery = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="Another key's name (admins).")]


@router.get("/v1/usage", response_model=UsageResponse, responses=error_responses(403, 404, 422, 503))
async def usage(policy: PolicyDep, settings: SettingsDep, caller: CallerNameDep, key: KeyQuery = None) -> UsageResponse:
    own = caller or ANONYMOUS
    wanted = key or own
    if wanted != own:
        if caller is None or caller not in settings.security.admin_keys:
            raise Forbidden("only keys in security.admin_keys may read another key's usage", param="key")
        if wanted not in key_names(settings):
            raise KeyNotFound(f"no key is named '{wanted}'", param="key")
    today, total = await policy.accounting.usage.read(wanted) if policy.accounting else (UsageCounts(), UsageCounts())
    return UsageResponse(key=wanted, today=UsagePeriod.of(today), total=UsagePeriod.of(total))
