"""The response cache over HTTP: X-Cache and `cached`, streamed hits, what is cached, and single flight:
identical requests that arrive while the first one generates share its generation."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import fake_settings, release, running_app
from tests.conftest import iter_sse, metric_value, poll
from tests.fakes import ScriptedEngine

GREEDY = {"prompt": "Write one sentence.", "max_tokens": 8, "temperature": 0}


def cache_stats(api: TestClient) -> dict[str, Any]:
    stats: dict[str, Any] = api.get("/status").json()["cache"]
    return stats


def test_identical_greedy_request_is_a_hit_that_costs_no_model_work(api: TestClient, engine: ScriptedEngine) -> None:
    first = api.post("/v1/generate", json=GREEDY)
    assert first.headers["x-cache"] == "MISS" and first.json()["cached"] is False
    generated = metric_value(api, "tokens_generated_total")
    prompt_tokens = metric_value(api, "llm_prompt_tokens_total")

    second = api.post("/v1/generate", json=GREEDY)
    assert second.headers["x-cache"] == "HIT" and second.json()["cached"] is True
    assert second.json()["generated_text"] == first.json()["generated_text"]
    assert second.json()["usage"] == first.json()["usage"]
    assert second.json()["request_id"] != first.json()["request_id"]
    assert len(engine.submitted) == 1
    assert metric_value(api, "tokens_generated_total") == generated
    assert metric_value(api, "llm_prompt_tokens_total") == prompt_tokens
    assert metric_value(api, "llm_cache_requests_total", result="hit") == 1
    assert metric_value(api, "llm_cache_requests_total", result="miss") == 1
    stats = cache_stats(api)
    assert (stats["hits"], stats["misses"], stats["size"], stats["hit_rate"]) == (1, 1, 1, 0.5)


def test_streamed_hit_streams_the_cached_text(api: TestClient) -> None:
    text = api.post("/v1/generate", json=GREEDY).json()["generated_text"]
    with api.stream("POST", "/v1/generate", json={**GREEDY, "stream": True}) as response:
        assert response.headers["x-cache"] == "HIT"
        events = [(event, json.loads(data)) for event, data in iter_sse(response) if event != "comment"]
    assert [event for event, _ in events] == ["token", "done"]  # the whole text at once
    assert events[0][1]["text"] == text == events[1][1]["generated_text"] and events[1][1]["cached"] is True


def test_chat_turns_are_cached_on_the_final_prompt(api: TestClient) -> None:
    body = {"messages": [{"role": "user", "content": "Hello?"}], "max_tokens": 4, "temperature": 0}
    assert api.post("/v1/chat", json=body).json()["cached"] is False
    assert api.post("/v1/chat", json=body).json()["cached"] is True
    other_history = {**body, "messages": [{"role": "system", "content": "Be brief."}, *body["messages"]]}
    assert api.post("/v1/chat", json=other_history).json()["cached"] is False


def test_sampled_requests_are_not_cached_unless_seeded(api: TestClient) -> None:
    sampled = {"prompt": "Hi", "max_tokens": 4, "temperature": 0.9}
    assert [api.post("/v1/generate", json=sampled).json()["cached"] for _ in range(2)] == [False, False]
    seeded = {**sampled, "seed": 7}
    assert [api.post("/v1/generate", json=seeded).json()["cached"] for _ in range(2)] == [False, True]


def test_a_different_parameter_is_a_different_entry(api: TestClient) -> None:
    api.post("/v1/generate", json=GREEDY)
    for change in ({"max_tokens": 7}, {"stop": "x"}, {"top_k": 3}, {"seed": 1}, {"prompt": "Write two."}):
        assert api.post("/v1/generate", json={**GREEDY, **change}).headers["x-cache"] == "MISS", change


def test_a_failed_generation_is_not_cached(api: TestClient, engine: ScriptedEngine) -> None:
    engine.fail_after_tokens = 2
    assert api.post("/v1/generate", json=GREEDY).status_code == 500
    engine.fail_after_tokens = None
    assert api.post("/v1/generate", json=GREEDY).headers["x-cache"] == "MISS"
    assert api.post("/v1/generate", json=GREEDY).headers["x-cache"] == "HIT"


def test_protocol_endpoints_share_the_cache(api: TestClient) -> None:
    """The same final prompt and parameters: a native answer serves the OpenAI and TGI calls."""
    native = api.post("/v1/generate", json={"prompt": "Say it.", "max_tokens": 6, "temperature": 0}).json()
    completion = api.post(
        "/v1/completions", json={"model": "x", "prompt": "Say it.", "max_tokens": 6, "temperature": 0}
    )
    assert completion.headers["x-cache"] == "HIT"
    assert completion.json()["choices"][0]["text"] == native["generated_text"]
    tgi = api.post("/generate", json={"inputs": "Say it.", "parameters": {"max_new_tokens": 6}})
    assert tgi.json()["generated_text"] == native["generated_text"]
    chat = {"model": "x", "messages": [{"role": "user", "content": "Say it."}], "max_tokens": 4, "temperature": 0}
    assert [api.post("/v1/chat/completions", json=chat).headers["x-cache"] for _ in range(2)] == ["MISS", "HIT"]


def test_cache_switched_off(engine: ScriptedEngine) -> None:
    settings = fake_settings(rate_limit={"enabled": False}, cache={"enabled": False})
    with running_app(engine, settings) as (_, api):
        assert [api.post("/v1/generate", json=GREEDY).headers["x-cache"] for _ in range(2)] == ["MISS", "MISS"]
        assert len(engine.submitted) == 2
        assert cache_stats(api)["enabled"] is False


@pytest.mark.parametrize("stream", [False, True])
def test_a_burst_of_identical_requests_shares_one_generation(
    api: TestClient, engine: ScriptedEngine, stream: bool
) -> None:
    engine.gate = asyncio.Event()  # the first request generates only once the others have joined it
    body = {**GREEDY, "stream": stream}

    def send(_: int) -> tuple[str, dict[str, Any]]:
        with api.stream("POST", "/v1/generate", json=body) as response:
            response.read()
        return response.headers["x-cache"], _answer(response, stream)

    with ThreadPoolExecutor(max_workers=4) as pool:
        sent = [pool.submit(send, n) for n in range(4)]
        try:
            assert poll(lambda: cache_stats(api)["hits"] == 3, timeout_s=10), cache_stats(api)
            assert len(engine.submitted) == 1 and not any(future.done() for future in sent)
        finally:
            release(api, engine.gate)  # whatever happened, no request is left hanging
        results = [future.result(timeout=10) for future in sent]
    assert sorted(header for header, _ in results) == ["HIT", "HIT", "HIT", "MISS"]
    answers = [answer for _, answer in results]
    assert len({a["generated_text"] for a in answers}) == 1
    assert sorted(a["cached"] for a in answers) == [False, True, True, True]
    assert len(engine.submitted) == 1
    assert metric_value(api, "tokens_generated_total") == answers[0]["tokens_generated"]


def _answer(response: httpx.Response, stream: bool) -> dict[str, Any]:
    """The answer's body: the JSON, or the data of the stream's `done` event."""
    if not stream:
        answer: dict[str, Any] = response.json()
        return answer
    done: dict[str, Any] = json.loads(next(data for event, data in iter_sse(response) if event == "done"))
    return done
