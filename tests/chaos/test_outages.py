"""Scenarios 5-7: Redis going away, recoveries racing, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable

from resizer.config import Settings
from resizer.embedded import RedisServer, free_port
from resizer.store.keys import task_key
from tests.chaos.harness import (
    Api,
    Cluster,
    Figures,
    QueueSampler,
    Watcher,
    audit,
    http_get,
    open_session,
    statuses,
    task_hashes,
    wait_exit,
    wait_finished,
)
from tests.chaos.photos import uniquify
from tests.helpers import wait_until

OUTAGE_SECONDS = 10.0
# The API's Redis calls are bounded (2 s connect timeout, 5 s read timeout, 2 retries): no
# request may take longer than this while Redis is away.
API_BOUND_SECONDS = 10.0


async def test_redis_goes_away(
    cluster_factory: Callable[..., Cluster], photos: list[bytes], figures: Figures
) -> None:
    """Redis goes away: SIGKILLed for 10 s mid-run, restarted with its data (append-only file,
    fsync always); the API answers 503 JSON meanwhile, workers reconnect without a restart."""
    settings = Settings(lease_seconds=2, max_attempts=5, ttl_seconds=3600)
    cluster = cluster_factory(settings, "--appendonly", "yes", "--appendfsync", "always")
    server = cluster.redis_server
    _, url = cluster.serve()
    workers = [cluster.start("work") for _ in range(2)]
    watcher = Watcher(url)
    watcher.start()
    accepted: list[str] = []
    during: list[tuple[int, str, float]] = []
    # The outage, on the event loop's clock: from the kill to 1 s after the restart (a request
    # in flight across the restart may still be refused).
    window = [float("inf"), float("inf")]
    restarted: RedisServer | None = None

    async def submit(api: Api, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            started = asyncio.get_running_loop().time()
            status, body = await api.post(uniquify(photos[n % len(photos)], f"outage-{n}"))
            ended = asyncio.get_running_loop().time()
            took = ended - started
            n += 1
            if status == 201:
                accepted.append(body["id"])
                watcher.watch(body["id"])
            elif started <= window[1] and ended >= window[0]:
                during.append((status, str(body.get("error", {}).get("code")), took))
            else:
                raise AssertionError(f"unexpected answer outside the outage: {status} {body}")
            await asyncio.sleep(0.05)

    try:
        async with open_session(8) as session:
            api = Api(session, url)
            stop = asyncio.Event()
            submitting = asyncio.create_task(submit(api, stop))
            await asyncio.sleep(3)  # a steady flow of tasks before the outage
            assert server.proc is not None
            window[0] = asyncio.get_running_loop().time()
            server.proc.kill()  # a crash: no shutdown, no final save
            server.proc.wait()
            server.proc = None
            server.release()  # its directory, for the restart below
            status_during = [await api.status(accepted[0]) for _ in range(5)]
            await asyncio.sleep(OUTAGE_SECONDS)
            restarted = RedisServer(
                port=server.port, directory=server.directory, extra_args=server.extra_args
            ).start()
            window[1] = asyncio.get_running_loop().time() + 1.0
            await asyncio.sleep(3)  # and a steady flow after it
            stop.set()
            await submitting
        client = cluster.redis()
        await wait_finished(client, accepted, timeout=60)
        # A POST whose create script ran (and reached the append-only file) just before the kill
        # lost its reply: the client got a 503, yet the task exists. It is owed the same care as
        # an accepted one, so it is awaited and audited too.
        refused_but_created = sorted(await asyncio.to_thread(task_hashes, client) - set(accepted))
        await wait_finished(client, refused_but_created, timeout=60)
        violations = watcher.finish()
        result = await audit(client, accepted + refused_but_created, url)
    finally:
        if restarted is not None:
            restarted.stop()
    alive = [w.poll() is None for w in workers]
    reconnected = [
        sum(1 for e in cluster.events(w) if e.get("event") == "redis.unreachable") for w in workers
    ]

    figures.submitted, figures.faults = len(accepted), 1
    figures.take(result)
    figures.notes.update(
        refused_during_outage=len(during),
        refused_but_created=len(refused_but_created),
        slowest_refusal_s=round(max((t for *_, t in during), default=0), 2),
        answers=sorted(
            {f"{s} {c}" for s, c, _ in during}
            | {f"{s} {b['error']['code']}" for s, b in status_during}
        ),
        workers_restarted=alive.count(False),
        visibility_violations=len(violations),
    )
    result.assert_clean()
    assert result.status == {"DONE": len(accepted) + len(refused_but_created)}
    assert during, "no request was made while Redis was away"
    assert {(s, c) for s, c, _ in during} == {(503, "unavailable")}
    assert max(t for *_, t in during) < API_BOUND_SECONDS
    assert all(s == 503 and body["error"]["code"] == "unavailable" for s, body in status_during)
    assert all(alive), "a worker died instead of reconnecting"
    assert all(reconnected), "a worker did not notice the outage"
    assert violations == []


async def test_recovery_races(
    cluster_factory: Callable[..., Cluster], photos: list[bytes], figures: Figures
) -> None:
    """Recovery races: two ``resizer recover --every 0.1`` loops during a run with healthy
    workers; every 20th task takes 1.5x its lease (kept by heartbeats).

    No task is processed twice (attempts stay 1), no id is ever queued twice (the waiting and
    processing lists are sampled all along).
    """
    settings = Settings(lease_seconds=2, max_attempts=3, ttl_seconds=3600)
    cluster = cluster_factory(settings)
    _, url = cluster.serve()
    for _ in range(2):
        cluster.start("work", failpoints="during_resize=sleep:3@SLOW")
    recoverers = [cluster.start("recover", "--every", "0.1") for _ in range(2)]
    client = cluster.redis()
    sampler = QueueSampler(cluster.redis())
    sampler.start()
    async with open_session(8) as session:
        api = Api(session, url)
        ids = [
            await api.submit(
                uniquify(photos[n % len(photos)], f"race-{n}" + (" SLOW" if n % 20 == 0 else ""))
            )
            for n in range(200)
        ]
    await wait_finished(client, ids, timeout=90)
    violations = sampler.finish()
    adoptions = sum(
        1 for r in recoverers for e in cluster.events(r) if e.get("event") == "task.adopted"
    )
    result = await audit(client, ids, url)

    figures.submitted, figures.faults = len(ids), 2
    figures.take(result)
    figures.notes.update(
        attempts=dict(result.attempts),
        queue_samples=sampler.samples,
        queued_twice=len(violations),
        adoptions=adoptions,
    )
    result.assert_clean()
    assert result.status == {"DONE": len(ids)}
    assert result.attempts == {1: len(ids)}, "a task was processed twice"
    assert violations == []
    assert all(r.poll() is None for r in recoverers)


def child_pids(log: str) -> list[int]:
    return [
        json.loads(line)["pid"]
        for line in log.splitlines()
        if line.startswith("{") and '"child.started"' in line
    ]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_graceful_shutdown(
    cluster_factory: Callable[..., Cluster], photos: list[bytes], figures: Figures
) -> None:
    """Graceful shutdown: SIGTERM to two ``resizer work`` and to ``resizer up`` mid-run; the
    tasks in hand finish, exit codes are 0, nothing stays IN_PROGRESS, no process is left."""
    settings = Settings(lease_seconds=5, max_attempts=3, ttl_seconds=3600)
    cluster = cluster_factory(settings)
    client = cluster.redis()
    slow = "during_resize=sleep:1"
    in_progress = 0
    codes: list[int | None] = []

    def busy(ids: list[str], count: int) -> Callable[[], bool]:
        return lambda: statuses(client, ids).count("IN_PROGRESS") >= count

    # 1. Two plain workers.
    _, url = cluster.serve()
    workers = [cluster.start("work", failpoints=slow) for _ in range(2)]
    async with open_session(8) as session:
        api = Api(session, url)
        first = [await api.submit(uniquify(photos[n], f"term-{n}")) for n in range(12)]
    wait_until(busy(first, 2), 30, "both workers to hold a task")
    in_progress += statuses(client, first).count("IN_PROGRESS")
    for w in workers:
        w.send_signal(signal.SIGTERM)
    codes += [await wait_exit(w, 30) for w in workers]
    after_workers = statuses(client, first)

    # 2. resizer up: web, 2 workers, recovery, on our Redis.
    port = free_port()
    up = cluster.start("up", "--port", str(port), "--workers", "2", failpoints=slow)
    up_url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_get(up_url, "/health", 1)[0] == 200, 30, "resizer up to serve")
    async with open_session(8) as session:
        api = Api(session, up_url)
        second = [await api.submit(uniquify(photos[n], f"up-{n}")) for n in range(12, 24)]
    wait_until(busy(first + second, 2), 30, "up's workers to hold a task")
    in_progress += statuses(client, first + second).count("IN_PROGRESS")
    up.send_signal(signal.SIGTERM)
    codes.append(await wait_exit(up, 60))
    after_up = statuses(client, first + second)
    children = child_pids(cluster.log_of(up))
    leftovers = [pid for pid in children if not gone(pid)]

    # 3. Whatever was still waiting is processed by the next workers.
    cluster.start("work")
    ids = first + second
    await wait_finished(client, ids, timeout=60)
    result = await audit(client, ids, url)

    figures.submitted, figures.faults = len(ids), 3
    figures.take(result)
    figures.notes.update(
        exit_codes=codes, in_hand_at_sigterm=in_progress, children_left=len(leftovers)
    )
    result.assert_clean()
    assert codes == [0, 0, 0]
    assert "IN_PROGRESS" not in after_workers
    assert "IN_PROGRESS" not in after_up
    assert len(children) == 4  # 2 workers, recover, web
    assert leftovers == []
    assert result.status == {"DONE": len(ids)}
    assert result.attempts == {1: len(ids)}, "a task in hand at SIGTERM was not finished"
    assert client.hget(task_key(first[0]), "status") == b"DONE"
