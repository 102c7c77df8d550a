"""On a Redis Cluster whose primaries have sharded pub/sub (Redis >= 7), tasks are announced on
shard channels: each message goes to the primary that owns its partition's slot, and each
process listens there. On a Redis 6.2 cluster, plain pub/sub as before. Both run wherever the
suite has a Redis >= 7 (``cluster7``); the 6.2 cluster always."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import attrs
import pytest
from redis.crc import key_slot

from resizer.config import Settings
from resizer.store import Completions, Store, client_for
from resizer.store.core import RESCAN_SECONDS
from resizer.store.keys import partition, partition_of_id
from tests.conftest import Topology
from tests.helpers import await_until
from tests.integration.test_partitions import PARTITIONS, upload_in
from tests.topologies import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.topologies("cluster")]

IMAGES = {64: b"sixty-four", 32: b"thirty-two"}
# Shorter than the idle worker's safety re-scan: a take that returns within it was woken.
WOKEN_WITHIN = RESCAN_SECONDS * 2 / 3


@pytest.fixture
async def store(real_settings: Settings) -> AsyncIterator[Store]:
    store = Store(
        client_for(real_settings.redis_url), attrs.evolve(real_settings, partitions=PARTITIONS)
    )
    await store.recover()  # announces its partitions, as the web does
    yield store
    await store.close()


@pytest.fixture
async def completions(store: Store) -> AsyncIterator[Completions]:
    completions = Completions(store.redis, lambda: store.finished_channels, store.sharded_pubsub)
    await completions.start()
    await asyncio.wait_for(completions.subscribed.wait(), 10)
    yield completions
    await completions.stop()


def calls(cluster: LocalCluster, command: str) -> int:
    """How many times the primaries ran ``command`` (from scripts too)."""
    total = 0
    for server in cluster.live_primaries():
        with cluster.client(server) as node:
            total += int(node.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))
    return total


def shard_subscribers(cluster: LocalCluster, channel: str) -> int:
    owner = cluster.primary_of_slot(key_slot(channel.encode()))
    with cluster.client(owner) as node:
        _, count = node.execute_command("PUBSUB", "SHARDNUMSUB", channel)
    return int(count)


def plain_subscribers(cluster: LocalCluster, channel: str) -> int:
    total = 0
    for server in cluster.live_primaries():
        with cluster.client(server) as node:
            total += dict(node.pubsub_numsub(channel))[channel.encode()]
    return total


async def idle(worker: Store) -> None:
    """Have ``worker`` listen for work, and look into every partition once: after this, only an
    announcement (or the re-scan, RESCAN_SECONDS away) makes it look again."""
    assert await worker.take(timeout=0.1) is None
    assert worker._work is not None
    await asyncio.wait_for(worker._work.subscribed.wait(), 10)
    assert await worker.take(timeout=0.1) is None  # what the subscription's start noted


async def test_the_listeners_subscribe_where_the_messages_go(
    store: Store, completions: Completions, topology: Topology, topology_cluster: LocalCluster
) -> None:
    sharded = topology.name == "cluster7"
    assert await store.sharded_pubsub() is sharded
    for part in store.partitions:
        plain = plain_subscribers(topology_cluster, part.finished)
        if sharded:
            assert (plain, shard_subscribers(topology_cluster, part.finished)) == (0, 1), part
        else:
            assert plain == 1, part


async def test_a_finished_task_wakes_its_waiter_and_queued_work_wakes_an_idle_worker(
    store: Store, completions: Completions, topology: Topology, topology_cluster: LocalCluster
) -> None:
    sharded = await store.sharded_pubsub()
    assert sharded is (topology.name == "cluster7")
    worker = Store(client_for(store.settings.redis_url), store.settings)
    try:
        await idle(worker)
        published = calls(topology_cluster, "publish"), calls(topology_cluster, "spublish")
        for index in (3, 11):  # partitions on two different primaries
            task = await store.create_task(upload_in(index, PARTITIONS, f"wake-{index}"))
            assert partition_of_id(task.id) == index
            assert await worker.take(timeout=WOKEN_WITHIN) == task.id
            claim = await worker.claim(task.id, "test-worker")
            assert claim is not None
            async with completions.watch(task.id) as finished:
                assert await worker.complete(claim, "png", IMAGES) is True
                await asyncio.wait_for(finished, 10)
        plain = calls(topology_cluster, "publish") - published[0]
        shard = calls(topology_cluster, "spublish") - published[1]
    finally:
        await worker.close()
    # Per task: the announcement of its work (create) and of its end (complete).
    assert (plain, shard) == ((0, 4) if sharded else (4, 0))


async def test_a_worker_that_learns_of_more_partitions_listens_to_them(
    real_settings: Settings, topology: Topology, topology_cluster: LocalCluster
) -> None:
    """A worker serving 2 partitions learns that the web made 16: on shard channels it must
    subscribe to the others' channels too, or a task there would wait for its re-scan."""
    if topology.name != "cluster7":
        pytest.skip("plain pub/sub: one work channel for every partition")
    worker = Store(client_for(real_settings.redis_url), attrs.evolve(real_settings, partitions=2))
    web = Store(client_for(real_settings.redis_url), attrs.evolve(real_settings, partitions=16))
    try:
        await idle(worker)
        late = partition(13).work
        assert shard_subscribers(topology_cluster, late) == 0
        await web.recover()  # announces 16 partitions
        await worker.recover()  # ... which the worker learns here

        async def resubscribed() -> bool:
            return await asyncio.to_thread(shard_subscribers, topology_cluster, late) == 1

        await await_until(resubscribed, 10, "the resubscription")
        assert await worker.take(timeout=0.1) is None  # what the resubscription noted
        task = await web.create_task(upload_in(13, PARTITIONS, "late-partition"))
        assert await worker.take(timeout=WOKEN_WITHIN) == task.id
    finally:
        await worker.close()
        await web.close()


async def test_a_web_that_learns_of_more_partitions_hears_their_tasks_finish(
    real_settings: Settings, topology: Topology, topology_cluster: LocalCluster
) -> None:
    """A web serving 2 partitions learns that another made 16: its long-polls on tasks of the
    new partitions are woken when those finish, as on its own."""
    web = Store(client_for(real_settings.redis_url), attrs.evolve(real_settings, partitions=2))
    other = Store(client_for(real_settings.redis_url), attrs.evolve(real_settings, partitions=16))
    completions = Completions(web.redis, lambda: web.finished_channels, web.sharded_pubsub)
    web.on_partitions_grown(completions.resubscribe)  # as the web app does
    await completions.start()
    late = partition(13).finished
    count = shard_subscribers if topology.name == "cluster7" else plain_subscribers
    try:
        await asyncio.wait_for(completions.subscribed.wait(), 10)
        assert count(topology_cluster, late) == 0
        await other.recover()  # announces 16 partitions
        await web.recover()  # ... which the web learns here (the web app: on a create)

        async def listening() -> bool:
            return await asyncio.to_thread(count, topology_cluster, late) == 1

        await await_until(listening, 10, "the web's subscription to the new partitions")
        task = await other.create_task(upload_in(13, PARTITIONS, "late-finish"))
        assert await other.take(timeout=5) == task.id
        claim = await other.claim(task.id, "test-worker")
        assert claim is not None
        async with completions.watch(task.id) as finished:
            assert await other.complete(claim, "png", IMAGES) is True
            await asyncio.wait_for(finished, 10)
    finally:
        await completions.stop()
        await web.close()
        await other.close()
