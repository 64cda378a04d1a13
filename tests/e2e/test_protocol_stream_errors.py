"""Each real client raises a failure that comes after streaming began (inside the stream, in its
protocol's own way), and one that comes before it (a plain JSON error).

The server is live but its engine is the scripted fake, failing every answer with the deadline error
after a few tokens: the clients' side is under test here. The framing itself is checked in tests/api;
a real deadline on the real engine in test_engine_limits.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import GenerationError

from app.core.errors import GenerationTimeout
from tests.api.conftest import fake_settings
from tests.conftest import LiveServer
from tests.fakes import ScriptedEngine, fake_serving_model

ESSAY = "Write a long essay about mountains."


@pytest.fixture(scope="module")
def short_deadline() -> Iterator[LiveServer]:
    engine = ScriptedEngine(reply=lambda prompt: "Mountains rise " * 50)
    live = LiveServer(fake_settings(), serving_model=fake_serving_model(engine)).start().wait_healthy()
    engine.fail_after_tokens = 6  # after start-up: the warm-up generation must pass
    engine.mid_stream_error = GenerationTimeout("generation exceeded engine.request_timeout_s")
    yield live
    live.stop()


def test_openai_sdk_raises_the_error_mid_stream_and_before_it(short_deadline: LiveServer) -> None:
    sdk = openai.OpenAI(base_url=f"{short_deadline.url}/v1", api_key="any-key", max_retries=0)
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in sdk.completions.create(model="x", prompt=ESSAY, max_tokens=1000, temperature=0, stream=True):
            received.append(chunk.choices[0].text)
    assert "".join(received) and caught.value.code == "generation_timeout"
    with pytest.raises(openai.InternalServerError) as whole:
        sdk.completions.create(model="x", prompt=ESSAY, max_tokens=1000, temperature=0)
    assert whole.value.status_code == 504 and whole.value.code == "generation_timeout"


def test_inference_client_raises_generation_error_mid_stream(short_deadline: LiveServer) -> None:
    hf = InferenceClient(base_url=short_deadline.url)
    received: list[str] = []
    with pytest.raises(GenerationError):
        for token in hf.text_generation(ESSAY, max_new_tokens=1000, stream=True):
            received.append(token)
    assert "".join(received)


def test_responses_stream_ends_with_an_error_event(short_deadline: LiveServer) -> None:
    sdk = openai.OpenAI(base_url=f"{short_deadline.url}/v1", api_key="any-key", max_retries=0)
    events = list(sdk.responses.create(model="x", input=ESSAY, max_output_tokens=1000, temperature=0, stream=True))
    assert any(event.type == "response.output_text.delta" for event in events)
    last = events[-1]
    assert last.type == "error" and last.code == "generation_timeout"
