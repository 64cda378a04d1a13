"""What the OpenAPI document promises, answer by answer: the methods of each path, the error
statuses and body of each route, and the types the request schemas admit."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.dependencies import get_runtime
from app.api.errors import ErrorResponse
from app.api.openapi import KEY_REUSED
from tests.api.conftest import fake_settings, running_app
from tests.conftest import assert_error
from tests.fakes import ScriptedEngine

KEY = {"X-API-Key": "document-test-key"}
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
OPENAI_POSTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")


@pytest.fixture
def keyed_app(engine: ScriptedEngine) -> Iterator[tuple[FastAPI, TestClient]]:
    settings = fake_settings(rate_limit={"enabled": False}, security={"api_keys": [KEY["X-API-Key"]]})
    with running_app(engine, settings) as started:
        yield started


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "some-id", path)


def test_a_405_allows_exactly_the_documented_methods_of_its_path(keyed_app: tuple[FastAPI, TestClient]) -> None:
    app, client = keyed_app
    for path, operations in app.openapi()["paths"].items():
        documented = {method.upper() for method in operations}
        for method in set(HTTP_METHODS) - documented:
            response = client.request(method, _concrete(path), headers=KEY)
            assert response.status_code == 405, (method, path, response.text)
            allowed = {part.strip() for part in response.headers["allow"].split(",")}
            assert allowed == documented, (method, path)


def test_openai_routes_document_400_for_a_bad_request_and_422_only_for_a_reused_key(
    keyed_app: tuple[FastAPI, TestClient],
) -> None:
    app, client = keyed_app
    document = app.openapi()
    for path in OPENAI_POSTS:
        responses = document["paths"][path]["post"]["responses"]
        assert "400" in responses, path
        assert "422" not in responses or responses["422"]["description"] == KEY_REUSED, path
        assert_error(client.post(path, json={"stream": 0}, headers=KEY), 400, code="invalid_request")
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_every_error_status_is_documented_with_the_error_body(keyed_app: tuple[FastAPI, TestClient]) -> None:
    app, _ = keyed_app
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                headers = response["headers"]
                assert headers["X-Request-ID"]["required"] and headers["X-Process-Time"]["required"]
                if int(status) >= 400 and path != "/health":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)


@pytest.mark.parametrize(
    ("method", "template", "path", "body", "status"),
    [
        ("POST", "/v1/generate", "/v1/generate", {"prompt": " \u3000"}, 422),
        ("POST", "/v1/chat", "/v1/chat", {"messages": []}, 422),
        ("GET", "/v1/chat/sessions/{session_id}", "/v1/chat/sessions/unknown", None, 404),
        ("DELETE", "/v1/chat/sessions/{session_id}", "/v1/chat/sessions/bad%20id", None, 422),
        ("POST", "/v1/completions", "/v1/completions", {"prompt": ""}, 400),
        ("POST", "/generate", "/generate", {"inputs": "hi", "parameters": {"details": 0}}, 422),
        ("GET", "/v1/models/{model_id}", "/v1/models/not-this-one", None, 404),
        ("GET", "/status", "/status", None, 401),
    ],
)
def test_error_answers_have_a_documented_status_and_the_documented_body(
    keyed_app: tuple[FastAPI, TestClient], method: str, template: str, path: str, body: Any, status: int
) -> None:
    app, client = keyed_app
    headers = {} if status == 401 else KEY
    response = client.request(method, path, json=body, headers=headers)
    assert response.status_code == status, response.text
    assert str(status) in app.openapi()["paths"][template][method.lower()]["responses"]
    error = ErrorResponse.model_validate(response.json()).error
    assert error.request_id == response.headers["x-request-id"]


def test_an_unexpected_failure_is_a_500_with_the_request_id(keyed_app: tuple[FastAPI, TestClient]) -> None:
    app, client = keyed_app

    def broken_runtime() -> None:
        raise RuntimeError("scripted bug")

    app.dependency_overrides[get_runtime] = broken_runtime
    response = client.get("/v1/models", headers={**KEY, "X-Request-ID": "trace-500"})
    assert_error(response, 500, code="internal_error")
    assert response.json()["error"]["request_id"] == "trace-500"
    assert "scripted bug" not in response.text


def test_liveness_needs_no_key(keyed_app: tuple[FastAPI, TestClient]) -> None:
    _, client = keyed_app
    assert client.get("/health/live").status_code == 200
    assert client.get("/status").status_code == 401


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/generate", {"prompt": "hi", "max_tokens": 3.0}),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 3.0, "n": 1.0}),
        ("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 3.0}}),
    ],
)
def test_a_whole_float_is_an_integer_as_in_json_schema(
    keyed_app: tuple[FastAPI, TestClient], path: str, body: dict[str, Any]
) -> None:
    _, client = keyed_app
    assert client.post(path, json=body, headers=KEY).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/generate", {"prompt": "hi", "max_tokens": 2.5}, 422, "max_tokens"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"},
            400,
            "max_tokens",
        ),
        ("/v1/completions", {"prompt": "hi", "echo": 1}, 400, "echo"),
        ("/v1/responses", {"input": "hi", "previous_response_id": "resp_1"}, 400, "previous_response_id"),
        ("/", {"inputs": "hi", "stream": "false"}, 422, "stream"),
        ("/generate", {"inputs": "hi", "parameters": {"do_sample": 1}}, 422, "parameters.do_sample"),
    ],
)
def test_a_value_of_another_type_than_documented_is_refused(
    keyed_app: tuple[FastAPI, TestClient], path: str, body: dict[str, Any], status: int, param: str
) -> None:
    _, client = keyed_app
    assert_error(client.post(path, json=body, headers=KEY), status, param=param)


def test_each_request_that_names_a_template_is_told_its_variables(keyed_app: tuple[FastAPI, TestClient]) -> None:
    """A schema-valid template request is one the server takes: the document states what each
    template needs (here summarize's required, bounded `text`), on every route that takes templates."""
    app, client = keyed_app
    schemas = app.openapi()["components"]["schemas"]
    for name in ("GenerateRequest", "ChatRequest", "CompletionRequest", "ChatCompletionRequest"):
        rules = {rule["if"]["properties"]["template_id"]["const"]: rule["then"] for rule in schemas[name]["allOf"]}
        assert set(rules) == {"summarize", "classify", "extract_json"}, name
        summarize = rules["summarize"]
        assert summarize["required"] == ["variables"]
        variables = summarize["properties"]["variables"]
        assert variables["required"] == ["text"] and variables["additionalProperties"] is False
        assert variables["properties"]["text"]["type"] == "string"
    refused = client.post("/v1/generate", json={"template_id": "summarize", "variables": {}}, headers=KEY)
    assert_error(refused, 422, code="validation_error", param="variables.text")
