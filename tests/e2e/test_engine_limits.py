"""Queue bound, request deadline and keep-alives, each on a server configured for it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.conftest import LiveServer, assert_error, iter_sse, make_settings, poll

LONG = {"prompt": "Write a long essay about mountains.", "max_tokens": 1000, "temperature": 0}


@pytest.fixture(scope="module")
def tight_queue(model_dir: Path) -> Iterator[LiveServer]:
    # no cache: identical requests would share one generation instead of queueing
    settings = make_settings(model_dir, engine={"max_queue": 1, "max_batch_size": 1}, cache={"enabled": False})
    live = LiveServer(settings).start().wait_healthy()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def short_deadline(model_dir: Path) -> Iterator[LiveServer]:
    settings = make_settings(model_dir, engine={"request_timeout_s": 1.0, "sse_ping_s": 0.1})
    live = LiveServer(settings).start().wait_healthy()
    yield live
    live.stop()


def test_full_queue_answers_503_at_once_and_recovers(tight_queue: LiveServer) -> None:
    with tight_queue.client() as client, ExitStack() as streams:
        running = streams.enter_context(client.stream("POST", "/v1/generate", json={**LONG, "stream": True}))
        events = iter_sse(running)  # held: a dropped SSE iterator closes the connection, an abort
        next(event for event, _ in events if event == "token")  # first request is generating
        queued = streams.enter_context(client.stream("POST", "/v1/generate", json={**LONG, "stream": True}))
        assert queued.status_code == 200  # admitted: waits in the queue

        for stream in (False, True):
            response = client.post("/v1/generate", json={**LONG, "stream": stream})
            assert_error(response, 503, code="overloaded")
            assert int(response.headers["retry-after"]) > 0
        state = client.get("/status").json()["queue"]
        assert (state["queued"], state["running"], state["max_queue"]) == (1, 1, 1)
    with tight_queue.client() as client:
        assert poll(lambda: client.get("/status").json()["queue"]["running"] == 0)
        assert client.post("/v1/generate", json={**LONG, "max_tokens": 2}).status_code == 200


def test_generation_past_the_deadline_is_504(short_deadline: LiveServer) -> None:
    with short_deadline.client() as client:
        assert_error(client.post("/v1/generate", json=LONG), 504, code="generation_timeout")
        assert client.get("/health").status_code == 200


def test_deadline_after_streaming_began_is_an_error_event(short_deadline: LiveServer) -> None:
    with short_deadline.client() as client, client.stream("POST", "/v1/generate", json={**LONG, "stream": True}) as r:
        all_events = list(iter_sse(r))
    assert "comment" in [event for event, _ in all_events]  # keep-alives flowed (a ping every 0.1 s)
    events = [(event, data) for event, data in all_events if event != "comment"]  # a ping may follow the end
    names = [event for event, _ in events]
    assert "token" in names and names[-1] == "error" and "done" not in names
    assert json.loads(events[-1][1])["error"]["code"] == "generation_timeout"


def test_short_generation_within_the_deadline_is_fine(short_deadline: LiveServer) -> None:
    with short_deadline.client() as client:
        response = client.post("/v1/generate", json={**LONG, "max_tokens": 2})
        assert response.status_code == 200
        assert isinstance(response.json()["generated_text"], str)
