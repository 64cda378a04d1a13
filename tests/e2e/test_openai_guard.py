"""The openai SDK against a guarded server: its own error classes for 401 and 429."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import GUARDED_KEYS, LiveServer

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "Hi!"}]


def sdk(server: LiveServer, key: str, client_ip: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=key, max_retries=0, default_headers={"X-Forwarded-For": client_ip}
    )


def test_wrong_key_raises_authentication_error(guarded_server: LiveServer) -> None:
    client = sdk(guarded_server, "not-a-key", "10.252.0.1")
    with pytest.raises(openai.AuthenticationError) as raised:
        client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=2)
    assert raised.value.status_code == 401
    assert raised.value.type == "authentication_error" and raised.value.code == "invalid_api_key"


def test_right_key_works_through_the_sdk(guarded_server: LiveServer) -> None:
    client = sdk(guarded_server, GUARDED_KEYS["bob"], "10.252.0.2")
    answer = client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=2)
    assert answer.choices[0].message.role == "assistant"
    assert [model.id for model in client.models.list()] == ["smollm2-135m-instruct"]


def test_flood_raises_rate_limit_error(guarded_server: LiveServer) -> None:
    client = sdk(guarded_server, "still-not-a-key", "10.252.0.3")  # bad keys spend the IP's bucket
    errors: list[type[Exception]] = []
    for _ in range(12):
        try:
            client.models.list()
        except openai.APIStatusError as error:
            errors.append(type(error))
    assert errors[:10] == [openai.AuthenticationError] * 10
    assert openai.RateLimitError in errors[10:]
