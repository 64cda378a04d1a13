"""The app per configuration over the scripted fake engine, driven in-process with its lifespan run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.guard import Gatekeeper
from app.core.config import Settings, load_settings
from app.core.rate_limit import MemoryRateLimiter
from app.core.token_budget import MemoryTokenBudget
from app.core.usage import MemoryUsageStore
from app.main import create_app
from app.services.accounting import Accounting, UsageMeter
from app.services.generation import GenerationPolicy
from tests.conftest import ROOT, poll
from tests.fakes import ScriptedEngine, fake_serving_model

ApiFactory = Callable[..., Any]


def fake_settings(**sections: dict[str, Any]) -> Settings:
    """config.yml of the repository with the given sections merged over it; no .env, no model folder."""
    model = {"name": "scripted-model"}
    model.update(sections.pop("model", {}))
    return load_settings(config_file=ROOT / "config.yml", env_file=None, model=model, **sections)


class FakeClock:
    """Time that moves only when the test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextmanager
def running_app(
    engine: ScriptedEngine, settings: Settings, *, clock: Callable[[], float] | None = None
) -> Iterator[tuple[FastAPI, TestClient]]:
    """The app started (lifespan run, fake model loaded), with a client that talks to it in-process.
    With `clock`, the rate limiter, the token budget and the usage store (its UTC day too) read
    that clock instead of the real ones. The engine's record of submitted requests starts empty
    (the warm-up request is dropped from it)."""
    app = create_app(settings, serving_model=fake_serving_model(engine))
    if clock is not None:
        policy: GenerationPolicy = app.state.policy
        assert policy.accounting is not None
        store = MemoryUsageStore(wall_clock=clock)
        budget = MemoryTokenBudget.from_settings(settings.rate_limit, settings.security.api_keys, clock, clock)
        app.state.policy = replace(policy, accounting=Accounting(UsageMeter(store, policy.metrics), budget=budget))
        gatekeeper: Gatekeeper = app.state.gatekeeper
        limiter = MemoryRateLimiter(settings.rate_limit, clock=clock) if settings.rate_limit.enabled else None
        app.state.gatekeeper = replace(gatekeeper, limiter=limiter, usage=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert poll(lambda: client.get("/health").status_code == 200, timeout_s=10, interval_s=0.002), client.get(
            "/health"
        ).text
        engine.submitted.clear()
        yield app, client


@contextmanager
def running_replicas(settings: Settings, count: int = 2) -> Iterator[list[tuple[ScriptedEngine, TestClient]]]:
    """`count` apps with the same settings (give them a redis `state` section: replicas sharing
    it), each over a scripted engine of its own, so a test sees which replica generated."""
    with ExitStack() as stack:
        replicas = []
        for _ in range(count):
            engine = ScriptedEngine()
            _, client = stack.enter_context(running_app(engine, settings))
            replicas.append((engine, client))
        yield replicas


def release(client: TestClient, gate: asyncio.Event) -> None:
    """Open an engine gate from the test's thread: the event belongs to the app's event loop."""
    assert client.portal is not None, "the client runs the app (use it as a context manager)"
    client.portal.call(gate.set)


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def api(engine: ScriptedEngine) -> Iterator[TestClient]:
    """A client of the app with the repository's config (rate limit off) over `engine`."""
    with running_app(engine, fake_settings(rate_limit={"enabled": False})) as (_, client):
        yield client
