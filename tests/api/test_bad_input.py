"""Bad input gets SPEC's JSON error with the right status, and the server stays healthy."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import fake_settings, running_app
from tests.conftest import assert_error
from tests.fakes import ScriptedEngine

CHAT_OK = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def api() -> Iterator[TestClient]:
    """One app for the module: a refused request leaves nothing behind for the next test."""
    with running_app(ScriptedEngine(), fake_settings(rate_limit={"enabled": False})) as (_, client):
        yield client


@pytest.fixture(autouse=True)
def still_healthy(api: TestClient) -> Iterator[None]:
    yield
    assert api.get("/health").status_code == 200


def post_raw(api: TestClient, path: str, content: bytes | Iterator[bytes]) -> httpx.Response:
    return api.post(path, content=content, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/chat"])
@pytest.mark.parametrize("content", [b'{"prompt": "hi"', b"not json", b'{"prompt": "\xff\xfe"}'])
def test_malformed_json_is_400(api: TestClient, path: str, content: bytes) -> None:
    assert_error(post_raw(api, path, content), 400, code="invalid_json")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": 123}, "prompt"),
        ({"prompt": ["a"]}, "prompt"),
        ({"prompt": "hi", "max_tokens": "5"}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 2.5}, "max_tokens"),
        ({"prompt": "hi", "temperature": 2.5}, "temperature"),
        ({"prompt": "hi", "temperature": "hot"}, "temperature"),
        ({"prompt": "hi", "top_p": 0}, "top_p"),
        ({"prompt": "hi", "top_k": -1}, "top_k"),
        ({"prompt": "hi", "seed": -3}, "seed"),
        ({"prompt": "hi", "stream": "yes"}, "stream"),
        ({"prompt": "hi", "stop": ""}, "stop"),
        ({"prompt": "hi", "stop": 7}, "stop"),
        ({"prompt": "hi", "temprature": 0.5}, "temprature"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   \n"}, "prompt"),
        ({"prompt": "nul\u0000byte"}, "prompt"),
        ({}, "prompt"),
    ],
)
def test_generate_schema_violations_are_422_naming_the_field(
    api: TestClient, body: dict[str, object], param: str
) -> None:
    assert_error(api.post("/v1/generate", json=body), 422, code="validation_error", param=param)


def test_lone_surrogate_escape_is_422(api: TestClient) -> None:
    response = post_raw(api, "/v1/generate", b'{"prompt": "lone \\ud800 surrogate"}')
    assert_error(response, 422, code="validation_error", param="prompt")


def test_body_that_is_not_an_object_is_422(api: TestClient) -> None:
    assert_error(api.post("/v1/generate", json=["prompt"]), 422, code="validation_error")
    assert_error(post_raw(api, "/v1/generate", b""), 422, code="validation_error")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": "hi", "name": "x"}]}, "messages.0.name"),
        ({**CHAT_OK, "session_id": "has space"}, "session_id"),
        ({**CHAT_OK, "session_id": "x" * 129}, "session_id"),
        ({**CHAT_OK, "session_id": ""}, "session_id"),
        ({**CHAT_OK, "model": "gpt-4"}, "model"),
    ],
)
def test_chat_schema_violations_are_422_naming_the_field(api: TestClient, body: dict[str, object], param: str) -> None:
    assert_error(api.post("/v1/chat", json=body), 422, code="validation_error", param=param)


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_over_the_character_limit_is_413_even_streamed(api: TestClient, stream: bool) -> None:
    response = api.post("/v1/generate", json={"prompt": "a" * 32_001, "stream": stream})
    assert_error(response, 413, code="prompt_too_long", param="prompt")


def test_chat_turn_over_the_character_limit_is_413(api: TestClient) -> None:
    messages = [{"role": "user", "content": "a" * 20_000}, {"role": "user", "content": "b" * 12_001}]
    assert_error(api.post("/v1/chat", json={"messages": messages}), 413, code="prompt_too_long")


def test_body_over_the_byte_limit_is_413(api: TestClient) -> None:
    big = b'{"prompt": "' + b"a" * (1_048_576 + 10) + b'"}'
    assert_error(post_raw(api, "/v1/generate", big), 413, code="payload_too_large")


def test_chunked_body_over_the_byte_limit_is_413(api: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"a" * 32_768
        yield b'"}'

    assert_error(post_raw(api, "/v1/generate", chunks()), 413, code="payload_too_large")


def test_prompt_longer_than_the_context_window_is_400(api: TestClient) -> None:
    response = api.post("/v1/generate", json={"prompt": "1 " * 15_000})
    assert_error(response, 400, code="context_length_exceeded")


def test_unknown_route_and_method(api: TestClient) -> None:
    assert_error(api.get("/v1/nope"), 404, code="not_found")
    assert_error(api.get("/v1/generate"), 405)


def test_unknown_session_is_404(api: TestClient) -> None:
    assert_error(api.get("/v1/chat/sessions/never-made"), 404, code="session_not_found")
    assert_error(api.delete("/v1/chat/sessions/never-made"), 404, code="session_not_found")
    assert_error(api.get("/v1/chat/sessions/bad%20id"), 422)
