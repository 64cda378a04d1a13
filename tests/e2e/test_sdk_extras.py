"""The official openai SDK sends a template as `extra_body` and an Idempotency-Key as `extra_headers`,
to a live server over the scripted engine."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.api.conftest import fake_settings
from tests.conftest import LiveServer
from tests.fakes import ScriptedEngine, decode_prompt, fake_serving_model


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def server(engine: ScriptedEngine) -> Iterator[LiveServer]:
    live = LiveServer(fake_settings(rate_limit={"enabled": False}), serving_model=fake_serving_model(engine))
    live.start().wait_healthy()
    yield live
    live.stop()


def test_extra_body_carries_the_template(server: LiveServer, engine: ScriptedEngine) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": ""}],
        extra_body={"template_id": "summarize", "variables": {"text": "Rivers flow to the sea."}},
    )
    assert answer.choices[0].message.content
    assert "Rivers flow to the sea." in decode_prompt(engine.submitted[-1])
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="any", prompt=None, extra_body={"template_id": "summarize"})
    assert raised.value.status_code == 400 and raised.value.param == "variables.text"
    text = client.completions.create(
        model="any", prompt=None, extra_body={"template_id": "summarize", "variables": {"text": "Stones sink."}}
    )
    assert text.choices[0].text and "Stones sink." in decode_prompt(engine.submitted[-1])
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="any", prompt=None, extra_body={"template_id": "nope"})


def test_extra_headers_carry_the_idempotency_key(server: LiveServer, engine: ScriptedEngine) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)

    def ask() -> openai.types.chat.ChatCompletion:
        return client.chat.completions.create(
            model="any",
            messages=[{"role": "user", "content": "Hi"}],
            temperature=0.9,
            extra_headers={"Idempotency-Key": "sdk-order-1"},
        )

    before = len(engine.submitted)
    first, again = ask(), ask()
    assert again.id == first.id and again.choices[0].message.content == first.choices[0].message.content
    assert len(engine.submitted) == before + 1
