"""POST /v1/chat and the session resource, non-streamed."""

from __future__ import annotations

import uuid

import httpx


def new_session() -> str:
    return f"test-{uuid.uuid4().hex}"


def chat(client: httpx.Client, content: str, session_id: str | None = None, **fields: object) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 6, "temperature": 0, **fields}
    if session_id is not None:
        body["session_id"] = session_id
    return client.post("/v1/chat", json=body)


def test_chat_without_session(client: httpx.Client) -> None:
    response = chat(client, "What is 2+2?")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "message", "model", "tokens_generated", "finish_reason", "cached", "session_id", "usage", "request_id",
    }  # fmt: skip
    assert body["message"]["role"] == "assistant" and body["message"]["content"]
    assert body["session_id"] is None
    assert body["model"] == "smollm2-135m-instruct"
    assert body["usage"]["completion_tokens"] == body["tokens_generated"] <= 6
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["tokens_generated"]


def test_session_history_grows_turn_by_turn_and_is_used(client: httpx.Client) -> None:
    session_id = new_session()
    first = chat(client, "My name is Ada.", session_id).json()
    assert first["session_id"] == session_id
    stored = client.get(f"/v1/chat/sessions/{session_id}").json()
    assert stored["session_id"] == session_id
    assert stored["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": first["message"]["content"]},
    ]
    assert stored["expires_at"] > 0

    second = chat(client, "What is my name?", session_id).json()
    alone = chat(client, "What is my name?").json()
    assert second["usage"]["prompt_tokens"] > alone["usage"]["prompt_tokens"]  # the history is in the prompt
    messages = client.get(f"/v1/chat/sessions/{session_id}").json()["messages"]
    assert [m["content"] for m in messages[2:]] == ["What is my name?", second["message"]["content"]]
