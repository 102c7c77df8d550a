"""Many partitions: every worker serves all of them, wakes at once without polling, starves
none; on a cluster the partitions spread the tasks and the memory over the primaries."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import attrs
import pytest
import redis

from resizer import header
from resizer.config import Settings
from resizer.errors import EvictingRedis
from resizer.models import ImageInfo, Task, Upload
from resizer.processes import resizer_command
from resizer.store import Store, client_for
from resizer.store.keys import partition_of_digest, partition_of_id
from tests.conftest import Topology
from tests.helpers import await_done, await_until, make_image
from tests.topologies import LocalCluster

pytestmark = pytest.mark.integration

PARTITIONS = 16
WAKE_TASKS = 200


def upload_in(partition: int, partitions: int, tag: str) -> Upload:
    """An upload whose digest places it in ``partition``."""
    n = 0
    while True:
        candidate = Upload.of(ImageInfo(format="png", width=8, height=8), f"{tag}-{n}".encode())
        if partition_of_digest(candidate.digest, partitions) == partition:
            return candidate
        n += 1


def commands(admin: redis.Redis) -> dict[str, int]:
    stats = admin.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


@pytest.fixture
async def store(real_settings: Settings) -> AsyncIterator[Store]:
    """A store that creates tasks in 16 partitions, and has said so (as the web does)."""
    store = Store(client_for(real_settings.redis_url), attrs.evolve(real_settings, partitions=16))
    await store.recover()
    yield store
    await store.close()


@pytest.fixture
async def worker_log(store: Store, tmp_path: Path) -> AsyncIterator[Path]:
    """One ``resizer work`` process, started with the CLI's defaults (one partition): it learns
    from Redis how many partitions there are. Yields once it has finished a first task."""
    log = tmp_path / "work.log"
    env = {**os.environ, "REDIS_URL": store.settings.redis_url}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *resizer_command("work"), env=env, stdout=out, stderr=out
        )
    try:
        await done(store, await create(store))
        yield log
    finally:
        proc.kill()
        await proc.wait()


async def create(store: Store) -> Task:
    data = make_image("PNG", size=32, unique=True)
    return await store.create_task(Upload.of(header.inspect(data, 10**6), data))


async def done(store: Store, task: Task) -> None:
    await await_done(store, task.id)


def claimed_at(log: Path) -> dict[str, float]:
    """When the worker claimed each task (its log's timestamps), seconds since the epoch."""
    found = {}
    for line in log.read_text().splitlines():
        if '"task.claimed"' in line:
            event = json.loads(line)
            found[event["task_id"]] = datetime.fromisoformat(event["timestamp"]).timestamp()
    return found


async def test_an_idle_worker_starts_on_a_task_in_any_partition_at_once(
    store: Store, worker_log: Path
) -> None:
    """200 tasks one after another, each in the partition of its digest, the worker idle before
    each: from the task's creation (the Redis clock) to its claim (the worker's log)."""
    latencies = []
    used = set()
    for _ in range(WAKE_TASKS):
        task = await create(store)
        used.add(partition_of_id(task.id))
        await done(store, task)
        latencies.append(claimed_at(worker_log)[task.id] - task.created_at.timestamp())
    ordered = sorted(latencies)
    p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
    print(f"wake-up over {PARTITIONS} partitions: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    assert len(used) == PARTITIONS
    assert p99 < 0.1, f"p99 {p99 * 1000:.0f} ms"


async def test_an_idle_worker_does_not_poll(store: Store, worker_log: Path) -> None:
    """Once it waits, an idle worker sends nothing for seconds: no LMOVE per partition per
    second (its safety re-scan and recovery come every 15 s; docs/scaling.md has the figure)."""
    admin = redis.Redis.from_url(store.settings.redis_url)
    # After its first task the worker still looks into the partitions it had not reached
    # before that task (one LMOVE each): the window opens once it has sent none for a second.
    quiet_since = [time.monotonic(), commands(admin).get("lmove", 0)]

    async def waiting() -> bool:
        moves = commands(admin).get("lmove", 0)
        if moves != quiet_since[1]:
            quiet_since[:] = [time.monotonic(), moves]
        return time.monotonic() - quiet_since[0] >= 1.0

    await await_until(waiting, 20, "the worker to stop looking into partitions")
    before = commands(admin)
    await asyncio.sleep(3)  # the observation window itself: nothing to wait for
    after = commands(admin)
    admin.close()
    sent = {name: after[name] - before.get(name, 0) for name in after}
    sent.pop("info", None)  # our own INFO
    assert sent.get("lmove", 0) == 0, sent
    assert sum(sent.values()) <= 2, sent  # at most a health-check PING


async def test_a_flooded_partition_starves_no_other(store: Store) -> None:
    """300 tasks wait in partition 0, one in partition 5: a worker gets to it within one round
    of the partitions, not after the flood."""
    for n in range(300):
        await store.create_task(upload_in(0, PARTITIONS, f"flood-{n}"))
    other = await store.create_task(upload_in(5, PARTITIONS, "other"))
    worker = Store(client_for(store.settings.redis_url), store.settings)
    try:
        takes = 0
        while True:
            takes += 1
            taken = await worker.take(1)
            assert taken is not None
            if taken == other.id:
                break
            assert takes < PARTITIONS, "the other partition's task was not taken"
    finally:
        await worker.close()


@pytest.mark.topologies("cluster")
async def test_sixteen_partitions_spread_tasks_and_memory_over_three_primaries(
    real_settings: Settings, topology: Topology, topology_cluster: LocalCluster
) -> None:
    if topology.name == "cluster7":
        pytest.skip("the spread is the keyspace's, the same on any version: measured on 6.2")
    settings = attrs.evolve(real_settings, partitions=PARTITIONS)
    primaries = topology_cluster.live_primaries()
    assert len(primaries) == 3

    def used_memory() -> list[int]:
        return [topology_cluster.client(p).info("memory")["used_memory"] for p in primaries]

    before = used_memory()
    store = Store(client_for(settings.redis_url), settings)
    try:
        started = time.perf_counter()
        gate = asyncio.Semaphore(32)

        async def create(n: int) -> None:
            async with gate:
                data = os.urandom(1024) + n.to_bytes(4, "big")
                await store.create_task(Upload.of(ImageInfo(format="png", width=8, height=8), data))

        await asyncio.gather(*(create(n) for n in range(3000)))
        seconds = time.perf_counter() - started
    finally:
        await store.close()
    grown = [after - b for after, b in zip(used_memory(), before, strict=True)]
    tasks = [
        sum(1 for _ in topology_cluster.client(p).scan_iter(match="*:task:*", count=1000))
        for p in primaries
    ]
    task_share = [round(100 * t / sum(tasks), 1) for t in tasks]
    memory_share = [round(100 * m / sum(grown), 1) for m in grown]
    print(
        f"3,000 tasks in {seconds:.1f} s over {PARTITIONS} partitions: task keys {tasks} "
        f"({task_share} %), memory grown {[m // 1024 for m in grown]} KiB ({memory_share} %)"
    )
    assert sum(tasks) == 3000
    # 16 partitions over 3 primaries are 6, 5 and 5 of them: 37.5, 31.25 and 31.25 % of the
    # tasks. Memory follows each primary's tasks, give or take a few points (Redis's tables grow
    # in steps): CI once read 41.6 % of the memory beside 38.2 % of the tasks.
    for task, memory in zip(task_share, memory_share, strict=True):
        assert 33.3 - 8 <= task <= 33.3 + 8, (task_share, memory_share)
        assert abs(memory - task) <= 8, (task_share, memory_share)


@pytest.mark.topologies("cluster")
async def test_every_primary_is_checked_for_eviction(
    real_settings: Settings, topology_cluster: LocalCluster
) -> None:
    """One primary of three that may evict keys is enough to refuse the cluster."""
    last = topology_cluster.live_primaries()[-1]
    store = Store(client_for(real_settings.redis_url), real_settings)
    admin = topology_cluster.client(last)
    try:
        await store.check_memory_policy()
        admin.config_set("maxmemory-policy", "allkeys-lru")
        with pytest.raises(EvictingRedis, match="allkeys-lru"):
            await store.check_memory_policy()
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
        await store.close()
