"""Prompt templates over HTTP: the resource, and template_id + variables on the generating routes."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.conftest import fake_settings, running_app
from tests.conftest import assert_error, metric_value
from tests.fakes import ScriptedEngine, decode_prompt

SUMMARIZE = {"template_id": "summarize", "variables": {"text": "The cat sat on the mat."}}


def seen(engine: ScriptedEngine) -> str:
    return decode_prompt(engine.submitted[-1])


def test_the_templates_are_listed_and_read_one_by_one(api: TestClient) -> None:
    listed = api.get("/v1/templates")
    assert listed.status_code == 200
    ids = [t["id"] for t in listed.json()["data"]]
    assert {"summarize", "classify", "extract_json"} <= set(ids)
    one = api.get("/v1/templates/summarize").json()
    assert one in listed.json()["data"]
    assert one["version"] == "1" and one["description"]
    assert {"name": "text", "type": "string", "required": True, "default": None, "max_length": 20000} in one[
        "variables"
    ]
    assert_error(api.get("/v1/templates/nope"), 404, "template_not_found")


def test_templates_need_the_key(engine: ScriptedEngine) -> None:
    settings = fake_settings(rate_limit={"enabled": False}, security={"api_keys": ["k1"]})
    with running_app(engine, settings) as (_, client):
        assert_error(client.get("/v1/templates"), 401)
        assert client.get("/v1/templates", headers={"X-API-Key": "k1"}).status_code == 200


def test_generate_renders_the_template_into_the_prompt(api: TestClient, engine: ScriptedEngine) -> None:
    response = api.post("/v1/generate", json=SUMMARIZE)
    assert response.status_code == 200, response.text
    assert "Summarize the following text" in response.json()["prompt"]
    assert "The cat sat on the mat." in seen(engine)
    # The template's parameters are defaults: temperature 0 makes the answer cacheable.
    assert engine.submitted[-1].params.temperature == 0.0 and engine.submitted[-1].params.max_tokens == 200


def test_generate_takes_exactly_one_of_prompt_and_template(api: TestClient) -> None:
    assert_error(api.post("/v1/generate", json={**SUMMARIZE, "prompt": "hi"}), 422, "validation_error", "template_id")
    assert_error(api.post("/v1/generate", json={"variables": {"text": "x"}}), 422, "validation_error", "prompt")
    assert_error(api.post("/v1/generate", json={"template_id": "nope"}), 404, "template_not_found")


def test_bad_variables_are_422_naming_the_variable(api: TestClient, engine: ScriptedEngine) -> None:
    for variables, name in [({}, "text"), ({"text": "x", "extra": "y"}, "extra"), ({"text": "x" * 20_001}, "text")]:
        response = api.post("/v1/generate", json={"template_id": "summarize", "variables": variables})
        assert_error(response, 422, "validation_error", f"variables.{name}")
    assert engine.submitted == []


def test_personal_data_in_variables_is_redacted_before_rendering(api: TestClient, engine: ScriptedEngine) -> None:
    response = api.post("/v1/generate", json={"template_id": "summarize", "variables": {"text": "mail ann@x.example"}})
    assert response.status_code == 200
    assert "[EMAIL]" in seen(engine) and "ann@x.example" not in seen(engine)


def test_the_same_rendered_prompt_is_a_cache_hit(api: TestClient, engine: ScriptedEngine) -> None:
    first = api.post("/v1/generate", json=SUMMARIZE)
    again = api.post("/v1/generate", json=SUMMARIZE)
    assert first.headers["x-cache"] == "MISS" and again.headers["x-cache"] == "HIT"
    assert again.json()["cached"] is True and len(engine.submitted) == 1
    assert metric_value(api, "llm_cache_requests_total", result="hit") == 1


def test_chat_renders_the_last_user_message_and_the_system(api: TestClient, engine: ScriptedEngine) -> None:
    body = {"messages": [{"role": "user", "content": ""}], **SUMMARIZE, "session_id": "s1"}
    assert api.post("/v1/chat", json=body).status_code == 200
    prompt = seen(engine)
    assert "You are a concise assistant" in prompt and "The cat sat on the mat." in prompt
    history = api.get("/v1/chat/sessions/s1").json()["messages"]
    assert [m["role"] for m in history] == ["system", "user", "assistant"]
    assert "The cat sat on the mat." in history[1]["content"]


def test_openai_routes_take_the_template_in_the_body(api: TestClient, engine: ScriptedEngine) -> None:
    chat = api.post(
        "/v1/chat/completions", json={"model": "x", "messages": [{"role": "user", "content": ""}], **SUMMARIZE}
    )
    assert chat.status_code == 200, chat.text
    assert "The cat sat on the mat." in seen(engine)
    completion = api.post("/v1/completions", json={"model": "x", **SUMMARIZE})
    assert completion.status_code == 200, completion.text
    assert "Summarize the following text" in seen(engine)
    bad = api.post("/v1/completions", json={"model": "x", "template_id": "summarize", "variables": {}})
    assert_error(bad, 400, "invalid_request", "variables.text")
    assert_error(api.post("/v1/completions", json={"model": "x", "template_id": "nope"}), 404, "template_not_found")
