"""The TGI-compatible endpoints over the fake engine: shapes, SSE framing (no event names, no [DONE],
the last event carrying the text), TGI's error event mid-stream, sampling switches, validation."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.errors import EngineOverloaded, GenerationTimeout
from tests.conftest import assert_error
from tests.fakes import ScriptedEngine

PROMPT = "Once upon a time"
REPLY = "there was a scripted engine."


@pytest.fixture(autouse=True)
def scripted(engine: ScriptedEngine) -> None:
    engine.reply = lambda prompt: REPLY


def tgi_events(api: TestClient, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with api.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line and not line.startswith(":")]
    assert all(line.startswith("data:") for line in lines), lines  # no event names, no [DONE]
    return [json.loads(line[len("data:") :]) for line in lines]


def test_generate_is_greedy_by_default(api: TestClient, engine: ScriptedEngine) -> None:
    response = api.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 3}})
    assert response.status_code == 200
    assert response.json() == {"generated_text": "there was a"}
    assert engine.submitted[-1].params.temperature == 0.0 and engine.submitted[-1].params.max_tokens == 3


@pytest.mark.parametrize(
    ("parameters", "temperature"),
    [
        ({"do_sample": True}, 1.0),
        ({"temperature": 0.5}, 0.5),
        ({"top_k": 10}, 1.0),
        ({"top_p": 0.9}, 1.0),
        ({"temperature": 1.0}, 0.0),  # TGI: a neutral temperature alone does not switch sampling on
    ],
)
def test_sampling_is_switched_on_as_tgi_does(
    api: TestClient, engine: ScriptedEngine, parameters: dict[str, Any], temperature: float
) -> None:
    assert api.post("/generate", json={"inputs": PROMPT, "parameters": parameters}).status_code == 200
    assert engine.submitted[-1].params.temperature == temperature


def test_generate_details_and_full_text(api: TestClient) -> None:
    parameters = {"max_new_tokens": 5, "details": True, "return_full_text": True, "decoder_input_details": False,
                  "watermark": False, "typical_p": None, "seed": 4}  # fmt: skip
    data = api.post("/generate", json={"inputs": PROMPT, "parameters": parameters}).json()
    assert data["generated_text"] == PROMPT + REPLY
    assert data["details"] == {"finish_reason": "eos_token", "generated_tokens": 5, "seed": 4, "prefill": [],
                               "tokens": []}  # fmt: skip


def test_finish_reasons_as_tgi_names_them(api: TestClient) -> None:
    def finish(parameters: dict[str, Any]) -> str:
        body = {"inputs": PROMPT, "parameters": {**parameters, "details": True}}
        reason: str = api.post("/generate", json=body).json()["details"]["finish_reason"]
        return reason

    assert finish({"max_new_tokens": 2}) == "length"
    assert finish({}) == "eos_token"
    assert finish({"stop": ["scripted"]}) == "stop_sequence"


def test_generate_stream_events(api: TestClient) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 4, "details": True, "seed": 3}}
    events = tgi_events(api, "/generate_stream", body)
    *tokens, last = events
    assert len(tokens) >= 2 and all(e["generated_text"] is None and e["details"] is None for e in tokens)
    assert [e["index"] for e in events] == list(range(1, len(events) + 1))
    assert last["token"]["special"] is True and last["token"]["text"] == ""
    assert last["generated_text"] == "".join(e["token"]["text"] for e in tokens) == "there was a scripted"
    assert last["details"] == {
        "finish_reason": "length", "generated_tokens": 4, "seed": 3, "input_length": len(PROMPT),
    }  # fmt: skip
    whole = api.post("/generate", json=body).json()
    assert whole["generated_text"] == last["generated_text"]


def test_compat_route_switches_on_stream(api: TestClient) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 4, "return_full_text": True}}
    listed = api.post("/", json=body)
    assert listed.status_code == 200
    assert listed.json() == [{"generated_text": PROMPT + "there was a scripted"}]
    events = tgi_events(api, "/", {**body, "stream": True})
    assert events[-1]["generated_text"] == listed.json()[0]["generated_text"]
    assert events[-1]["details"] is None  # only when asked for


@pytest.mark.parametrize(
    ("error", "error_type"),
    [(GenerationTimeout("generation took too long"), "generation"), (EngineOverloaded("full"), "overloaded")],
)
def test_failure_mid_stream_is_a_tgi_error_event(
    api: TestClient, engine: ScriptedEngine, error: Exception, error_type: str
) -> None:
    engine.fail_after_tokens, engine.mid_stream_error = 3, error
    events = tgi_events(api, "/generate_stream", {"inputs": PROMPT})
    assert "token" in events[0]
    assert events[-1]["error_type"] == error_type and events[-1]["error"] == str(error)
    assert events[-1]["request_id"]
    assert not any(e.get("generated_text") for e in events)


def test_admission_error_is_plain_json_even_when_streamed(api: TestClient, engine: ScriptedEngine) -> None:
    engine.fail_on_submit = EngineOverloaded("too many requests are waiting; retry shortly")
    assert_error(api.post("/generate_stream", json={"inputs": PROMPT}), 503, code="overloaded")
    assert_error(api.post("/generate", json={"inputs": PROMPT}), 503, code="overloaded")


def test_info(api: TestClient) -> None:
    info = api.get("/info").json()
    assert info["model_id"] == "scripted-model" and info["model_pipeline_tag"] == "text-generation"
    assert (info["max_total_tokens"], info["max_input_tokens"]) == (4096, 4095)
    assert info["model_device_type"] == "cpu" and info["model_dtype"] == "float32" and info["version"]
    assert info["max_concurrent_requests"] == 64


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"parameters": {}}, "inputs"),
        ({"inputs": " "}, "inputs"),
        ({"inputs": PROMPT, "parameters": {"max_new_tokens": 0}}, "parameters.max_new_tokens"),
        ({"inputs": PROMPT, "parameters": {"best_of": 2}}, "parameters.best_of"),
        ({"inputs": PROMPT, "parameters": {"top_p": 1.5}}, "parameters.top_p"),
    ],
)
def test_validation_errors_are_422(api: TestClient, body: dict[str, Any], param: str) -> None:
    assert_error(api.post("/generate", json=body), 422, code="validation_error", param=param)
    assert_error(api.post("/generate_stream", json=body), 422, code="validation_error", param=param)


def test_oversized_inputs_are_413(api: TestClient) -> None:
    assert_error(api.post("/generate", json={"inputs": "word " * 7000}), 413, code="prompt_too_long")
