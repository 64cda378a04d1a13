"""The TGI-compatible endpoints on the wire: request and response shapes, SSE framing, errors."""

from __future__ import annotations

import json
from typing import Any

import httpx

SERVED = "smollm2-135m-instruct"
PROMPT = "Once upon a time"


def tgi_events(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line and not line.startswith(":")]
    assert all(line.startswith("data:") for line in lines), lines  # no event names, no [DONE]
    return [json.loads(line[len("data:") :]) for line in lines]


def test_generate_is_greedy_by_default_and_matches_native(client: httpx.Client) -> None:
    response = client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 8}})
    assert response.status_code == 200
    assert response.json().keys() == {"generated_text"}
    native = client.post("/v1/generate", json={"prompt": PROMPT, "max_tokens": 8, "temperature": 0}).json()
    assert response.json()["generated_text"] == native["generated_text"]


def test_generate_stream_events(client: httpx.Client) -> None:
    # a seed keeps it greedy but gives it a cache key of its own: the model streams it afresh
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 6, "details": True, "seed": 3}}
    events = tgi_events(client, "/generate_stream", body)
    *tokens, last = events
    assert len(tokens) >= 3 and all(e["generated_text"] is None and e["details"] is None for e in tokens)
    assert [e["index"] for e in events] == list(range(1, len(events) + 1))
    assert last["token"]["special"] is True and last["token"]["text"] == ""
    assert last["generated_text"] == "".join(e["token"]["text"] for e in tokens)
    assert last["details"] == {"finish_reason": "length", "generated_tokens": 6, "seed": 3,
                               "input_length": last["details"]["input_length"]}  # fmt: skip
    whole = client.post("/generate", json=body).json()
    assert whole["generated_text"] == last["generated_text"]


def test_stop_sequence_ends_and_is_not_sent(client: httpx.Client) -> None:
    text = client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 12}}).json()
    stop = text["generated_text"].split()[2]
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 12, "stop": [stop], "details": True}}
    data = client.post("/generate", json=body).json()
    assert stop not in data["generated_text"] and data["details"]["finish_reason"] == "stop_sequence"


def test_sampling_with_a_seed_repeats(client: httpx.Client) -> None:
    body = {"inputs": "My favourite animal is the", "parameters": {"max_new_tokens": 8, "do_sample": True, "seed": 5}}
    first = client.post("/generate", json=body).json()["generated_text"]
    assert client.post("/generate", json=body).json()["generated_text"] == first
