"""GET / (redirect) and /playground with its assets: static files, public, under a strict CSP."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse

from app.core.errors import NotFound

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"

ASSETS: Final[dict[str, str]] = {
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "render.js": "text/javascript; charset=utf-8",
    "view.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
"""The only files served besides the page, with their media types."""

CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        # Everything from this server only: no inline script or style, no eval, no third party.
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# The page is revalidated on every load (it names the assets, so a new release shows at once);
# assets may be reused for an hour, and revalidated by ETag after that.
PAGE_CACHE: Final = "no-cache"
ASSET_CACHE: Final = "public, max-age=3600"

router = APIRouter(include_in_schema=False)
"""The page and its files: not API operations, so not in the OpenAPI document."""
root_router = APIRouter(tags=["playground"])
"""GET / shares its path with TGI's POST /, so the document lists it to tell the whole `Allow`."""


@root_router.get(
    "/",
    status_code=307,
    response_class=RedirectResponse,
    responses={
        307: {
            "description": "To the browser chat playground, /playground.",
            "headers": {"Location": {"description": "The playground's URL.", "schema": {"type": "string"}}},
        }
    },
)
async def root(request: Request) -> RedirectResponse:
    """Redirect to the browser chat playground (absent when `playground.enabled` is false)."""
    return RedirectResponse(str(request.url_for("playground")), status_code=307)


@router.get("/playground", name="playground")
async def page() -> FileResponse:
    return _file("index.html", "text/html; charset=utf-8", PAGE_CACHE)


@router.get("/playground/{asset}")
async def asset(asset: str) -> FileResponse:
    media_type = ASSETS.get(asset)
    if media_type is None:
        raise NotFound(f"no such playground file: {asset}")
    return _file(asset, media_type, ASSET_CACHE)


def _file(name: str, media_type: str, cache_control: str) -> FileResponse:
    headers = {**SECURITY_HEADERS, "Cache-Control": cache_control}
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=headers)
