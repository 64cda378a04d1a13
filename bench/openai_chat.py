"""One streamed OpenAI `/v1/chat/completions` request, timed: the load any OpenAI-compatible server takes.

The answer's length is forced (`ignore_eos`, which this project and llama.cpp's server both
accept, with `max_tokens`), so every server does the same work whatever it would have said;
the token count comes from the usage chunk (`stream_options.include_usage`), since a text
delta may carry more or less than one token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from bench.harness import RequestResult, timed_stream


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


def read_line(result: RequestResult, line: str, elapsed_s: float) -> bool:
    if not line.startswith("data:"):
        return False  # keep-alive comments, blank separators
    chunk = read_chunk(line.removeprefix("data:").strip())
    if chunk.text:
        result.output_at(elapsed_s)
    if chunk.completion_tokens is not None:
        result.tokens = chunk.completion_tokens
    result.error = chunk.error or result.error
    return chunk.done


async def stream_chat(client: httpx.AsyncClient, body: dict[str, Any]) -> RequestResult:
    return await timed_stream(client, "/v1/chat/completions", body, read_line)
