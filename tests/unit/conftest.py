"""Fixtures of the unit tests that talk to a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.core.redis_state import RedisState
from tests.redis_server import RedisServer


@pytest.fixture
async def state(redis_server: RedisServer) -> AsyncIterator[RedisState]:
    """The app's connection to the shared redis-server, under a key prefix of its own."""
    connection = redis_server.connect()
    yield connection
    await connection.close()
