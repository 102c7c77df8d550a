"""Scenarios 10-11: a Redis primary SIGKILLed under load, on a Redis Cluster and under Sentinel,
with RESIZER_MIN_REPLICAS=1: its replica takes over, and no acknowledged task is lost.

The killed process is started again 5 s later on its port and directory, as an orchestrator
would restart it: it comes back empty (no persistence) and follows the promoted replica. Until
then the promoted replica has no replica of its own, so writes to its slots cannot be confirmed
and are refused (503): that is the price of RESIZER_MIN_REPLICAS=1 with one replica per primary.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from resizer.config import Settings
from resizer.embedded import RedisServer, free_port
from resizer.processes import resizer_command
from resizer.store.keys import partition
from tests.chaos.harness import Api, Figures, http_get, open_session, percentile
from tests.chaos.photos import uniquify
from tests.helpers import wait_until
from tests.topologies import LocalSentinel, versioned_cluster

TASKS = 2000
CONCURRENCY = 16
KILL_AFTER = 600  # acknowledged tasks before the kill
RESTART_AFTER_SECONDS = 5.0
PARTITIONS = 16
FINISHED = {"DONE", "FAILED"}


@attrs.define
class Roles:
    """``serve`` and ``work`` processes on one Redis URL, all killed at the end."""

    settings: Settings
    logs: Path
    procs: list[subprocess.Popen[bytes]] = attrs.Factory(list)

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        name = f"{args[0]}-{len(self.procs)}"
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                resizer_command(*args), env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        return proc

    def serve(self) -> str:
        port = free_port()
        proc = self.start("serve", "--host", "127.0.0.1", "--port", str(port))
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert proc.poll() is None, (self.logs / "serve-0.log").read_text()[-3000:]
            return http_get(url, "/ready", timeout=1)[0] == 200

        wait_until(healthy, 30, "the API to be ready")
        return url

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@attrs.define
class Answer:
    status: int
    at: float  # when the answer came, seconds since the kill (negative: before it)


async def submit_all(
    api: Api,
    images: list[bytes],
    on_acknowledged: Callable[[int], None],
    answers: list[Answer],
    clock: Callable[[], float],
) -> list[str]:
    """POST every image until it is acknowledged (a refused one is sent again: the same bytes
    join the task they may have created), ``CONCURRENCY`` at a time."""
    ids: list[str] = []
    queue = list(reversed(images))

    async def client() -> None:
        while queue:
            image = queue.pop()
            while True:
                status, body = await api.post(image)
                answers.append(Answer(status, clock()))
                if status == 201:
                    ids.append(body["id"])
                    on_acknowledged(len(ids))
                    break
                assert status in (503, 0), (status, body)
                await asyncio.sleep(0.1)

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return ids


def window(answers: list[Answer]) -> tuple[float, float]:
    """From the kill: the first and the last refusal (503), in seconds."""
    refused = [a.at for a in answers if a.status != 201 and a.at >= 0]
    return (min(refused, default=0.0), max(refused, default=0.0))


async def run_failover(
    figures: Figures,
    url: str,
    logs: Path,
    photos: list[bytes],
    kill: Callable[[], None],
    restart: Callable[[], None],
    promoted: Callable[[], bool],
    reader: redis.Redis | RedisCluster,
    name: str,
) -> tuple[Counter[str], list[Answer]]:
    await asyncio.to_thread(logs.mkdir, parents=True, exist_ok=True)
    settings = Settings(
        redis_url=url,
        lease_seconds=5,
        max_attempts=5,
        ttl_seconds=3600,
        partitions=PARTITIONS,
        min_replicas=1,
    )
    roles = Roles(settings, logs)
    try:
        api_url = roles.serve()
        workers = [roles.start("work") for _ in range(2)]
        images = [uniquify(photos[n % len(photos)], f"{name}-{n}") for n in range(TASKS)]
        answers: list[Answer] = []
        killed_at: list[float] = []
        promoted_at: list[float] = []
        kill_now = asyncio.Event()

        def clock() -> float:
            return time.monotonic() - killed_at[0] if killed_at else -1.0

        def acknowledged(count: int) -> None:
            if count == KILL_AFTER:
                kill_now.set()

        async def fault() -> None:
            await kill_now.wait()
            kill()
            killed_at.append(time.monotonic())
            restart_at = killed_at[0] + RESTART_AFTER_SECONDS  # an orchestrator's delay
            await asyncio.to_thread(wait_until, promoted, 30, "a replica to be promoted")
            promoted_at.append(time.monotonic() - killed_at[0])
            await asyncio.sleep(max(0.0, restart_at - time.monotonic()))
            await asyncio.to_thread(restart)

        async with open_session(CONCURRENCY, timeout=60) as session:
            api = Api(session, api_url)
            faulting = asyncio.create_task(fault())
            ids = await submit_all(api, images, acknowledged, answers, clock)
            await faulting
            submitted_s = time.monotonic() - killed_at[0]
            # As clients see them: a task that joined another (its bytes were sent again after
            # a refusal that had stored them) has the status of the task it joined.
            status = await wait_done(Api(session, api_url), ids, 120)
        drained_s = time.monotonic() - killed_at[0]
        leftovers = await asyncio.to_thread(queue_leftovers, reader)
        alive = [w.poll() is None for w in workers]
    finally:
        roles.kill_all()
    first, last = window(answers)
    figures.submitted = len(ids)
    figures.done = status.get("DONE", 0)
    figures.lost = len(ids) - figures.done
    figures.faults = 1
    figures.notes.update(
        http=dict(Counter(a.status for a in answers)),
        promoted_after_s=round(promoted_at[0], 2),
        refused_from_s=round(first, 2),
        refused_until_s=round(last, 2),
        window_s=round(last - first, 2),
        all_acknowledged_at_s=round(submitted_s, 1),
        all_done_at_s=round(drained_s, 1),
        post_p99_ms=percentile(api.post_ms, 99),
        slowest_post_ms=round(api.slowest_ms),
    )
    assert len(set(ids)) == TASKS
    assert status == Counter({"DONE": TASKS}), status
    assert leftovers == {"waiting": 0, "processing": 0, "leases": 0}, leftovers
    assert all(alive), "a worker died instead of riding out the failover"
    return status, answers


async def wait_done(api: Api, ids: list[str], timeout: float) -> Counter[str]:
    """Until every acknowledged task is DONE or FAILED through the API (or the deadline)."""
    deadline = time.monotonic() + timeout
    found: dict[str, str] = {}
    while True:
        pending = [i for i in ids if found.get(i) not in FINISHED]
        for task_id in pending:
            code, body = await api.status(task_id)
            found[task_id] = str(body.get("status")) if code == 200 else f"HTTP {code}"
        if not pending or time.monotonic() > deadline:
            return Counter(found.get(i, "MISSING") for i in ids)
        await asyncio.sleep(0.2)


def queue_leftovers(reader: redis.Redis | RedisCluster) -> dict[str, int]:
    parts = [partition(i) for i in range(PARTITIONS)]
    return {
        "waiting": sum(int(reader.llen(p.waiting)) for p in parts),
        "processing": sum(int(reader.llen(p.processing)) for p in parts),
        "leases": sum(int(reader.zcard(p.leases)) for p in parts),
    }


@pytest.mark.parametrize("redis_version", ["6.2", "7"])
async def test_cluster_primary_killed(
    tmp_path: Path, photos: list[bytes], figures: Figures, redis_version: str
) -> None:
    """Cluster primary killed: 2,000 tasks through the API on a 3-primary Redis Cluster
    (16 partitions, RESIZER_MIN_REPLICAS=1); one primary SIGKILLed after 600, its replica
    promoted by the cluster, the dead process restarted 5 s later as a replica. On Redis 6.2
    (the embedded binary: plain pub/sub) and on Redis >= 7 where there is one (shard
    channels, whose subscriptions must follow the promoted replica)."""
    cluster = versioned_cluster(redis_version, tmp_path / "cluster")
    restarted: list[RedisServer] = []
    try:
        victim = cluster.primary_of_slot(0)
        reader = RedisCluster(
            startup_nodes=[
                ClusterNode("127.0.0.1", s.port)  # type: ignore[no-untyped-call]
                for s in cluster.nodes
            ],
            socket_timeout=5,
        )

        kill, start_again = killer(victim, restarted)

        def promoted() -> bool:
            return cluster.primary_of_slot(0).port != victim.port

        await run_failover(
            figures,
            cluster.url,
            tmp_path / "logs",
            photos,
            kill,
            start_again,
            promoted,
            reader,
            "cluster" if redis_version == "6.2" else "cluster, Redis 7",
        )
        now_serving = cluster.primary_of_slot(0)
        assert now_serving.port != victim.port, "its replica was not promoted"
        reader.close()
    finally:
        for server in restarted:
            server.stop()
        cluster.stop()


def killer(
    victim: RedisServer, restarted: list[RedisServer]
) -> tuple[Callable[[], None], Callable[[], None]]:
    """SIGKILL ``victim``, and later start a server again on its port and data directory."""

    def kill() -> None:
        assert victim.proc is not None
        victim.proc.kill()
        victim.proc.wait()
        victim.proc = None
        victim.release()  # its directory, for the restart

    def start_again() -> None:
        server = RedisServer(
            port=victim.port,
            directory=victim.directory,
            extra_args=victim.extra_args,
            binary=victim.binary,
        ).start()
        restarted.append(server)

    return kill, start_again


async def test_sentinel_primary_killed(
    tmp_path: Path, photos: list[bytes], figures: Figures
) -> None:
    """Sentinel primary killed: 2,000 tasks through the API on a Sentinel-watched primary
    with one replica (RESIZER_MIN_REPLICAS=1); the primary SIGKILLed after 600, the replica
    promoted by the sentinels, the dead process restarted 5 s later as a replica."""
    setup = LocalSentinel(tmp_path / "sentinel").start()
    restarted: list[RedisServer] = []
    try:
        victim = setup.current_primary()

        kill, start_again = killer(victim, restarted)

        def promoted() -> bool:
            return setup.current_primary().port != victim.port

        reader = SentinelReader(setup)
        await run_failover(
            figures,
            setup.url,
            tmp_path / "logs",
            photos,
            kill,
            start_again,
            promoted,
            reader,
            "sentinel",
        )
        now_serving = setup.current_primary()
        assert now_serving.port != victim.port, "its replica was not promoted"
    finally:
        for server in restarted:
            server.stop()
        setup.stop()


class SentinelReader(redis.Redis):
    """A plain client on whatever the sentinels name as primary now."""

    def __init__(self, setup: LocalSentinel) -> None:
        from redis.sentinel import Sentinel

        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [("127.0.0.1", s.port) for s in setup.sentinels], socket_timeout=5
        )
        client = sentinel.master_for("mymaster", socket_timeout=5)  # type: ignore[no-untyped-call]
        pool = client.connection_pool
        super().__init__(connection_pool=pool)
