"""POST /v1/chat and the session resource, non-streamed."""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import assert_error


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


def test_delete_forgets_the_session(client: httpx.Client) -> None:
    session_id = new_session()
    assert chat(client, "Hello", session_id).status_code == 200
    response = client.delete(f"/v1/chat/sessions/{session_id}")
    assert response.status_code == 204 and response.content == b""
    assert_error(client.get(f"/v1/chat/sessions/{session_id}"), 404, code="session_not_found")


def test_failed_turn_leaves_history_as_it_was(client: httpx.Client) -> None:
    session_id = new_session()
    assert chat(client, "Hello", session_id).status_code == 200
    before = client.get(f"/v1/chat/sessions/{session_id}").json()["messages"]
    assert_error(chat(client, "1 " * 15_000, session_id), 400, code="context_length_exceeded")
    assert_error(chat(client, "x" * 40_000, session_id), 413)
    assert client.get(f"/v1/chat/sessions/{session_id}").json()["messages"] == before


def test_failed_first_turn_creates_no_session(client: httpx.Client) -> None:
    session_id = new_session()
    assert_error(chat(client, "1 " * 15_000, session_id), 400, code="context_length_exceeded")
    assert_error(client.get(f"/v1/chat/sessions/{session_id}"), 404, code="session_not_found")


def test_client_system_message_and_multi_message_turn(client: httpx.Client) -> None:
    messages = [
        {"role": "system", "content": "Answer with one word."},
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ]
    response = client.post("/v1/chat", json={"messages": messages, "max_tokens": 4, "temperature": 0})
    assert response.status_code == 200
    assert response.json()["message"]["content"]
