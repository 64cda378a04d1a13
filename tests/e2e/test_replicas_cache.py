"""Two replicas on the real model sharing one Redis (a real redis-server): the response cache and
single flight hold across them, as behind a load balancer."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, metric_value, start_replicas
from tests.redis_server import RedisServer


@pytest.fixture(scope="module")
def replicas(model_dir: Path, redis_server: RedisServer) -> Iterator[list[LiveServer]]:
    servers = start_replicas(model_dir, redis_server.settings(), rate_limit={"enabled": False})
    yield servers
    for server in servers:
        server.stop()


def generated(servers: list[LiveServer]) -> float:
    """The model's own work over every replica."""
    total = 0.0
    for server in servers:
        with server.client() as client:
            total += metric_value(client, "tokens_generated_total")
    return total


def generate(server: LiveServer, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    with server.client() as client:
        response = client.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return response.headers["x-cache"], answer


def test_an_answer_generated_on_one_replica_is_a_hit_on_the_other(replicas: list[LiveServer]) -> None:
    a, b = replicas
    body = {"prompt": "Name three colours.", "max_tokens": 12, "temperature": 0}
    before = generated(replicas)
    header, first = generate(a, body)
    assert header == "MISS" and first["cached"] is False
    header, second = generate(b, body)
    assert header == "HIT" and second["cached"] is True
    assert second["generated_text"] == first["generated_text"]
    assert generated(replicas) - before == first["tokens_generated"]


def test_identical_requests_over_two_replicas_generate_once(replicas: list[LiveServer]) -> None:
    a, b = replicas
    body = {"prompt": "Write a short line about the sea.", "max_tokens": 24, "temperature": 0}
    before = generated(replicas)
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda server: generate(server, body), [a, b, a, b, a, b]))
    assert sorted(header for header, _ in results) == ["HIT"] * 5 + ["MISS"]
    answers = [answer for _, answer in results]
    assert len({answer["generated_text"] for answer in answers}) == 1
    assert generated(replicas) - before == answers[0]["tokens_generated"]
