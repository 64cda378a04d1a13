"""The OpenAI-compatible endpoints over the fake engine: shapes, SSE framing ([DONE], usage chunk,
errors inside the stream), fields as the engine gets them, schema errors as 400, the model list."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.errors import EngineOverloaded, GenerationTimeout
from tests.conftest import assert_error, chunks_of, metric_value, sse_data
from tests.fakes import ScriptedEngine, decode_prompt

SERVED = "scripted-model"
HELLO = [{"role": "user", "content": "Say hello."}]
REPLY = "Hello to you too, my friend."


@pytest.fixture(autouse=True)
def scripted(engine: ScriptedEngine) -> None:
    engine.reply = lambda prompt: REPLY


def test_chat_completion_shape(api: TestClient) -> None:
    body = {"model": "gpt-4o", "messages": HELLO, "max_tokens": 3, "user": "alice"}
    response = api.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    data = response.json()
    assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion"
    assert isinstance(data["created"], int) and data["model"] == SERVED  # any model name, answered by the served one
    assert data["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello to you"},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert data["usage"]["completion_tokens"] == 3
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + 3


def test_chat_stream_framing_role_first_and_usage_chunk(api: TestClient) -> None:
    body = {"messages": HELLO, "max_tokens": 4, "stream_options": {"include_usage": True}}
    chunks = chunks_of(sse_data(api, "/v1/chat/completions", body))
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    *content, finish, usage = chunks[1:]
    assert finish["choices"][0]["finish_reason"] == "length" and finish["choices"][0]["delta"] == {}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4
    assert all(c["usage"] is None for c in [chunks[0], *content, finish])
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in content)
    whole = api.post("/v1/chat/completions", json={**body, "stream": False}).json()
    assert whole["choices"][0]["message"]["content"] == streamed == "Hello to you too,"


def test_stream_without_include_usage_has_no_usage(api: TestClient) -> None:
    chunks = chunks_of(sse_data(api, "/v1/completions", {"prompt": "One, two,", "max_tokens": 3}))
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Hello to you"


def test_n_choices_streamed_and_whole(api: TestClient) -> None:
    body = {"messages": HELLO, "max_tokens": 4, "temperature": 0.9, "n": 2}
    whole = api.post("/v1/chat/completions", json=body).json()
    assert [c["index"] for c in whole["choices"]] == [0, 1]
    assert whole["choices"][0]["message"] == whole["choices"][1]["message"]
    assert whole["usage"]["completion_tokens"] == 8
    chunks = chunks_of(sse_data(api, "/v1/chat/completions", body))
    texts = ["", ""]
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["delta"].get("content", "")
    assert texts == [whole["choices"][0]["message"]["content"]] * 2
    finished = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert sorted(finished) == [0, 1]


def test_seeded_choices_each_get_their_own_seed(api: TestClient, engine: ScriptedEngine) -> None:
    api.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "temperature": 1.0, "seed": 7, "n": 3})
    assert [r.params.seed for r in engine.submitted] == [7, 8, 9]
    assert [r.request_id.rsplit(".", 1)[-1] for r in engine.submitted[1:]] == ["1", "2"]


def test_completions_prompt_list_and_echo(api: TestClient) -> None:
    body = {"prompt": ["Once upon a time", "The sky is"], "max_tokens": 2, "echo": True}
    data = api.post("/v1/completions", json=body).json()
    assert data["id"].startswith("cmpl-") and data["object"] == "text_completion"
    assert [c["text"] for c in data["choices"]] == ["Once upon a timeHello to", "The sky isHello to"]
    assert [c["index"] for c in data["choices"]] == [0, 1]
    chunks = chunks_of(sse_data(api, "/v1/completions", body))
    texts = ["", ""]
    for chunk in chunks:
        texts[chunk["choices"][0]["index"]] += chunk["choices"][0]["text"]
    assert texts == [c["text"] for c in data["choices"]]


def test_content_parts_equal_plain_content(api: TestClient, engine: ScriptedEngine) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello."}]}]
    api.post("/v1/chat/completions", json={"messages": parts, "max_tokens": 2})
    api.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Say\nhello."}], "max_tokens": 2})
    assert decode_prompt(engine.submitted[0]) == decode_prompt(engine.submitted[1])


def test_developer_role_is_a_system_message(api: TestClient, engine: ScriptedEngine) -> None:
    messages = [{"role": "developer", "content": "Be brief."}, *HELLO]
    assert api.post("/v1/chat/completions", json={"messages": messages}).status_code == 200
    assert decode_prompt(engine.submitted[-1]).startswith("<|system|>Be brief.\n<|user|>Say hello.")


def test_unknown_fields_are_ignored(api: TestClient) -> None:
    body = {
        "messages": [{"role": "user", "content": "Hi", "name": "bob"}],
        "max_completion_tokens": 3,
        "max_tokens": 5,
        "presence_penalty": 0,
        "logit_bias": {},
        "response_format": {"type": "text"},
        "something_new": 1,
    }
    response = api.post("/v1/chat/completions", json=body)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 3


def test_vllm_sampling_extras_reach_the_engine(api: TestClient, engine: ScriptedEngine) -> None:
    body = {"prompt": "Hello", "max_tokens": 3, "top_k": -1, "repetition_penalty": 1.2, "min_tokens": 2,
            "ignore_eos": True, "seed": 3, "stop": ["x", "y"]}  # fmt: skip
    assert api.post("/v1/completions", json=body).status_code == 200
    params = engine.submitted[-1].params
    assert (params.top_k, params.repetition_penalty, params.min_tokens, params.ignore_eos, params.seed) == (
        0, 1.2, 2, True, 3,
    )  # fmt: skip
    assert params.stop == ("x", "y")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None),
        ({"messages": HELLO, "temperature": 3}, "temperature"),
        ({"messages": HELLO, "n": 0}, "n"),
        ({"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
    ],
)
def test_schema_errors_are_400_invalid_request_error(api: TestClient, body: dict[str, Any], param: str) -> None:
    response = api.post("/v1/chat/completions", json=body)
    assert_error(response, 400, param=param)
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_schema_errors_count_as_validation_rejections(api: TestClient) -> None:
    api.post("/v1/chat/completions", json={"messages": []})
    assert metric_value(api, "llm_requests_rejected_total", reason="validation") == 1


def test_completion_schema_error_and_oversized_prompt(api: TestClient) -> None:
    assert_error(api.post("/v1/completions", json={"prompt": ""}), 400, param="prompt")
    huge = "word " * 7000
    assert_error(api.post("/v1/completions", json={"prompt": huge, "stream": True}), 413, code="prompt_too_long")
    messages = [{"role": "user", "content": huge}]
    assert_error(api.post("/v1/chat/completions", json={"messages": messages}), 413, code="prompt_too_long")


def test_models_list_and_retrieve(api: TestClient) -> None:
    listed = api.get("/v1/models").json()
    assert listed["object"] == "list"
    [card] = listed["data"]
    assert card["id"] == SERVED and card["object"] == "model" and card["owned_by"]
    assert api.get(f"/v1/models/{SERVED}").json() == card
    assert_error(api.get("/v1/models/gpt-4"), 404, code="model_not_found", param="model")
    assert api.get("/health").json()["model_name"] == SERVED


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_failure_mid_stream_is_an_error_object_then_done(api: TestClient, engine: ScriptedEngine, path: str) -> None:
    engine.fail_after_tokens, engine.mid_stream_error = 3, GenerationTimeout("generation took too long")
    body = {"messages": HELLO} if path == "/v1/chat/completions" else {"prompt": "Hi"}
    data = sse_data(api, path, body)
    assert data[-1] == "[DONE]"
    error = json.loads(data[-2])["error"]
    assert error["code"] == "generation_timeout" and error["type"] == "timeout_error" and error["request_id"]
    chunks = [json.loads(item) for item in data[:-2]]
    assert not any(c["choices"][0]["finish_reason"] for c in chunks)


@pytest.mark.parametrize("stream", [False, True])
def test_admission_error_is_plain_json_even_when_streamed(
    api: TestClient, engine: ScriptedEngine, stream: bool
) -> None:
    engine.fail_on_submit = EngineOverloaded("too many requests are waiting; retry shortly")
    response = api.post("/v1/chat/completions", json={"messages": HELLO, "stream": stream})
    assert_error(response, 503, code="overloaded")
    assert response.headers["retry-after"] == "1"


def test_a_choice_not_admitted_closes_those_already_admitted(api: TestClient, engine: ScriptedEngine) -> None:
    """n=2: the first choice is admitted, the second is refused; the first is not left running."""
    real_submit = engine.submit

    def second_refused(request: Any) -> Any:
        if request.request_id.endswith(".1"):
            raise EngineOverloaded("full")
        return real_submit(request)

    engine.submit = second_refused  # type: ignore[method-assign]
    body = {"messages": HELLO, "n": 2, "temperature": 0.9}
    assert_error(api.post("/v1/chat/completions", json=body), 503, code="overloaded")
    [admitted] = engine.submitted
    assert engine.aborted == [admitted.request_id] and engine.running == 0
    assert metric_value(api, "llm_requests_rejected_total", reason="overloaded") == 1


def test_a_client_that_leaves_a_streamed_n2_request_aborts_both(api: TestClient, engine: ScriptedEngine) -> None:
    engine.gate, engine.gate_after_tokens = asyncio.Event(), 2  # both generations are held mid-answer
    # sampled, so the two choices are two generations (identical greedy choices share one)
    body = {"prompt": "Write an essay.", "temperature": 0.9, "n": 2, "stream": True}
    with api.stream("POST", "/v1/completions", json=body) as response:
        for line in response.iter_lines():
            if '"text":"' in line and '"text":""' not in line:
                break  # the first text arrived: the generations are running
    assert sorted(engine.aborted) == sorted(r.request_id for r in engine.submitted) and len(engine.aborted) == 2
    assert metric_value(api, "llm_requests_rejected_total", reason="cancelled") == 2
