"""The response cache through the HTTP API: hits, streamed hits, single flight, what is not cached."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import GUARDED_KEYS, LiveServer, assert_error, iter_sse, metric_value


def unique_prompt() -> str:
    return f"Write one sentence about number {uuid.uuid4().int % 10**9}."  # no "the": see guarded_server


def test_identical_greedy_request_is_a_hit_that_costs_no_model_work(client: httpx.Client) -> None:
    body = {"prompt": unique_prompt(), "max_tokens": 8, "temperature": 0}
    first = client.post("/v1/generate", json=body)
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS" and not first.json()["cached"]
    generated = metric_value(client, "tokens_generated_total")
    hits = metric_value(client, "llm_cache_requests_total", result="hit")

    second = client.post("/v1/generate", json=body)
    assert second.headers["x-cache"] == "HIT" and second.json()["cached"] is True
    assert second.json()["generated_text"] == first.json()["generated_text"]
    assert second.json()["usage"] == first.json()["usage"]
    assert metric_value(client, "tokens_generated_total") == generated
    assert metric_value(client, "llm_cache_requests_total", result="hit") == hits + 1


def test_streamed_hit_streams_the_cached_text(client: httpx.Client) -> None:
    body = {"prompt": unique_prompt(), "max_tokens": 8, "temperature": 0}
    text = client.post("/v1/generate", json=body).json()["generated_text"]
    with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as response:
        assert response.headers["x-cache"] == "HIT"
        events = [(event, data) for event, data in iter_sse(response) if event != "comment"]
    tokens = "".join(json.loads(data)["text"] for event, data in events if event == "token")
    done = json.loads(events[-1][1])
    assert events[-1][0] == "done" and tokens == text == done["generated_text"] and done["cached"] is True


def test_chat_turns_are_cached_on_the_final_prompt(client: httpx.Client) -> None:
    body = {"messages": [{"role": "user", "content": unique_prompt()}], "max_tokens": 4, "temperature": 0}
    assert client.post("/v1/chat", json=body).json()["cached"] is False
    assert client.post("/v1/chat", json=body).json()["cached"] is True
    other_history = {**body, "messages": [{"role": "system", "content": "Be brief."}, *body["messages"]]}
    assert client.post("/v1/chat", json=other_history).json()["cached"] is False


def test_sampled_requests_are_not_cached_unless_seeded(client: httpx.Client) -> None:
    sampled = {"prompt": unique_prompt(), "max_tokens": 4, "temperature": 0.9}
    assert [client.post("/v1/generate", json=sampled).json()["cached"] for _ in range(2)] == [False, False]
    seeded = {**sampled, "seed": 7}
    assert [client.post("/v1/generate", json=seeded).json()["cached"] for _ in range(2)] == [False, True]


def test_a_burst_of_identical_requests_shares_one_generation(client: httpx.Client) -> None:
    body = {"prompt": unique_prompt(), "max_tokens": 24, "temperature": 0}
    generated = metric_value(client, "tokens_generated_total")

    def send(_: int) -> httpx.Response:
        return client.post("/v1/generate", json=body)

    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(send, range(6)))
    assert all(r.status_code == 200 for r in responses)
    answers = [r.json() for r in responses]
    assert len({a["generated_text"] for a in answers}) == 1
    assert sorted(a["cached"] for a in answers) == [False] + [True] * 5
    assert metric_value(client, "tokens_generated_total") == generated + answers[0]["tokens_generated"]


def test_a_cache_hit_still_needs_a_key_and_a_token(guarded_server: LiveServer) -> None:
    body = {"prompt": unique_prompt(), "max_tokens": 2, "temperature": 0}
    with guarded_server.client() as http:
        http.headers["X-Forwarded-For"] = "10.250.0.1"
        alice = {"X-API-Key": GUARDED_KEYS["alice"]}
        assert http.post("/v1/generate", json=body, headers=alice).status_code == 200
        hit = http.post("/v1/generate", json=body, headers=alice)
        assert hit.json()["cached"] is True
        assert int(hit.headers["x-ratelimit-remaining"]) < 10  # the hit was charged too
        assert_error(http.post("/v1/generate", json=body), 401)


def test_protocol_endpoints_share_the_cache(client: httpx.Client) -> None:
    """The same final prompt and parameters: a native answer serves the OpenAI and TGI calls."""
    prompt = unique_prompt()
    native = client.post("/v1/generate", json={"prompt": prompt, "max_tokens": 6, "temperature": 0}).json()
    openai_body = {"model": "x", "prompt": prompt, "max_tokens": 6, "temperature": 0}
    completion = client.post("/v1/completions", json=openai_body)
    assert completion.headers["x-cache"] == "HIT"
    assert completion.json()["choices"][0]["text"] == native["generated_text"]
    chat = {"model": "x", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4, "temperature": 0}
    assert [client.post("/v1/chat/completions", json=chat).headers["x-cache"] for _ in range(2)] == ["MISS", "HIT"]
