"""The OpenAI-compatible endpoints on the wire: shapes, SSE framing, fields, errors, disconnects."""

from __future__ import annotations

import httpx

from tests.conftest import chunks_of, sse_data

SERVED = "smollm2-135m-instruct"
HELLO = [{"role": "user", "content": "Say hello."}]


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
