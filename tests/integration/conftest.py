"""Fixtures of the integration tests: the app on a real Redis, and a check that no test leaves a
Redis connection open behind it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient

from resizer.api import make_app
from resizer.config import Settings
from resizer.embedded import RedisServer

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
Client = TestClient[Any, Any]


@pytest.fixture
async def client(aiohttp_client: ClientFactory, real_settings: Settings) -> Client:
    """The app factory's app, served in the test's loop, on the real Redis."""
    return await aiohttp_client(make_app(real_settings))


def _connections(admin: redis.Redis) -> int:
    """Clients connected to the server, the one asking not counted."""
    return len(admin.client_list()) - 1


@pytest.fixture(autouse=True)
def no_leaked_connections(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves Redis connections open: a pool its fixture or code never
    closed. Processes a test started get a few seconds to go."""
    if "redis_url" not in request.fixturenames:
        yield
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    admin = redis.Redis(port=server.port)
    before = _connections(admin)
    yield
    deadline = time.monotonic() + 10
    while (after := _connections(admin)) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    admin.close()
    assert after <= before, f"{after - before} Redis connection(s) left open by the test"
