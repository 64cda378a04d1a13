"""Concurrent streamed clients over HTTP share the batch; killing some leaves the rest flowing."""

from __future__ import annotations

import json
from contextlib import ExitStack

import httpx

from tests.conftest import LiveServer, iter_sse, poll

BODY = {"prompt": "Tell me about the sea.", "max_tokens": 40, "temperature": 0, "stream": True}


def queue(client: httpx.Client) -> dict[str, int]:
    state: dict[str, int] = client.get("/status").json()["queue"]
    return state


def test_streams_run_together_and_killing_half_leaves_the_rest_flowing(server: LiveServer) -> None:
    with server.client() as client, ExitStack() as stack:
        cancelled_before = queue(client)["cancelled"]
        # greedy all, but each its own seed and so its own cache key: four generations, not one shared
        bodies = [{**BODY, "seed": seed} for seed in range(4)]
        responses = [stack.enter_context(client.stream("POST", "/v1/generate", json=body)) for body in bodies]
        streams = [iter_sse(response) for response in responses]
        for stream in streams:
            assert next(event for event, _ in stream if event == "token") == "token"
        state = queue(client)
        assert (state["running"], state["queued"]) == (4, 0)  # all four decode together, none waits

        for response in responses[:2]:
            response.close()
        survivors = [[(event, data) for event, data in stream if event != "comment"] for stream in streams[2:]]
        for events in survivors:
            names = [event for event, _ in events]
            assert names[-1] == "done" and names.count("token") >= 5
            assert json.loads(events[-1][1])["tokens_generated"] == BODY["max_tokens"]
        texts = [[data for event, data in events if event == "token"] for events in survivors]
        assert texts[0] == texts[1]  # the same greedy request streams the same pieces, batch or not

    def both_cut() -> bool:
        state = queue(client)
        return state["running"] == 0 and state["cancelled"] == cancelled_before + 2

    with server.client() as client:
        assert poll(both_cut), "the closed streams were not aborted"
        assert client.get("/health").status_code == 200
