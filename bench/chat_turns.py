"""Time to first token turn by turn in a long chat, with the engine's prefix cache on and off.

Two servers on the embedded model: the configured one (`engine.prefix_cache_mb` as set,
256 by default) and the same with `engine.prefix_cache_mb=0`. One chat session on each
runs `--turns` streamed /v1/chat turns: a user message of about 70 tokens and a greedy
answer of up to `--tokens` (80), so the history grows by about 150 tokens a turn. Each
turn is sent to one server, then at once to the other, so both see the same machine load;
the whole chat is repeated `--rounds` times on new sessions (each on its own topics) and
each turn's medians are printed: the prompt's tokens, how many of them the cache supplied
and how many were fed (prefilled), TTFT with the cache and without, and turn N's TTFT over
turn 1's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import Server, load

TOPICS = [
    "the water cycle",
    "how bridges carry loads",
    "why the sky is blue",
    "the history of the printing press",
    "how vaccines train the immune system",
    "what makes a good cup of tea",
    "how trains stay on their rails",
    "the life of a honey bee",
    "how a compiler turns code into a program",
    "the tides and the moon",
    "how glaciers shape valleys",
    "the rules of chess openings",
]
DETAIL = (
    "I am writing notes for a class of curious twelve-year-olds, so please keep the words simple, use one "
    "concrete example they can picture, and mention where the idea shows up in everyday life at home or at "
    "school. Keep the answer under one hundred words."
)


@dataclass
class Turn:
    ttft_s: float
    prompt_tokens: int
    completion_tokens: int
    reused_tokens: int = 0
    """Prompt tokens whose KV came from the prefix cache (from the server's metrics)."""


def user_message(turn: int, first_topic: int) -> str:
    return f"Next topic: {TOPICS[(first_topic + turn) % len(TOPICS)]}. Explain it in a short paragraph. {DETAIL}"


async def one_turn(client: httpx.AsyncClient, session_id: str, message: str, tokens: int) -> Turn:
    body = {
        "messages": [{"role": "user", "content": message}],
        "session_id": session_id,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    started = time.perf_counter()
    ttft = 0.0
    event = ""
    async with client.stream("POST", "/v1/chat", json=body) as response:
        if response.status_code != 200:
            raise SystemExit(f"HTTP {response.status_code}: {message}")
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "token" and ttft == 0.0:
                ttft = time.perf_counter() - started
            elif line.startswith("data:") and event == "error":
                raise SystemExit(line)
            elif line.startswith("data:") and event == "done":
                usage = json.loads(line.split(":", 1)[1])["usage"]
                return Turn(ttft, usage["prompt_tokens"], usage["completion_tokens"])
    raise SystemExit("a stream ended without its done event")


async def reused_so_far(client: httpx.AsyncClient) -> int:
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "llm_prefix_cache_hit_tokens_total":
                return int(sample.value)
    return 0


async def measured_turn(client: httpx.AsyncClient, session_id: str, message: str, tokens: int) -> Turn:
    before = await reused_so_far(client)
    result = await one_turn(client, session_id, message, tokens)
    result.reused_tokens = await reused_so_far(client) - before
    return result


async def chat_on_both(
    cached: Server, uncached: Server, turns: int, tokens: int, first_topic: int
) -> tuple[list[Turn], list[Turn]]:
    """One chat on each server, turn by turn alternating between them. Each chat starts on its
    own topic: a chat repeated word for word would find its every prompt cached already."""
    on: list[Turn] = []
    off: list[Turn] = []
    sessions = {cached.label: f"bench-{uuid.uuid4().hex}", uncached.label: f"bench-{uuid.uuid4().hex}"}
    async with (
        httpx.AsyncClient(base_url=cached.url, timeout=900) as with_cache,
        httpx.AsyncClient(base_url=uncached.url, timeout=900) as without,
    ):
        for turn in range(turns):
            message = user_message(turn, first_topic)
            on.append(await measured_turn(with_cache, sessions[cached.label], message, tokens))
            off.append(await measured_turn(without, sessions[uncached.label], message, tokens))
    return on, off


def report(rounds: list[tuple[list[Turn], list[Turn]]], turns: int) -> None:
    print(
        f"{'turn':>4} {'prompt':>7} {'reused':>7} {'fed':>5} {'answer':>7} "
        f"{'ttft on':>8} {'ttft off':>9} {'on/turn1':>9} {'off/turn1':>10}"
    )
    on_first = statistics.median(on[0].ttft_s for on, _ in rounds)
    off_first = statistics.median(off[0].ttft_s for _, off in rounds)
    for turn in range(turns):
        on_s = statistics.median(on[turn].ttft_s for on, _ in rounds)
        off_s = statistics.median(off[turn].ttft_s for _, off in rounds)
        prompt = statistics.median(on[turn].prompt_tokens for on, _ in rounds)
        answer = statistics.median(on[turn].completion_tokens for on, _ in rounds)
        reused = statistics.median(on[turn].reused_tokens for on, _ in rounds)
        print(
            f"{turn + 1:>4} {prompt:>7.0f} {reused:>7.0f} {prompt - reused:>5.0f} {answer:>7.0f} "
            f"{on_s:>8.3f} {off_s:>9.3f} "
            f"{on_s / on_first:>8.2f}x {off_s / off_first:>9.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=int, default=10, help="chat turns per session")
    parser.add_argument("--tokens", type=int, default=80, help="max_tokens of each answer (greedy)")
    parser.add_argument("--rounds", type=int, default=3, help="chats per server; medians per turn are printed")
    parser.add_argument("--dtype", default="auto", help="MODEL__DTYPE of both servers (auto = float32 on CPU)")
    args = parser.parse_args()
    common = {"MODEL__DTYPE": args.dtype}  # bench.run's server environment: no response cache, no rate limit
    servers = [Server.start("cache-on", common), Server.start("cache-off", {**common, "ENGINE__PREFIX_CACHE_MB": "0"})]
    try:
        for server in servers:
            server.wait_healthy()
        cached, uncached = servers
        print(f"load average at start: {load()}")
        asyncio.run(chat_on_both(cached, uncached, 2, 8, len(TOPICS) - 1))  # first-call costs out of the figures
        rounds = [
            asyncio.run(chat_on_both(cached, uncached, args.turns, args.tokens, first_topic=5 * index % len(TOPICS)))
            for index in range(args.rounds)
        ]
        print(f"load average at end: {load()}")
        print(f"{args.rounds} chats of {args.turns} turns per server, answers up to {args.tokens} tokens, greedy")
        report(rounds, args.turns)
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    main()
