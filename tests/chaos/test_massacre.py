"""Scenario 1: workers SIGKILLed at random, all along a run of 1,000 tasks."""

from __future__ import annotations

import asyncio
import random
import subprocess
from collections.abc import Callable

from resizer.config import Settings
from tests.chaos.harness import (
    Api,
    Cluster,
    Figures,
    Watcher,
    audit,
    open_session,
    wait_finished,
    wait_until,
)
from tests.chaos.photos import uniquify

TASKS = 1000
WORKERS = 3
KILL_EVERY = 0.5
KILL_FOR = 20.0
# Each resize is padded by 20 ms (a failpoint sleep), so that on a 2-core machine the 1,000
# tasks last through the 20 s of the massacre and kills land while a task is in hand.
PADDING = "during_resize=sleep:0.02"
SETTINGS = Settings(lease_seconds=2, max_attempts=5, ttl_seconds=3600)


async def test_worker_massacre(
    cluster_factory: Callable[..., Cluster], photos: list[bytes], figures: Figures
) -> None:
    """Worker massacre: 1,000 photos, 3 workers, one SIGKILLed and replaced every 0.5 s for 20 s.

    The tasks are submitted through the API first; with that backlog, a worker that is up always
    has a task in hand, so kills land at every step of a task's life. Recovery runs
    as configured: each worker every half lease, plus a ``resizer recover`` loop as ``up`` has.
    """
    cluster = cluster_factory(SETTINGS)
    _, url = cluster.serve()
    cluster.start("recover", "--every", str(SETTINGS.recover_every_seconds))
    watcher = Watcher(url)
    watcher.start()
    rng = random.Random(1)
    slots: list[subprocess.Popen[bytes]] = []
    workers: list[subprocess.Popen[bytes]] = []
    ids: list[str] = []

    skipped = 0

    async def massacre() -> int:
        """Every 0.5 s for 20 s: SIGKILL a random running worker, start a new one."""
        nonlocal skipped
        kills = 0
        loop = asyncio.get_running_loop()
        start = loop.time()
        for tick in range(1, int(KILL_FOR / KILL_EVERY) + 1):
            await asyncio.sleep(max(0.0, start + tick * KILL_EVERY - loop.time()))
            # Only workers that are up: a new worker takes 1-2 s to import Python on this
            # machine, and killing it before it runs would test nothing.
            ready = [n for n, w in enumerate(slots) if "worker.started" in cluster.log_of(w)]
            if not ready:
                skipped += 1
                continue
            slot = rng.choice(ready)
            slots[slot].kill()
            await asyncio.to_thread(slots[slot].wait)
            kills += 1
            slots[slot] = cluster.start("work", failpoints=PADDING)
            workers.append(slots[slot])
        return kills

    async def submit(api: Api) -> None:
        # All up front (8 clients at a time), so a running worker always has a task in hand.
        async def one(n: int) -> None:
            task_id = await api.submit(uniquify(photos[n % len(photos)], f"massacre-{n}"))
            ids.append(task_id)
            watcher.watch(task_id)

        for start in range(0, TASKS, 8):
            await asyncio.gather(*(one(n) for n in range(start, min(TASKS, start + 8))))

    async with open_session(8) as session:
        api = Api(session, url)
        await submit(api)
    slots.extend(cluster.start("work", failpoints=PADDING) for _ in range(WORKERS))
    workers.extend(slots)
    wait_until(lambda: all("worker.started" in cluster.log_of(w) for w in slots), 30, "workers up")
    kills = await massacre()
    client = cluster.redis()
    await wait_finished(client, ids, timeout=90)
    violations = watcher.finish()
    result = await audit(client, ids, url)

    figures.submitted = len(ids)
    figures.faults = kills
    figures.take(result)
    figures.stop_clock()
    attempts_total = sum(n * c for n, c in result.attempts.items())
    claims_logged = sum(
        1 for w in workers for e in cluster.events(w) if e.get("event") == "task.claimed"
    )
    figures.notes.update(
        sigkills=kills,
        ticks_without_a_running_worker=skipped,
        tasks_rerun=sum(c for n, c in result.attempts.items() if n > 1),
        attempts=attempts_total,
        claims_logged=claims_logged,
        client_checks=watcher.checks,
        visibility_violations=len(violations),
    )

    result.assert_clean()
    assert result.status == {"DONE": TASKS}, result.status
    assert violations == []
    # Attempts add up: each claim is one attempt; a SIGKILL costs at most the one task in hand.
    assert attempts_total <= TASKS + kills
    assert claims_logged <= attempts_total <= claims_logged + kills
    assert api.answers == {201: TASKS}
