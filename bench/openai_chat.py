"""One streamed OpenAI `/v1/chat/completions` request, timed: the load any OpenAI-compatible server takes.

The answer's length is forced (`ignore_eos`, which this project and llama.cpp's server both
accept, with `max_tokens`), so every server does the same work whatever it would have said;
the token count comes from the usage chunk (`stream_options.include_usage`), since a text
delta may carry more or less than one token.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.harness import RequestResult


def chat_body(prompt: str, tokens: int, model: str) -> dict[str, Any]:
    """Greedy, streamed, exactly `tokens` output tokens."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@dataclass(frozen=True)
class Chunk:
    """What one `data:` line of the stream says to the bench."""

    text: bool = False
    """It carries answer text (the first such chunk is the first token)."""
    completion_tokens: int | None = None
    done: bool = False
    error: str | None = None


def read_chunk(data: str) -> Chunk:
    if data == "[DONE]":
        return Chunk(done=True)
    chunk = json.loads(data)
    if "error" in chunk:
        return Chunk(error=str(chunk["error"]))
    text = any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or [])
    usage = chunk.get("usage") or {}
    return Chunk(text=text, completion_tokens=usage.get("completion_tokens"))


async def stream_chat(client: httpx.AsyncClient, body: dict[str, Any]) -> RequestResult:
    result = RequestResult()
    started = last = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                chunk = read_chunk(line.removeprefix("data:").strip())
                if chunk.text:
                    now = time.perf_counter()
                    if result.ttft_s == 0.0:
                        result.ttft_s = now - started
                    else:
                        result.gaps_s.append(now - last)
                    last = now
                if chunk.completion_tokens is not None:
                    result.tokens = chunk.completion_tokens
                result.error = chunk.error or result.error
                if chunk.done:
                    break
    except httpx.HTTPError as exc:
        result.error = type(exc).__name__
    result.e2e_s = time.perf_counter() - started
    return result
