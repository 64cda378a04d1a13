"""The fake engine serves every protocol through the real app."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.fakes import ScriptedEngine


def test_generate_answers_with_the_scripted_text(api: TestClient, engine: ScriptedEngine) -> None:
    engine.reply = lambda prompt: "one two three four"
    response = api.post("/v1/generate", json={"prompt": "hello", "max_tokens": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["generated_text"] == "one two three"
    assert body["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_chat_completion_over_the_fake_engine(api: TestClient, engine: ScriptedEngine) -> None:
    engine.reply = lambda prompt: "Hi there."
    response = api.post("/v1/chat/completions", json={"model": "x", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Hi there."
    assert response.json()["model"] == "scripted-model"
