"""Domain errors: fixed at construction, with the status, headers and counting reason they carry."""

from __future__ import annotations

import pytest

from app.core.errors import (
    EngineOverloaded,
    HTTPStatusError,
    ModelUnhealthy,
    PIIBlocked,
    RateLimited,
    ServiceError,
    Unauthorized,
)


def test_an_error_cannot_be_changed_after_construction() -> None:
    error = RateLimited("slow down", retry_after=3)
    for name, value in [("retry_after", 9), ("message", "other"), ("param", "x"), ("status_code", 200)]:
        with pytest.raises(AttributeError):
            setattr(error, name, value)
    assert (error.retry_after, error.message, error.status_code) == (3, "slow down", 429)


def test_python_still_chains_and_annotates_errors() -> None:
    with pytest.raises(EngineOverloaded) as raised:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            error = EngineOverloaded("busy")
            error.add_note("while admitting")
            raise error from inner
    assert isinstance(raised.value.__cause__, KeyError)
    assert raised.value.__notes__ == ["while admitting"]


def test_retry_after_comes_from_the_raiser_or_the_class_default() -> None:
    assert RateLimited("wait", retry_after=7).response_headers() == {"Retry-After": "7"}
    assert RateLimited("wait").response_headers() == {}
    assert EngineOverloaded("busy").response_headers() == {"Retry-After": "1"}
    assert ModelUnhealthy("broken").retry_after == 30
    assert ServiceError("boom").response_headers() == {}


def test_unauthorized_names_the_scheme() -> None:
    assert Unauthorized("who?").response_headers()["WWW-Authenticate"].startswith("Bearer ")


def test_an_http_status_of_the_framework_keeps_its_status() -> None:
    teapot = HTTPStatusError(418, "short and stout")
    assert (teapot.status_code, teapot.error_type, teapot.code) == (418, "invalid_request_error", "http_error")
    assert HTTPStatusError(502, "bad gateway").error_type == "server_error"
    assert ServiceError("boom").status_code == 500  # the subclass's status is its own instance's


def test_rejection_reasons() -> None:
    assert PIIBlocked("pii", param="prompt").reject_reason == "pii"
    assert RateLimited("wait").reject_reason == "rate_limit"
    assert Unauthorized("who?").reject_reason == "auth"
    assert HTTPStatusError(418, "teapot").reject_reason is None
