"""Scenario 14: a Redis Cluster resharded under load, as `redis-cli --cluster reshard` does it:
the slots of one primary's partitions moved to another, ten keys a MIGRATE, while tasks flow.

While a slot moves, a script whose keys are split between the two nodes is refused (TRYAGAIN,
or a key it reaches through another already gone): uploads to that partition get 503 and are
sent again, workers back off. Nothing may be lost, no worker may exit.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from resizer.config import Settings
from resizer.store.keys import partition
from tests.chaos.harness import Api, Figures, open_session, percentile
from tests.chaos.photos import uniquify
from tests.chaos.test_failover import Answer, Roles, queue_leftovers, submit_all, wait_done
from tests.topologies import SlotMove, versioned_cluster

TASKS = 2000
CONCURRENCY = 16
MOVE_AFTER = 400  # acknowledged tasks before the reshard starts
PARTITIONS = 16
BATCH = 10  # keys a MIGRATE, redis-cli's default
PAUSE = 0.02  # seconds between two MIGRATEs: each slot stays split for a second or two, as one
# of large originals does, long enough for clients and workers to meet it split


@pytest.mark.parametrize("redis_version", ["6.2", "7"])
async def test_cluster_resharded(
    tmp_path: Path, photos: list[bytes], figures: Figures, redis_version: str
) -> None:
    """Cluster resharded: 2,000 tasks through the API on a 3-primary Redis Cluster (16
    partitions); after 400, the slots of every partition on the first primary are moved to the
    second, key by key, while clients keep submitting and 2 workers keep resizing."""
    cluster = versioned_cluster(redis_version, tmp_path / "cluster")
    logs = tmp_path / "logs"
    logs.mkdir()
    reader = RedisCluster(
        startup_nodes=[
            ClusterNode("127.0.0.1", s.port)  # type: ignore[no-untyped-call]
            for s in cluster.nodes
        ],
        socket_timeout=5,
    )
    settings = Settings(
        redis_url=cluster.url, lease_seconds=5, max_attempts=5, ttl_seconds=3600,
        partitions=PARTITIONS,
    )  # fmt: skip
    roles = Roles(settings, logs)
    source, target = cluster.primaries[0], cluster.primaries[1]
    slots = [
        slot
        for slot in (key_slot(partition(i).tag.encode()) for i in range(PARTITIONS))
        if cluster.primary_of_slot(slot).port == source.port
    ]
    try:
        api_url = roles.serve()
        workers = [roles.start("work") for _ in range(2)]
        images = [uniquify(photos[n % len(photos)], f"reshard-{n}") for n in range(TASKS)]
        answers: list[Answer] = []
        started = time.monotonic()
        move_now = asyncio.Event()
        moved: list[int] = []
        move_seconds: list[float] = []

        def acknowledged(count: int) -> None:
            if count == MOVE_AFTER:
                move_now.set()

        def reshard() -> None:
            began = time.monotonic()
            for slot in slots:
                moved.append(SlotMove(cluster, slot, target).run(BATCH, PAUSE))
            move_seconds.append(time.monotonic() - began)

        async def fault() -> None:
            await move_now.wait()
            await asyncio.to_thread(reshard)

        def clock() -> float:
            return time.monotonic() - started

        async with open_session(CONCURRENCY, timeout=60) as session:
            api = Api(session, api_url)
            moving = asyncio.create_task(fault())
            ids = await submit_all(api, images, acknowledged, answers, clock)
            await moving
            status = await wait_done(Api(session, api_url), ids, 120)
        leftovers = await asyncio.to_thread(queue_leftovers, reader)
        alive = [w.poll() is None for w in workers]
        served_by = {cluster.primary_of_slot(slot).port for slot in slots}
    finally:
        roles.kill_all()
        reader.close()
        cluster.stop()
    figures.submitted = len(ids)
    figures.done = status.get("DONE", 0)
    figures.lost = len(ids) - figures.done
    figures.faults = len(slots)
    figures.notes.update(
        http=dict(Counter(a.status for a in answers)),
        partitions_moved=len(slots),
        keys_moved=sum(moved),
        reshard_s=round(move_seconds[0], 2),
        post_p99_ms=percentile(api.post_ms, 99),
        slowest_post_ms=round(api.slowest_ms),
    )
    assert slots, "the first primary serves none of the 16 partitions"
    assert served_by == {target.port}, "a slot was not moved"
    assert len(set(ids)) == TASKS
    assert status == Counter({"DONE": TASKS}), status
    assert leftovers == {"waiting": 0, "processing": 0, "leases": 0}, leftovers
    assert all(alive), "a worker died instead of riding out the reshard"
    assert {a.status for a in answers} <= {201, 503}, Counter(a.status for a in answers)
