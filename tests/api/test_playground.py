"""The playground's page and assets: redirect, public, CSP and cache headers, off when disabled."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch

import pytest
from fastapi.testclient import TestClient

from app.api.playground.router import ASSETS, STATIC_DIR
from tests.api.conftest import fake_settings, running_app
from tests.conftest import ROOT
from tests.fakes import ScriptedEngine

PAGE_WEIGHT_LIMIT = 100_000


@pytest.fixture
def keyed() -> Iterator[TestClient]:
    """A server with an API key and a rate limit: the page must load without either mattering."""
    settings = fake_settings(security={"api_keys": ["playground-key-1"]}, rate_limit={"burst_size": 1})
    with running_app(ScriptedEngine(), settings) as (_, client):
        yield client


def test_root_redirects_to_the_playground(keyed: TestClient) -> None:
    response = keyed.get("/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"].endswith("/playground")


def test_the_page_needs_no_key_and_is_never_rate_limited(keyed: TestClient) -> None:
    assert keyed.get("/status").status_code == 401  # the API itself does need the key
    for _ in range(3):  # past the burst of 1
        response = keyed.get("/playground")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "x-ratelimit-limit" not in response.headers


def test_page_and_assets_carry_a_strict_csp_and_cache_headers(keyed: TestClient) -> None:
    page = keyed.get("/playground")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["x-content-type-options"] == "nosniff"
    for name, media_type in ASSETS.items():
        response = keyed.get(f"/playground/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == media_type
        assert response.headers["content-security-policy"] == csp
        assert response.headers["cache-control"] == "public, max-age=3600"
        assert response.headers["etag"]


def test_the_page_has_no_inline_script_or_style_and_loads_nothing_from_outside(keyed: TestClient) -> None:
    html = keyed.get("/playground").text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert "<style" not in html and "style=" not in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    referenced = set(re.findall(r"""(?:src|href)="playground/([^"]+)\"""", html))
    assert referenced <= set(ASSETS)


def test_every_static_file_is_served_and_the_page_weighs_under_100_kb(keyed: TestClient) -> None:
    on_disk = {path.name for path in STATIC_DIR.iterdir()}
    assert on_disk == {*ASSETS, "index.html"}
    weight = len(keyed.get("/playground").content) + sum(len(keyed.get(f"/playground/{n}").content) for n in ASSETS)
    assert weight < PAGE_WEIGHT_LIMIT


def test_unknown_asset_is_404_json(keyed: TestClient) -> None:
    response = keyed.get("/playground/../main.py")
    assert response.status_code == 404
    response = keyed.get("/playground/secret.py")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_disabled_playground_is_404() -> None:
    settings = fake_settings(playground={"enabled": False}, rate_limit={"enabled": False})
    with running_app(ScriptedEngine(), settings) as (_, client):
        assert client.get("/playground").status_code == 404
        assert client.get("/playground/app.js").status_code == 404
        # No redirect: / is left to TGI's POST /, so a GET there is 405, as for any POST-only route.
        root = client.get("/", follow_redirects=False)
        assert root.status_code == 405
        assert root.headers["allow"] == "POST"


def test_only_the_redirect_is_in_the_openapi_document(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith("/playground")]
    assert set(paths["/"]) == {"get", "post"}  # the redirect beside TGI's POST /
    assert "307" in paths["/"]["get"]["responses"]


def test_without_the_playground_the_document_has_no_redirect() -> None:
    settings = fake_settings(playground={"enabled": False}, rate_limit={"enabled": False})
    with running_app(ScriptedEngine(), settings) as (_, client):
        assert set(client.get("/openapi.json").json()["paths"]["/"]) == {"post"}


def test_the_static_files_ship_in_the_package() -> None:
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    globs = package_data["app.api.playground"]
    for path in STATIC_DIR.iterdir():
        relative = path.relative_to(STATIC_DIR.parent).as_posix()
        assert any(fnmatch(relative, pattern) for pattern in globs), relative
