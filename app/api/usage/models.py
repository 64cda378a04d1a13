"""The body of GET /v1/usage."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.core.usage import UsageCounts


class UsagePeriod(BaseModel):
    requests: int = Field(ge=0, description="Requests answered (a request with n choices counts once).")
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    cached_requests: int = Field(ge=0, description="Requests answered from the cache or a shared generation.")
    rate_limited: int = Field(ge=0, description="Requests answered 429 (request rate, token budget or quota).")

    @classmethod
    def of(cls, counts: UsageCounts) -> UsagePeriod:
        return cls.model_validate(counts, from_attributes=True)


class UsageResponse(BaseModel):
    key: str = Field(description="The key's configured name, or `anonymous`.")
    today: UsagePeriod = Field(description="Since 00:00 UTC.")
    total: UsagePeriod = Field(description="Since the server started.")
