"""The app per configuration over the scripted fake engine, driven in-process with its lifespan run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.core.config import Settings, load_settings
from app.main import create_app
from tests.conftest import ROOT, poll
from tests.fakes import ScriptedEngine, fake_serving_model

ApiFactory = Callable[..., Any]


def fake_settings(**sections: dict[str, Any]) -> Settings:
    """config.yml of the repository with the given sections merged over it; no .env, no model folder."""
    model = {"name": "scripted-model"}
    model.update(sections.pop("model", {}))
    return load_settings(config_file=ROOT / "config.yml", env_file=None, model=model, **sections)


@contextmanager
def running_app(engine: ScriptedEngine, settings: Settings) -> Iterator[tuple[FastAPI, TestClient]]:
    """The app started (lifespan run, fake model loaded), with a client that talks to it in-process."""
    app = create_app(settings, serving_model=fake_serving_model(engine))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert poll(lambda: client.get("/health").status_code == 200, timeout_s=10), client.get("/health").text
        yield app, client


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def api(engine: ScriptedEngine) -> Iterator[TestClient]:
    """A client of the app with the repository's config (rate limit off) over `engine`."""
    with running_app(engine, fake_settings(rate_limit={"enabled": False})) as (_, client):
        yield client
