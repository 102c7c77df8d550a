"""Scenario 1: workers SIGKILLed at random, all along a run of 1,000 tasks."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from resizer.config import Settings
from tests.chaos.harness import (
    Api,
    Cluster,
    Figures,
    Watcher,
    Zygote,
    audit,
    open_session,
    statuses,
    wait_finished,
)
from tests.chaos.photos import uniquify
from tests.helpers import wait_until

TASKS = 1000
WORKERS = 3
KILL_EVERY = 0.5
KILL_FOR = 20.0
# Each resize is padded by 50 ms (a failpoint sleep), so that on a 2-core machine the 1,000
# tasks last through the 20 s of the massacre and kills land while a task is in hand.
PADDING = "during_resize=sleep:0.05"
SETTINGS = Settings(lease_seconds=2, max_attempts=5, ttl_seconds=3600)


async def test_worker_massacre(
    cluster_factory: Callable[..., Cluster], photos: list[bytes], figures: Figures
) -> None:
    """Worker massacre: 1,000 photos, 3 workers, one SIGKILLed and replaced every 0.5 s for 20 s.

    The tasks are submitted through the API first; with that backlog, a worker always has a
    task in hand, so kills land at every step of a task's life. One in ten repeats the bytes of
    the task before it, so it joins that task and must finish with it. Workers are forked from a
    warmed-up parent (tests/chaos/zygote.py), so a replacement is up in milliseconds, not the
    1-3 s Python takes to import on a busy 2-core machine. Recovery runs as configured: each
    worker every half lease, plus a ``resizer recover`` loop as ``resizer up`` runs it.
    """
    cluster = cluster_factory(SETTINGS)
    _, url = cluster.serve()
    cluster.start("recover", "--every", str(SETTINGS.recover_every_seconds))
    zygote = Zygote(cluster, failpoints=PADDING)
    watcher = Watcher(url)
    watcher.start()
    rng = random.Random(1)
    ids: list[str] = []
    try:
        async with open_session(8) as session:
            api = Api(session, url)

            async def one(n: int) -> None:
                # Every 10th task resubmits the bytes of the one before: it joins that task
                # (the service resizes each content once) and must finish with it.
                k = n - 1 if n % 10 == 9 else n
                task_id = await api.submit(uniquify(photos[k % len(photos)], f"massacre-{k}"))
                ids.append(task_id)
                watcher.watch(task_id)

            for first in range(0, TASKS, 8):
                await asyncio.gather(*(one(n) for n in range(first, min(TASKS, first + 8))))
        figures.submitted = len(ids)

        slots = [zygote.spawn() for _ in range(WORKERS)]
        wait_until(lambda: all("worker.started" in zygote.log(w) for w in slots), 30, "workers up")
        loop = asyncio.get_running_loop()
        start = loop.time()
        kills = 0
        for tick in range(1, int(KILL_FOR / KILL_EVERY) + 1):
            await asyncio.sleep(max(0.0, start + tick * KILL_EVERY - loop.time()))
            slot = rng.randrange(WORKERS)
            await asyncio.to_thread(zygote.kill, slots[slot])
            kills += 1
            slots[slot] = zygote.spawn()
        figures.faults = kills
        done_during = statuses_done(cluster, ids)
        client = cluster.redis()
        await wait_finished(client, ids, timeout=90)
        violations = watcher.finish()
        result = await audit(client, ids, url)
        claims_logged = sum(
            1 for w in zygote.spawned for e in zygote.events(w) if e.get("event") == "task.claimed"
        )
    finally:
        zygote.close()

    figures.take(result)
    figures.stop_clock()
    attempts_total = sum(n * c for n, c in result.attempts.items())
    duplicates = TASKS // 10
    figures.notes.update(
        sigkills=kills,
        done_during_massacre=done_during,
        tasks_rerun=sum(c for n, c in result.attempts.items() if n > 1),
        joined_duplicates=result.attempts[0],
        attempts=attempts_total,
        claims_logged=claims_logged,
        client_checks=watcher.checks,
        visibility_violations=len(violations),
    )

    result.assert_clean()
    assert result.status == {"DONE": TASKS}, result.status
    assert violations == []
    # Attempts add up: each claim is one attempt; a SIGKILL costs at most the one task in hand.
    assert attempts_total <= TASKS - duplicates + kills
    assert result.attempts[0] == duplicates  # a task that joined another is never claimed
    assert claims_logged <= attempts_total <= claims_logged + kills
    assert api.answers == {201: TASKS}


def statuses_done(cluster: Cluster, ids: list[str]) -> int:
    return statuses(cluster.redis(), ids).count("DONE")
