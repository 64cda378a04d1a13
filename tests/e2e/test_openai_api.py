"""The OpenAI-compatible endpoints on the wire: shapes, SSE framing, fields, errors, disconnects."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, assert_error, metric_value, poll

SERVED = "smollm2-135m-instruct"
HELLO = [{"role": "user", "content": "Say hello."}]


def sse_data(client: httpx.Client, path: str, body: dict[str, Any]) -> list[str]:
    """The `data:` payloads of an OpenAI stream; fails on any named event."""
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line and not line.startswith(":")]
    assert not [line for line in lines if not line.startswith("data: ")], lines
    return [line[len("data: ") :] for line in lines]


def chunks_of(data: list[str]) -> list[dict[str, Any]]:
    assert data[-1] == "[DONE]" and data.count("[DONE]") == 1
    return [json.loads(item) for item in data[:-1]]


def test_chat_completion_shape(client: httpx.Client) -> None:
    body = {"model": "gpt-4o", "messages": HELLO, "max_tokens": 6, "temperature": 0, "user": "alice"}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    data = response.json()
    assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion"
    assert isinstance(data["created"], int) and data["model"] == SERVED  # any model name, answered by the served one
    [choice] = data["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    usage = data["usage"]
    assert usage["completion_tokens"] == 6 and usage["total_tokens"] == usage["prompt_tokens"] + 6


def test_chat_stream_framing_role_first_and_usage_chunk(client: httpx.Client) -> None:
    body = {"messages": HELLO, "max_tokens": 5, "temperature": 0, "stream_options": {"include_usage": True}}
    chunks = chunks_of(sse_data(client, "/v1/chat/completions", body))
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    *content, finish, usage = chunks
    assert finish["choices"][0]["finish_reason"] == "length" and finish["choices"][0]["delta"] == {}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
    assert all(c["usage"] is None for c in [*content, finish])
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in content)
    whole = client.post("/v1/chat/completions", json={**body, "stream": False}).json()
    assert whole["choices"][0]["message"]["content"] == streamed


def test_stream_without_include_usage_has_no_usage(client: httpx.Client) -> None:
    chunks = chunks_of(sse_data(client, "/v1/completions", {"prompt": "One, two,", "max_tokens": 3}))
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_n_choices_streamed_and_whole(client: httpx.Client) -> None:
    body = {"messages": HELLO, "max_tokens": 4, "temperature": 0, "n": 2}
    whole = client.post("/v1/chat/completions", json=body).json()
    assert [c["index"] for c in whole["choices"]] == [0, 1]
    assert whole["choices"][0]["message"] == whole["choices"][1]["message"]  # greedy: the same answer twice
    assert whole["usage"]["completion_tokens"] == 8
    chunks = chunks_of(sse_data(client, "/v1/chat/completions", body))
    texts = ["", ""]
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["delta"].get("content", "")
    assert texts == [whole["choices"][0]["message"]["content"]] * 2
    finished = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert sorted(finished) == [0, 1]


def test_seeded_choices_differ_but_repeat(client: httpx.Client) -> None:
    body = {"prompt": "My favourite animal is the", "max_tokens": 8, "temperature": 1.0, "seed": 7, "n": 3}
    first = [c["text"] for c in client.post("/v1/completions", json=body).json()["choices"]]
    again = [c["text"] for c in client.post("/v1/completions", json=body).json()["choices"]]
    assert first == again and len(set(first)) > 1


def test_completions_prompt_list_echo_and_stop(client: httpx.Client) -> None:
    plain = client.post("/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0})
    text = plain.json()["choices"][0]["text"]
    stop = text.split()[2]
    body = {"prompt": ["Once upon a time", "The sky is"], "max_tokens": 12, "temperature": 0, "echo": True,
            "stop": [stop, "\n\n\n"]}  # fmt: skip
    data = client.post("/v1/completions", json=body).json()
    assert data["id"].startswith("cmpl-") and data["object"] == "text_completion"
    first, second = data["choices"]
    assert first["text"].startswith("Once upon a time") and stop not in first["text"][len("Once upon a time") :]
    assert first["finish_reason"] == "stop"
    assert second["index"] == 1 and second["text"].startswith("The sky is")


def test_content_parts_equal_plain_content(client: httpx.Client) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello."}]}]
    plain = [{"role": "user", "content": "Say\nhello."}]
    base = {"max_tokens": 6, "temperature": 0}
    by_parts = client.post("/v1/chat/completions", json={**base, "messages": parts}).json()
    by_text = client.post("/v1/chat/completions", json={**base, "messages": plain}).json()
    assert by_parts["choices"][0]["message"] == by_text["choices"][0]["message"]


def test_unknown_fields_are_ignored(client: httpx.Client) -> None:
    body = {
        "messages": [{"role": "user", "content": "Hi", "name": "bob"}],
        "max_completion_tokens": 3,
        "presence_penalty": 0,
        "logit_bias": {},
        "response_format": {"type": "text"},
        "something_new": 1,
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 3


def test_vllm_sampling_extras_are_accepted(client: httpx.Client) -> None:
    body = {"prompt": "Hello", "max_tokens": 3, "top_k": 5, "repetition_penalty": 1.2, "min_tokens": 0,
            "ignore_eos": False, "seed": 3}  # fmt: skip
    assert client.post("/v1/completions", json=body).status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None),
        ({"messages": HELLO, "temperature": 3}, "temperature"),
        ({"messages": HELLO, "n": 0}, "n"),
        ({"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
    ],
)
def test_schema_errors_are_400_invalid_request_error(client: httpx.Client, body: dict[str, Any], param: str) -> None:
    response = client.post("/v1/chat/completions", json=body)
    assert_error(response, 400, param=param)
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_completion_schema_error_and_oversized_prompt(client: httpx.Client) -> None:
    assert_error(client.post("/v1/completions", json={"prompt": ""}), 400, param="prompt")
    huge = "word " * 7000
    assert_error(client.post("/v1/completions", json={"prompt": huge, "stream": True}), 413, code="prompt_too_long")


def test_models_list_and_retrieve(client: httpx.Client) -> None:
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    [card] = listed["data"]
    assert card["id"] == SERVED and card["object"] == "model" and card["owned_by"]
    assert client.get(f"/v1/models/{SERVED}").json() == card
    assert_error(client.get("/v1/models/gpt-4"), 404, code="model_not_found")
    assert client.get("/health").json()["model_name"] == SERVED


def test_client_that_leaves_a_streamed_n2_request_aborts_both(server: LiveServer, client: httpx.Client) -> None:
    def queue() -> dict[str, int]:
        state: dict[str, int] = client.get("/status").json()["queue"]
        return state

    assert poll(lambda: queue()["running"] == 0 and queue()["queued"] == 0)  # earlier tests' runs have ended
    before = queue()["cancelled"]
    cancelled_metric = metric_value(client, "llm_requests_rejected_total", reason="cancelled")
    # sampled, so the two choices are two generations (identical greedy choices share one)
    body = {"prompt": "Write a long essay about rivers.", "max_tokens": 1000, "temperature": 0.9, "n": 2,
            "stream": True}  # fmt: skip
    with server.client() as leaving, leaving.stream("POST", "/v1/completions", json=body) as response:
        for line in response.iter_lines():
            if '"text":"' in line and '"text":""' not in line:
                break  # the first text arrived: a generation is running
    assert poll(lambda: queue()["running"] == 0 and queue()["queued"] == 0 and queue()["cancelled"] == before + 2)
    assert metric_value(client, "llm_requests_rejected_total", reason="cancelled") == cancelled_metric + 2


SHORT_ANSWER = {"messages": [{"role": "user", "content": "Is the sky blue? Answer yes or no."}], "max_tokens": 20,
                "temperature": 0}  # fmt: skip


def test_the_short_answer_ends_early_by_itself(client: httpx.Client) -> None:
    """What the two tests below change: without the extras this answer ends well before 10 tokens."""
    data = client.post("/v1/chat/completions", json=SHORT_ANSWER).json()
    assert data["choices"][0]["finish_reason"] == "stop" and data["usage"]["completion_tokens"] < 10


def test_min_tokens_holds_back_the_end(client: httpx.Client) -> None:
    data = client.post("/v1/chat/completions", json={**SHORT_ANSWER, "min_tokens": 10}).json()
    assert data["usage"]["completion_tokens"] >= 10


def test_ignore_eos_generates_to_max_tokens(client: httpx.Client) -> None:
    data = client.post("/v1/chat/completions", json={**SHORT_ANSWER, "ignore_eos": True}).json()
    assert data["choices"][0]["finish_reason"] == "length" and data["usage"]["completion_tokens"] == 20
