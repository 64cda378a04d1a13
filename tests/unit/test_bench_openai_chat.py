"""bench.openai_chat and bench.harness's closed loop, over scripted transports; no server."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from bench.harness import RequestResult, closed_loop, percentile
from bench.openai_chat import Chunk, chat_body, read_chunk, stream_chat

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _data(payload: object) -> str:
    return f"data: {json.dumps(payload)}\n\n"


STREAM = "".join(
    [
        _data({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        _data({"choices": [{"index": 0, "delta": {"content": "Once"}}]}),
        ": ping\n\n",
        _data({"choices": [{"index": 0, "delta": {"content": " upon"}}]}),
        _data({"choices": [{"index": 0, "delta": {"content": " a time"}, "finish_reason": "length"}]}),
        _data({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}),
        "data: [DONE]\n\n",
    ]
)


def test_body_forces_the_answers_length_greedily() -> None:
    body = chat_body("hi", 64, "m")
    assert (body["max_tokens"], body["ignore_eos"], body["temperature"], body["stream"]) == (64, True, 0, True)
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "hi"}]


def test_chunks_tell_text_usage_end_and_errors_apart() -> None:
    assert read_chunk(json.dumps({"choices": [{"delta": {"role": "assistant"}}]})) == Chunk()
    assert read_chunk(json.dumps({"choices": [{"delta": {"content": "x"}}]})) == Chunk(text=True)
    assert read_chunk(json.dumps({"choices": [], "usage": {"completion_tokens": 7}})) == Chunk(completion_tokens=7)
    assert read_chunk("[DONE]") == Chunk(done=True)
    assert read_chunk(json.dumps({"error": {"message": "boom"}})).error == "{'message': 'boom'}"


async def test_stream_is_timed_from_the_first_text_and_counted_by_usage() -> None:
    seen: list[dict[str, object]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, text=STREAM, headers={"content-type": "text/event-stream"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://peer") as client:
        result = await stream_chat(client, chat_body("hi", 4, "m"))
    assert result.error is None
    assert result.tokens == 4
    assert len(result.gaps_s) == 2  # three text chunks: the first token, then two gaps
    assert 0 < result.ttft_s <= result.e2e_s
    assert seen[0]["ignore_eos"] is True


async def test_a_refused_request_is_an_error() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(503, text="loading"))
    async with httpx.AsyncClient(transport=transport, base_url="http://peer") as client:
        result = await stream_chat(client, chat_body("hi", 4, "m"))
    assert (result.error, result.tokens) == ("HTTP 503", 0)


async def test_closed_loop_keeps_exactly_one_request_in_flight_per_client() -> None:
    in_flight = 0
    most = 0

    async def send(client: httpx.AsyncClient) -> RequestResult:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1
        return RequestResult(tokens=1)

    wall, results = await closed_loop("http://unused", concurrency=3, requests=4, send=send)
    assert len(results) == 12
    assert most == 3
    assert wall >= 0


def test_percentile_is_a_value_some_request_had() -> None:
    assert percentile([0.3, 0.1, 0.2, 0.4], 50) in {0.2, 0.3}
    assert percentile([0.3, 0.1, 0.2], 50) == 0.2
    assert percentile([5.0, 1.0], 95) == 5.0
    assert percentile([], 50) != percentile([], 50)  # NaN
