"""Starting runs: one check and one tokenisation per request, one engine request per choice, all or none."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.errors import EngineOverloaded
from app.engine.types import GenerationChunk, GenerationRequest
from app.model.chat_format import PromptBuilder
from tests.api.conftest import fake_settings, running_app
from tests.conftest import assert_error, metric_value
from tests.fakes import ScriptedEngine


def served(engine: ScriptedEngine) -> list[GenerationRequest]:
    """The requests the engine got from clients (not the model's warm-up)."""
    return [r for r in engine.submitted if r.request_id != "warmup"]


CHAT = {"model": "x", "messages": [{"role": "user", "content": "hello"}], "temperature": 0.9}


@pytest.fixture
def prompt_work(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the PromptBuilder calls made from now on (rendering and tokenising)."""
    calls: list[str] = []
    for name in ("build_chat", "encode_prompt"):
        original = getattr(PromptBuilder, name)

        def spy(self: PromptBuilder, *args: Any, _name: str = name, _original: Any = original) -> Any:
            calls.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(PromptBuilder, name, spy)
    return calls


def test_n_chat_choices_share_one_prompt_under_suffixed_ids(
    api: TestClient, engine: ScriptedEngine, prompt_work: list[str]
) -> None:
    response = api.post("/v1/chat/completions", json={**CHAT, "n": 3}, headers={"X-Request-ID": "req-7"})
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 3
    assert prompt_work == ["build_chat"]
    assert [r.request_id for r in served(engine)] == ["req-7", "req-7.1", "req-7.2"]
    assert len({r.prompt_ids for r in served(engine)}) == 1
    assert len({r.params.seed for r in served(engine)}) == 1  # no seed: every choice samples freely


def test_each_prompt_is_tokenised_once_for_all_its_choices(
    api: TestClient, engine: ScriptedEngine, prompt_work: list[str]
) -> None:
    body = {"model": "x", "prompt": ["one", "two"], "n": 2, "temperature": 0.9}
    response = api.post("/v1/completions", json=body, headers={"X-Request-ID": "req-8"})
    assert response.status_code == 200, response.text
    assert prompt_work == ["encode_prompt", "encode_prompt"]
    assert [r.request_id for r in served(engine)] == ["req-8", "req-8.1", "req-8.2", "req-8.3"]
    assert [bytes(r.prompt_ids).decode() for r in served(engine)] == ["one", "one", "two", "two"]


@dataclass
class RefusesSecond(ScriptedEngine):
    """Admits the first request, then is overloaded."""

    streams: list[AsyncGenerator[GenerationChunk, None]] = field(default_factory=list)

    def submit(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if served(self):
            raise EngineOverloaded("too many requests are waiting")
        self.submitted.append(request)
        self.streams.append(self._stream(request))
        return self.streams[-1]


@pytest.fixture
def refusing() -> Iterator[tuple[RefusesSecond, TestClient]]:
    engine = RefusesSecond()
    with running_app(engine, fake_settings(rate_limit={"enabled": False})) as (_, client):
        yield engine, client


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_choice_not_admitted_fails_the_request_and_withdraws_the_others(
    refusing: tuple[RefusesSecond, TestClient], path: str
) -> None:
    engine, client = refusing
    body = {**CHAT, "n": 2} if path == "/v1/chat/completions" else {"model": "x", "prompt": "hi", "n": 2}
    before = [metric_value(client, "llm_requests_rejected_total", reason=r) for r in ("overloaded", "cancelled")]
    assert_error(client.post(path, json={**body, "temperature": 0.9}), 503, code="overloaded")
    assert len(served(engine)) == 1 and engine.running == 0
    assert engine.streams[-1].ag_frame is None  # the admitted choice was closed, not left waiting
    after = [metric_value(client, "llm_requests_rejected_total", reason=r) for r in ("overloaded", "cancelled")]
    assert after == [before[0] + 1, before[1]]  # the request's rejection, and no cancellation


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/generate", {"prompt": "p" * 41}, "prompt"),
        ("/v1/chat", {"messages": [{"role": "user", "content": "m" * 21}] * 2}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "m" * 41}]}, "messages"),
        ("/v1/completions", {"prompt": ["short", "p" * 41]}, "prompt"),
        ("/generate", {"inputs": "i" * 41}, "inputs"),
        ("/v1/responses", {"input": "i" * 30, "instructions": "s" * 11}, "input"),
    ],
)
def test_every_endpoint_has_the_one_prompt_size_check(
    engine: ScriptedEngine, path: str, body: dict[str, Any], param: str
) -> None:
    settings = fake_settings(rate_limit={"enabled": False}, security={"max_prompt_chars": 40})
    with running_app(engine, settings) as (_, client):
        assert_error(client.post(path, json=body), 413, code="prompt_too_long", param=param)
        assert_error(client.post(path, json={**body, "stream": True}), 413, code="prompt_too_long", param=param)
    assert served(engine) == []


def test_a_session_turn_keeps_its_history_only_on_success(api: TestClient, engine: ScriptedEngine) -> None:
    turn = {"messages": [{"role": "user", "content": "hello"}], "session_id": "s-1"}
    assert api.post("/v1/chat", json=turn).status_code == 200
    engine.fail_after_tokens = 1
    assert api.post("/v1/chat", json={**turn, "messages": [{"role": "user", "content": "again"}]}).status_code == 500
    history = api.get("/v1/chat/sessions/s-1").json()["messages"]
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == "hello"
