"""Two live replicas on the real model sharing one Redis: a client's burst is granted once, whichever
replica each request reaches."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import start_replicas
from tests.redis_server import RedisServer

BURST = 6
CLIENT = {"X-Forwarded-For": "198.51.100.61"}
"""This test's own client address (the replicas trust X-Forwarded-For, as behind a balancer)."""


def test_a_burst_split_over_two_replicas_is_granted_once(model_dir: Path, redis_server: RedisServer) -> None:
    rate_limit = {"requests_per_minute": 1, "burst_size": BURST, "trust_forwarded_for": True}
    replicas = start_replicas(model_dir, redis_server.settings(), rate_limit=rate_limit)
    try:
        clients = [replica.client() for replica in replicas]
        statuses = [clients[n % 2].get("/v1/models", headers=CLIENT).status_code for n in range(2 * BURST)]
        for client in clients:
            client.close()
    finally:
        for replica in replicas:
            replica.stop()
    assert statuses.count(200) == BURST and statuses.count(429) == BURST
