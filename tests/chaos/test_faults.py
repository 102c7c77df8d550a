"""Scenarios 2-4: a worker crashed at each step of a task's life, a poison task, a worker
presumed dead that comes back."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable

from resizer.config import Settings
from resizer.store.keys import task_key
from tests.chaos.harness import (
    Api,
    Cluster,
    Figures,
    Watcher,
    audit,
    http_get,
    open_session,
    statuses,
    wait_exit,
    wait_finished,
)
from tests.chaos.photos import uniquify
from tests.helpers import wait_until

FAST = Settings(lease_seconds=1, max_attempts=3, ttl_seconds=3600)

# Each failpoint, and the attempts the task must end DONE with: a crash before the claim costs
# no attempt, a crash after the atomic complete costs none either (the task is already DONE).
STEPS = {
    "after_take": 1,  # BLMOVE done, claim script not run: the id sits in processing, unleased
    "after_claim": 2,  # claimed and leased, nothing else done
    "during_resize": 2,  # in the middle of the resize
    "before_complete": 2,  # results computed, not written: write and acknowledge are one script
    "after_complete": 1,  # results written and acknowledged, the worker dies before anything else
}


async def test_kill_at_every_step(
    cluster_factory: Callable[..., Cluster], photos: list[bytes], figures: Figures
) -> None:
    """Kill at every step: a worker SIGKILLed after the take, after the claim, during the resize,
    before and after the complete.

    One worker per failpoint, each dies on its first task; then a healthy worker (and its
    recovery) finishes everything. A client watches all along: no task is ever DONE with a size
    missing, none changes after DONE.
    """
    cluster = cluster_factory(FAST)
    _, url = cluster.serve()
    doomed = {step: cluster.start("work", failpoints=f"{step}=kill") for step in STEPS}
    wait_until(
        lambda: all("worker.started" in cluster.log_of(w) for w in doomed.values()),
        30,
        "the doomed workers to start",
    )
    watcher = Watcher(url)
    watcher.start()
    async with open_session(8) as session:
        api = Api(session, url)
        ids = [await api.submit(uniquify(photos[n], f"step-{n}")) for n in range(len(STEPS))]
    for task_id in ids:
        watcher.watch(task_id)
    for step, proc in doomed.items():
        assert await wait_exit(proc, 30) == -signal.SIGKILL, f"{step} did not crash"
    # Which task each crash hit: the worker logged its claim (all but after_take).
    hit: dict[str, str] = {}
    for step, proc in doomed.items():
        claimed = [e["task_id"] for e in cluster.events(proc) if e.get("event") == "task.claimed"]
        if claimed:
            hit[step] = claimed[0]
    (hit["after_take"],) = set(ids) - set(hit.values())

    crashed_at = time.monotonic()
    cluster.start("work")
    client = cluster.redis()
    done_in: dict[str, float] = {}

    def track() -> None:
        for task_id, status in zip(ids, statuses(client, ids), strict=True):
            if status == "DONE" and task_id not in done_in:
                done_in[task_id] = round(time.monotonic() - crashed_at, 1)

    await wait_finished(client, ids, timeout=60, tick=track)
    violations = watcher.finish()
    result = await audit(client, ids, url)
    attempts = {step: int(result.tasks[task_id]["attempts"]) for step, task_id in hit.items()}

    figures.submitted, figures.faults = len(ids), len(STEPS)
    figures.take(result)
    figures.notes.update(
        attempts=attempts,
        # From the last crash to DONE, including the new worker's start (~1-2 s) and, for the
        # crashed claims, the lease (1 s) plus a recovery sweep (every 1 s).
        seconds_to_done={step: done_in.get(task_id) for step, task_id in hit.items()},
        client_checks=watcher.checks,
        violations=violations,
    )
    result.assert_clean()
    assert result.status == {"DONE": len(STEPS)}
    assert attempts == STEPS
    assert violations == []


async def test_poison_task(
    cluster_factory: Callable[..., Cluster], photos: list[bytes], figures: Figures
) -> None:
    """Poison task: an image that SIGKILLs its worker on every attempt ends FAILED after
    RESIZER_MAX_ATTEMPTS; the other tasks keep flowing meanwhile. A second task with the same
    bytes joins the first (the service resizes a content once) and fails with it.

    ``resizer work --processes 2`` supervises two workers and restarts each one it loses.
    """
    cluster = cluster_factory(FAST)
    _, url = cluster.serve()
    cluster.start("work", "--processes", "2", failpoints="during_resize=kill@POISON")
    client = cluster.redis()
    rng = random.Random(3)
    async with open_session(8) as session:
        api = Api(session, url)
        poison = await api.submit(uniquify(photos[0], "POISON"))
        twin = await api.submit(uniquify(photos[0], "POISON"))  # the same bytes: joins it
        healthy: list[str] = []
        # Healthy tasks all along, until the poison is out of the way.
        for n in range(400):
            image = uniquify(photos[rng.randrange(len(photos))], f"healthy-{n}")
            healthy.append(await api.submit(image))
            if n % 10 == 9:
                if client.hget(task_key(poison), "status") == b"FAILED":
                    break
                await asyncio.sleep(0.25)
    ids = [poison, twin, *healthy]
    await wait_finished(client, ids, timeout=60)
    result = await audit(client, ids, url)
    failed = result.tasks[poison]
    flowed = sum(
        1
        for task_id in healthy
        if result.tasks[task_id].get("status") == "DONE"
        and int(result.tasks[task_id]["updated_at"]) < int(failed["updated_at"])
    )

    figures.submitted, figures.faults = len(ids), int(failed["attempts"])
    figures.take(result, failed_expected=2)
    figures.notes.update(
        poison_error=failed.get("error", ""), healthy_done_while_poison_in_flight=flowed
    )
    result.assert_clean()
    assert failed["status"] == "FAILED"
    assert int(failed["attempts"]) == FAST.max_attempts
    assert f"gave up after {FAST.max_attempts} attempts" in failed["error"]
    assert result.status == {"DONE": len(healthy), "FAILED": 2}
    _, twin_view = http_get(url, f"/tasks/{twin}")
    assert twin_view["status"] == "FAILED"  # it shared the poison's fate...
    assert twin_view["error"] == failed["error"]
    assert twin_view["attempts"] == 0  # ...without ever being claimed
    assert flowed >= 10, "healthy tasks did not flow while the poison was being retried"
    status, view = http_get(url, f"/tasks/{poison}")
    assert status == 200
    assert view["status"] == "FAILED"
    assert "RESIZER_MAX_ATTEMPTS" in view["error"]


async def test_presumed_dead_but_alive(
    cluster_factory: Callable[..., Cluster], photos: list[bytes], figures: Figures
) -> None:
    """Presumed dead but alive: a worker SIGSTOPped past its lease loses the task; SIGCONTed,
    its late result is refused by the token check; the winner's outputs stand."""
    cluster = cluster_factory(FAST)
    _, url = cluster.serve()
    stalled = cluster.start("work", failpoints="during_resize=sleep:3@STALL")
    client = cluster.redis()
    async with open_session(8) as session:
        api = Api(session, url)
        task_id = await api.submit(uniquify(photos[1], "STALL"))
        wait_until(
            lambda: client.hget(task_key(task_id), "status") == b"IN_PROGRESS",
            30,
            "the stalled worker to claim the task",
        )
        stalled.send_signal(signal.SIGSTOP)  # presumed dead: no more heartbeats
        try:
            winner = cluster.start("work")
            others = [await api.submit(uniquify(photos[n], f"other-{n}")) for n in range(2, 30)]
            await wait_finished(client, [task_id], timeout=30)
            won = http_get(url, f"/tasks/{task_id}")[1]
            won_image = http_get(url, f"/tasks/{task_id}/image?size=64")[1]
        finally:
            stalled.send_signal(signal.SIGCONT)
        wait_until(
            lambda: any(
                e.get("event") == "lease.lost" and e.get("during") == "complete"
                for e in cluster.events(stalled)
            ),
            30,
            "the stalled worker's late result to be refused",
        )
    stalled.send_signal(signal.SIGTERM)
    code = await wait_exit(stalled, 30)
    ids = [task_id, *others]
    await wait_finished(client, ids, timeout=30)
    result = await audit(client, ids, url)
    after = http_get(url, f"/tasks/{task_id}")[1]
    after_image = http_get(url, f"/tasks/{task_id}/image?size=64")[1]

    figures.submitted, figures.faults = len(ids), 1
    figures.take(result)
    figures.notes.update(stalled_exit=code, attempts=after["attempts"])
    result.assert_clean()
    assert result.status == {"DONE": len(ids)}
    assert (won["status"], won["attempts"]) == ("DONE", 2)
    assert after == won  # same status, attempts and updated_at: the late result changed nothing
    assert after_image == won_image
    assert result.tasks[task_id]["worker"].endswith(f":{winner.pid}")
    assert code == 0
