from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import attrs
import fakeredis
import pytest
import redis

from resizer.config import Settings
from resizer.embedded import RedisServer
from resizer.store import Store, client_for
from tests.topologies import LocalCluster, LocalSentinel, redis7_binary

CLUSTER_PARTITIONS = 16
"""Partitions the tests use on the cluster: spread over its three primaries."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "topologies(*names): run the test against each Redis named: single, cluster, sentinel "
        "(default: single); cluster runs on Redis 6.2 (plain pub/sub) and, where there is a "
        "Redis >= 7, again as cluster7 (sharded pub/sub)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("topologies")
    if marker is not None and "topology" in metafunc.fixturenames:
        names = [
            n for name in marker.args for n in ([name, "cluster7"] if name == "cluster" else [name])
        ]
        metafunc.parametrize("topology", names, indirect=True)


@attrs.frozen
class Topology:
    """The Redis a test runs against, emptied, and the partitions to use on it."""

    name: str
    url: str
    partitions: int = 1


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


def _running_cluster(
    tmp_path_factory: pytest.TempPathFactory, name: str, binary: str | None = None
) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp(name), binary=binary)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real Redis Cluster for the whole run: 3 primaries, a replica each, own ports and dirs."""
    yield from _running_cluster(tmp_path_factory, "cluster")


@pytest.fixture(scope="session")
def redis_cluster7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The same cluster from a Redis >= 7 (sharded pub/sub); skips the test where there is none."""
    binary = redis7_binary()
    if binary is None:
        pytest.skip("no redis-server >= 7 (install Debian's redis-server, or RESIZER_TEST_REDIS7)")
    yield from _running_cluster(tmp_path_factory, "cluster7", binary)


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSentinel]:
    """A primary, its replica and three sentinels, for the whole run."""
    setup = LocalSentinel(tmp_path_factory.mktemp("sentinel"))
    try:
        yield setup.start()
    finally:
        setup.stop()


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> Topology:
    """The Redis of the test (``single`` unless marked ``topologies``), emptied before it."""
    name = getattr(request, "param", "single")
    if name in ("cluster", "cluster7"):
        cluster: LocalCluster = request.getfixturevalue(f"redis_{name}")
        cluster.flush()
        return Topology(name, cluster.url, CLUSTER_PARTITIONS)
    if name == "sentinel":
        sentinel: LocalSentinel = request.getfixturevalue("redis_sentinel")
        sentinel.flush()
        return Topology(name, sentinel.url)
    assert name == "single", name
    server: RedisServer = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url)
    client.flushall()
    client.close()
    return Topology(name, server.url)


@pytest.fixture
def topology_cluster(topology: Topology, request: pytest.FixtureRequest) -> LocalCluster:
    """The cluster of a test marked for cluster topologies."""
    assert topology.name in ("cluster", "cluster7"), topology.name
    cluster: LocalCluster = request.getfixturevalue(f"redis_{topology.name}")
    return cluster


@pytest.fixture
def redis_url(topology: Topology) -> str:
    """The real Redis of the test, emptied before it."""
    return topology.url


@pytest.fixture
def real_settings(redis_url: str, settings: Settings, topology: Topology) -> Settings:
    return Settings(
        redis_url=redis_url,
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
        ttl_seconds=settings.ttl_seconds,
        partitions=topology.partitions,
    )


@pytest.fixture
async def real_store(real_settings: Settings) -> AsyncIterator[Store]:
    store = Store(client_for(real_settings.redis_url), real_settings)
    yield store
    await store.close()
