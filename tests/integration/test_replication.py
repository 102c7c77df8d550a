"""RESIZER_MIN_REPLICAS and RESIZER_ORIGINAL_TTL_SECONDS against real Redis processes."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient

from resizer import header
from resizer.api import make_app
from resizer.config import Settings
from resizer.embedded import RedisServer
from resizer.models import TaskStatus, Upload
from resizer.store import Store, client_for
from resizer.store.keys import task_key
from resizer.worker import Worker
from tests.conftest import Topology
from tests.helpers import await_until, make_image
from tests.integration.test_api import run_worker_until_idle
from tests.topologies import LocalCluster, LocalSentinel, wait_for

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]
ClientFactory = Callable[[web.Application], Awaitable[Client]]


def replicas(request: pytest.FixtureRequest, topology: Topology) -> list[RedisServer]:
    if topology.name in ("cluster", "cluster7"):
        cluster: LocalCluster = request.getfixturevalue(f"redis_{topology.name}")
        return [cluster.replica_of(p) for p in cluster.live_primaries()]
    sentinel: LocalSentinel = request.getfixturevalue("redis_sentinel")
    primary = sentinel.current_primary()
    return [s for s in sentinel.servers if s is not primary]


@contextmanager
def stopped(servers: list[RedisServer]) -> Iterator[None]:
    """The servers SIGSTOPped: alive to the kernel and to their peers' TCP, silent to all."""
    pids = [s.proc.pid for s in servers if s.proc is not None]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def on_replica(server: RedisServer, key: str) -> bool:
    """Whether ``key`` exists on that replica (read there, not redirected to its primary)."""
    with redis.Redis(port=server.port, socket_timeout=5) as node:
        if node.info("cluster").get("cluster_enabled"):
            node.execute_command("READONLY")
        try:
            return bool(node.exists(key))
        except redis.exceptions.MovedError:
            return False  # a replica of another primary: not its slot


async def settle(request: pytest.FixtureRequest, topology: Topology) -> None:
    """After replicas were stopped: wait until the cluster sees them in sync again."""
    if topology.name in ("cluster", "cluster7"):
        cluster: LocalCluster = request.getfixturevalue(f"redis_{topology.name}")
        await asyncio.to_thread(wait_for, cluster.healthy, 30, "the cluster to be healthy again")


def body() -> dict[str, str]:
    return {"data": base64.b64encode(make_image("PNG", unique=True)).decode()}


@pytest.mark.topologies("cluster", "sentinel")
async def test_a_task_is_acknowledged_only_once_a_replica_has_it(
    aiohttp_client: ClientFactory,
    real_settings: Settings,
    topology: Topology,
    request: pytest.FixtureRequest,
) -> None:
    settings = attrs.evolve(real_settings, min_replicas=1)
    client = await aiohttp_client(make_app(settings))
    following = replicas(request, topology)

    # Acknowledged: the replica already holds the task when the 201 arrives.
    for _ in range(5):
        response = await client.post("/tasks", json=body())
        assert response.status == 201, await response.text()
        task_id = (await response.json())["id"]
        assert any(on_replica(r, task_key(task_id)) for r in following)

    # No replica answers: 503 (retry is safe), within the WAIT bound plus the request.
    image = body()
    with stopped(following):
        started = asyncio.get_running_loop().time()
        refused = await client.post("/tasks", json=image)
        took = asyncio.get_running_loop().time() - started
        assert refused.status == 503, await refused.text()
        error = (await refused.json())["error"]
        assert error["code"] == "unavailable"
        assert "replicas" in error["message"]
        assert took < 5
    # The same bytes again, the replicas back: accepted (it joins the unconfirmed task, if any).
    again = await client.post("/tasks", json=image)
    assert again.status == 201, await again.text()
    await settle(request, topology)


@pytest.mark.topologies("cluster")
async def test_a_worker_retries_its_completion_until_a_replica_confirms_it(
    real_settings: Settings, topology: Topology, request: pytest.FixtureRequest
) -> None:
    settings = attrs.evolve(real_settings, min_replicas=1, partitions=1)
    store = Store(client_for(settings.redis_url, socket_timeout=11), settings)
    following = replicas(request, topology)
    stop = asyncio.Event()
    try:
        data = make_image("PNG", unique=True)
        task = await store.create_task(Upload.of(header.inspect(data, 10**6), data))
        with stopped(following):
            before = (await store.stats()).counters.get("replica_waits", 0)
            worker = asyncio.create_task(Worker(store, settings).run(stop, max_tasks=1))

            async def refused_twice() -> bool:
                counters = (await store.stats()).counters
                return int(counters.get("replica_waits", 0)) >= before + 2

            # Each attempt writes its marker, then WAIT times out: the worker keeps trying.
            await await_until(refused_twice, 20, "the worker to try its completion twice")
            assert not worker.done(), worker
        await asyncio.wait_for(worker, 20)
        finished = await store.get_task(task.id)
        assert finished is not None
        assert finished.status is TaskStatus.DONE
        assert any(on_replica(r, task_key(task.id)) for r in following)
    finally:
        stop.set()
        await store.close()
    await settle(request, topology)


@pytest.mark.topologies("single", "cluster")
async def test_originals_go_after_their_own_retention_the_thumbnails_stay(
    aiohttp_client: ClientFactory, real_settings: Settings
) -> None:
    settings = attrs.evolve(real_settings, ttl_seconds=60, original_ttl_seconds=1)
    client = await aiohttp_client(make_app(settings))
    image = body()
    response = await client.post("/tasks", json=image)
    task_id = (await response.json())["id"]
    await run_worker_until_idle(settings, 1)
    assert (await client.get(f"/tasks/{task_id}/image?size=original")).status == 200

    async def original_status() -> int:
        return (await client.get(f"/tasks/{task_id}/image?size=original")).status

    async def gone() -> bool:
        return await original_status() == 410

    # Redis expires the original on its own clock, a second after DONE.
    await await_until(gone, 10, "the original to expire")
    for size in ("64", "32"):
        assert (await client.get(f"/tasks/{task_id}/image?size={size}")).status == 200
    assert (await (await client.get(f"/tasks/{task_id}")).json())["status"] == "DONE"
    admin = client_for(settings.redis_url)
    try:
        assert await admin.pttl(task_key(task_id)) > 50_000  # the task keeps the full TTL
    finally:
        await admin.aclose()

    # The same bytes again: DONE at once, with the original stored again, for a second.
    again = await client.post("/tasks", json=image)
    assert (await again.json())["status"] == "DONE"
    second = (await again.json())["id"]
    assert (await client.get(f"/tasks/{second}/image?size=original")).status == 200
    await await_until(gone, 10, "the original to expire again")
