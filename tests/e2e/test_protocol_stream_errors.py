"""A failure after streaming began travels inside the stream, in each protocol's own way, and each
client raises it; before streaming, it is a plain JSON error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import GenerationError

from tests.conftest import LiveServer, make_settings

ESSAY = "Write a long essay about mountains."


@pytest.fixture(scope="module")
def short_deadline(model_dir: Path) -> Iterator[LiveServer]:
    settings = make_settings(model_dir, engine={"request_timeout_s": 1.5})
    live = LiveServer(settings).start().wait_healthy()
    yield live
    live.stop()


def data_lines(client: httpx.Client, path: str, body: dict[str, object]) -> list[str]:
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        return [line[len("data:") :].strip() for line in response.iter_lines() if line.startswith("data:")]


def test_openai_stream_ends_with_an_error_object_then_done(short_deadline: LiveServer) -> None:
    body = {"messages": [{"role": "user", "content": ESSAY}], "max_tokens": 1000, "temperature": 0, "stream": True}
    with short_deadline.client() as client:
        data = data_lines(client, "/v1/chat/completions", body)
    assert data[-1] == "[DONE]"
    error = json.loads(data[-2])["error"]
    assert error["code"] == "generation_timeout" and error["type"] == "timeout_error" and error["request_id"]
    chunks = [json.loads(item) for item in data[:-2]]
    assert any(c["choices"][0]["delta"].get("content") for c in chunks)
    assert not any(c["choices"][0]["finish_reason"] for c in chunks)


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


def test_tgi_stream_ends_with_a_tgi_error_event(short_deadline: LiveServer) -> None:
    body = {"inputs": ESSAY, "parameters": {"max_new_tokens": 1000}}
    with short_deadline.client() as client:
        events = [json.loads(item) for item in data_lines(client, "/generate_stream", body)]
    assert "token" in events[0]
    assert events[-1]["error_type"] == "generation" and "request_timeout_s" in events[-1]["error"]


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
