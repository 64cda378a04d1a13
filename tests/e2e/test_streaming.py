"""SSE on the native endpoints: token/done/error events, keep-alives, disconnects."""

from __future__ import annotations

import json
import uuid

import httpx

from tests.conftest import LiveServer, iter_sse, poll


def stream_events(client: httpx.Client, path: str, body: dict[str, object]) -> list[tuple[str, str]]:
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [(event, data) for event, data in iter_sse(response) if event != "comment"]


def queue(client: httpx.Client) -> dict[str, int]:
    state: dict[str, int] = client.get("/status").json()["queue"]
    return state


def running(client: httpx.Client) -> int:
    return queue(client)["running"]


def stopped_by_disconnect(client: httpx.Client, cancelled_before: int) -> bool:
    state = queue(client)
    return state["running"] == 0 and state["cancelled"] == cancelled_before + 1


def test_generate_streams_token_by_token_then_done(client: httpx.Client) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 10, "temperature": 0}
    events = stream_events(client, "/v1/generate", body)
    names = [event for event, _ in events]
    assert names[-1] == "done" and names.count("done") == 1
    assert set(names[:-1]) == {"token"} and len(names) >= 4
    streamed = "".join(json.loads(data)["text"] for event, data in events if event == "token")
    done = json.loads(events[-1][1])
    assert done["generated_text"] == streamed
    assert done["tokens_generated"] == 10
    plain = client.post("/v1/generate", json=body).json()
    assert plain["generated_text"] == streamed


def test_streamed_stop_is_never_sent(client: httpx.Client) -> None:
    full = client.post("/v1/generate", json={"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0}).json()
    stop = full["generated_text"].split()[3]
    body = {"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0, "stop": stop}
    events = stream_events(client, "/v1/generate", body)
    streamed = "".join(json.loads(data)["text"] for event, data in events if event == "token")
    assert stop not in streamed
    assert json.loads(events[-1][1])["finish_reason"] == "stop"


COUNTING = "Count from 1 to 1000, separated by commas."
"""Greedy, after a greedy "Hello" turn, the model counts on ("1, 2, 3, …") for well over 1000 tokens.

Not "Tell me a long story.": after a *sampled* first turn, its greedy answer was often 13-60 tokens,
finished before the client's three token events and its /status call (running 0, nothing to abort).
"""


def test_disconnect_mid_stream_keeps_history_and_frees_the_engine(client: httpx.Client) -> None:
    assert poll(lambda: queue(client)["running"] == 0 and queue(client)["queued"] == 0)  # earlier runs ended
    session_id = f"cut-{uuid.uuid4().hex}"
    hello = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0}
    assert client.post("/v1/chat", json={**hello, "session_id": session_id}).status_code == 200
    before = client.get(f"/v1/chat/sessions/{session_id}").json()["messages"]

    body = {"messages": [{"role": "user", "content": COUNTING}], "max_tokens": 1000, "temperature": 0,
            "session_id": session_id, "stream": True}  # fmt: skip
    cancelled_before = queue(client)["cancelled"]
    with client.stream("POST", "/v1/chat", json=body) as response:
        assert response.headers["x-cache"] == "MISS"  # the model's own generation, not a replay or a shared one
        events = iter_sse(response)  # held: a dropped SSE iterator closes the connection, an abort
        tokens = 0
        for event, data in events:
            assert event in ("token", "comment"), (event, data)  # not done: the answer is far from its end
            tokens += event == "token"
            if tokens == 3:
                break
        assert running(client) == 1  # /status answers while the generation runs
    assert poll(lambda: stopped_by_disconnect(client, cancelled_before)), "the generation was not aborted"
    assert client.get(f"/v1/chat/sessions/{session_id}").json()["messages"] == before
    assert client.get("/health").status_code == 200
    again = {**body, "max_tokens": 3, "stream": False}
    assert client.post("/v1/chat", json=again).status_code == 200


def test_non_streamed_client_that_leaves_stops_its_generation(server: LiveServer, client: httpx.Client) -> None:
    body = {"prompt": "Write a long essay about rivers.", "max_tokens": 1000, "temperature": 0}
    cancelled_before = queue(client)["cancelled"]
    with server.client(timeout_s=1.5) as impatient:
        try:
            impatient.post("/v1/generate", json=body)
        except httpx.ReadTimeout:
            pass
        else:
            raise AssertionError("a 1000-token generation answered within the client's timeout")
    assert poll(lambda: stopped_by_disconnect(client, cancelled_before)), "the generation was not aborted"


def test_health_answers_while_a_generation_runs(client: httpx.Client) -> None:
    body = {"prompt": "Count slowly:", "max_tokens": 1000, "temperature": 0, "stream": True}
    with client.stream("POST", "/v1/generate", json=body) as response:
        events = iter_sse(response)  # held: a dropped SSE iterator closes the connection, an abort
        first = next(event for event, _ in events if event == "token")
        assert first == "token"
        for _ in range(5):
            assert client.get("/health").status_code == 200
        assert running(client) == 1  # still generating: the event loop was not blocked by it
