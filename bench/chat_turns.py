"""Time to first token turn by turn in a long chat, with the engine's prefix cache on and off.

Two servers on the embedded model: the configured one (`engine.prefix_cache_mb` as set,
256 by default) and the same with `engine.prefix_cache_mb=0`. One chat session on each
runs `--turns` streamed /v1/chat turns: a user message of about 90 tokens and a greedy
answer of up to `--tokens`, so the history grows by about 150 tokens a turn. Each turn is
sent to one server, then at once to the other, so both see the same machine load; the
whole chat is repeated `--rounds` times on new sessions and each turn's medians are
printed: TTFT with the cache and without, the prompt's tokens, and turn N's TTFT over
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

from bench.run import Server, load

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
    "I am writing notes for a class of curious twelve-year-olds, so please keep the words simple, "
    "use one concrete example they can picture, avoid lists, and finish with a question they could "
    "discuss together afterwards. Earlier parts of our conversation may help you stay consistent."
)


@dataclass
class Turn:
    ttft_s: float
    prompt_tokens: int
    completion_tokens: int


def user_message(turn: int) -> str:
    return f"Part {turn + 1}: explain {TOPICS[turn % len(TOPICS)]}. {DETAIL}"


async def one_turn(client: httpx.AsyncClient, session_id: str, turn: int, tokens: int) -> Turn:
    body = {
        "messages": [{"role": "user", "content": user_message(turn)}],
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
            raise SystemExit(f"turn {turn + 1}: HTTP {response.status_code}")
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "token" and ttft == 0.0:
                ttft = time.perf_counter() - started
            elif line.startswith("data:") and event == "error":
                raise SystemExit(f"turn {turn + 1}: {line}")
            elif line.startswith("data:") and event == "done":
                usage = json.loads(line.split(":", 1)[1])["usage"]
                return Turn(ttft, usage["prompt_tokens"], usage["completion_tokens"])
    raise SystemExit(f"turn {turn + 1}: the stream ended without its done event")


async def chat_on_both(cached: Server, uncached: Server, turns: int, tokens: int) -> tuple[list[Turn], list[Turn]]:
    """One chat on each server, turn by turn alternating between them."""
    on: list[Turn] = []
    off: list[Turn] = []
    sessions = {cached.label: f"bench-{uuid.uuid4().hex}", uncached.label: f"bench-{uuid.uuid4().hex}"}
    async with (
        httpx.AsyncClient(base_url=cached.url, timeout=900) as with_cache,
        httpx.AsyncClient(base_url=uncached.url, timeout=900) as without,
    ):
        for turn in range(turns):
            on.append(await one_turn(with_cache, sessions[cached.label], turn, tokens))
            off.append(await one_turn(without, sessions[uncached.label], turn, tokens))
    return on, off


def report(rounds: list[tuple[list[Turn], list[Turn]]], turns: int) -> None:
    print(f"{'turn':>4} {'prompt':>7} {'answer':>7} {'ttft on':>8} {'ttft off':>9} {'on/turn1':>9} {'off/turn1':>10}")
    on_first = statistics.median(on[0].ttft_s for on, _ in rounds)
    off_first = statistics.median(off[0].ttft_s for _, off in rounds)
    for turn in range(turns):
        on_s = statistics.median(on[turn].ttft_s for on, _ in rounds)
        off_s = statistics.median(off[turn].ttft_s for _, off in rounds)
        prompt = statistics.median(on[turn].prompt_tokens for on, _ in rounds)
        answer = statistics.median(on[turn].completion_tokens for on, _ in rounds)
        print(
            f"{turn + 1:>4} {prompt:>7.0f} {answer:>7.0f} {on_s:>8.3f} {off_s:>9.3f} "
            f"{on_s / on_first:>8.2f}x {off_s / off_first:>9.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=int, default=10, help="chat turns per session")
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens of each answer (greedy)")
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
        asyncio.run(chat_on_both(cached, uncached, 2, 8))  # first-call costs out of the figures
        rounds = [asyncio.run(chat_on_both(cached, uncached, args.turns, args.tokens)) for _ in range(args.rounds)]
        print(f"load average at end: {load()}")
        print(f"{args.rounds} chats of {args.turns} turns per server, answers up to {args.tokens} tokens, greedy")
        report(rounds, args.turns)
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    main()
