from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import fakeredis
import pytest
import redis

from resizer.config import Settings
from resizer.embedded import RedisServer
from resizer.store import Store, client_for


@pytest.fixture
def settings() -> Settings:
    return Settings(lease_seconds=30, max_attempts=3, ttl_seconds=3600)


@pytest.fixture
async def fake_store(settings: Settings) -> AsyncIterator[Store]:
    """A Store on fakeredis: for fast unit tests of every store operation."""
    store = Store(fakeredis.FakeAsyncRedis(), settings)
    yield store
    await store.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real Redis server process for the whole run: its own port, its own temp dir."""
    server = RedisServer(directory=tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The real server, emptied before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def real_settings(redis_url: str, settings: Settings) -> Settings:
    return Settings(
        redis_url=redis_url,
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
        ttl_seconds=settings.ttl_seconds,
    )


@pytest.fixture
async def real_store(real_settings: Settings) -> AsyncIterator[Store]:
    store = Store(client_for(real_settings.redis_url), real_settings)
    yield store
    await store.close()
