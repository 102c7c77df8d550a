"""Real ``resizer work`` processes against a real Redis: killed, stopped, stalled, raced."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest
from PIL import Image

from resizer import header
from resizer.config import Settings
from resizer.embedded import RedisServer
from resizer.models import ImageSize, Task, TaskStatus, Upload
from resizer.processes import resizer_command
from resizer.store import Store, client_for
from tests.helpers import await_until, make_image, wait_until

pytestmark = pytest.mark.integration


@attrs.define
class Processes:
    """Starts ``resizer`` subcommands as real processes; kills what is left at the end."""

    settings: Settings
    logs: Path
    started: list[subprocess.Popen[bytes]] = attrs.Factory(list)

    def start(self, *args: str, failpoints: str = "") -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.settings.to_env(), "RESIZER_FAILPOINTS": failpoints}
        log = (self.logs / f"{args[0]}-{len(self.started)}.log").open("wb")
        proc = subprocess.Popen(
            resizer_command(*args), env=env, stdout=log, stderr=subprocess.STDOUT
        )
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def procs(real_settings: Settings, tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(attrs.evolve(real_settings, lease_seconds=1, max_attempts=3), tmp_path)
    yield processes
    processes.stop_all()


@pytest.fixture
async def store(procs: Processes) -> AsyncIterator[Store]:
    opened = Store(client_for(procs.settings.redis_url), procs.settings)
    yield opened
    await opened.close()


async def submit(store: Store, data: bytes | None = None) -> str:
    data = data or make_image("JPEG", size=256, unique=True)
    task = await store.create_task(Upload.of(header.inspect(data, 10**8), data))
    return task.id


async def task_of(store: Store, task_id: str) -> Task:
    task = await store.get_task(task_id)
    assert task is not None
    return task


async def wait_status(store: Store, task_id: str, status: TaskStatus, timeout: float = 30) -> Task:
    async def reached() -> bool:
        return (await task_of(store, task_id)).status is status

    await await_until(reached, timeout, f"task {task_id} to be {status}")
    return await task_of(store, task_id)


async def assert_done_with_both_sizes(store: Store, task_id: str) -> None:
    for size in (ImageSize.S64, ImageSize.S32):
        task, image = await store.get_task_and_image(task_id, size)
        assert task is not None
        assert task.status is TaskStatus.DONE
        assert image is not None
        with Image.open(io.BytesIO(base64.b64decode(image))) as img:
            assert img.size == (int(size.value),) * 2


async def assert_queues_empty(store: Store) -> None:
    for part in store.partitions:
        assert await store.redis.llen(part.waiting) == 0
        assert await store.redis.llen(part.processing) == 0
        assert await store.redis.zcard(part.leases) == 0


@pytest.mark.topologies("single", "cluster", "sentinel")
async def test_sigkill_mid_task_is_recovered_and_done(procs: Processes, store: Store) -> None:
    victim = procs.start("work", failpoints="during_resize=sleep:60")
    task_id = await submit(store)
    await wait_status(store, task_id, TaskStatus.IN_PROGRESS)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(10) == -signal.SIGKILL
    assert (await task_of(store, task_id)).status is TaskStatus.IN_PROGRESS  # orphaned, not lost

    procs.start("work")  # its periodic recovery re-queues the task once the lease expires
    done = await wait_status(store, task_id, TaskStatus.DONE)
    assert done.attempts == 2
    await assert_done_with_both_sizes(store, task_id)
    await assert_queues_empty(store)


async def test_sigterm_finishes_the_current_task_then_exits_0(
    procs: Processes, store: Store
) -> None:
    worker = procs.start("work", failpoints="during_resize=sleep:2")
    task_id = await submit(store)
    await wait_status(store, task_id, TaskStatus.IN_PROGRESS)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    task = await task_of(store, task_id)
    assert (task.status, task.attempts) == (TaskStatus.DONE, 1)
    await assert_done_with_both_sizes(store, task_id)


async def test_a_task_that_crashes_its_worker_every_time_ends_failed(
    procs: Processes, store: Store
) -> None:
    procs.settings = attrs.evolve(procs.settings, max_attempts=2)
    store.settings = procs.settings
    task_id = await submit(store)
    for _ in range(procs.settings.max_attempts):
        crashing = procs.start("work", failpoints="after_claim=kill")
        assert crashing.wait(30) == -signal.SIGKILL
    # One more worker: its recovery pass finds the last lease expired at the cap.
    survivor = procs.start("work")
    failed = await wait_status(store, task_id, TaskStatus.FAILED)
    assert failed.attempts == 2
    assert failed.error is not None
    assert "gave up after 2 attempts" in failed.error
    await assert_queues_empty(store)
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(10) == 0


@pytest.mark.topologies("single", "cluster")
async def test_recovery_racing_live_workers_never_double_processes(
    procs: Processes, store: Store
) -> None:
    """Every task takes longer than the lease; two tight recovery loops run all along.

    Heartbeats keep every live lease, so each task is claimed exactly once.
    """
    for _ in range(2):
        procs.start("work", failpoints="during_resize=sleep:1.5")
    for _ in range(2):
        procs.start("recover", "--every", "0.1")
    ids = [await submit(store) for _ in range(6)]
    for task_id in ids:
        task = await wait_status(store, task_id, TaskStatus.DONE, timeout=60)
        assert task.attempts == 1, f"{task_id} was claimed {task.attempts} times"
        await assert_done_with_both_sizes(store, task_id)
    await assert_queues_empty(store)


async def test_a_stalled_worker_loses_its_task_and_its_late_result_is_refused(
    procs: Processes, store: Store
) -> None:
    stalled = procs.start("work", failpoints="during_resize=sleep:3")
    task_id = await submit(store, make_image("PNG", size=128))
    await wait_status(store, task_id, TaskStatus.IN_PROGRESS)
    stalled.send_signal(signal.SIGSTOP)  # presumed dead: no more heartbeats
    try:
        procs.start("work")
        winner = await wait_status(store, task_id, TaskStatus.DONE)
        assert winner.attempts == 2
        _, image_before = await store.get_task_and_image(task_id, ImageSize.S64)
    finally:
        stalled.send_signal(signal.SIGCONT)
    stalled.send_signal(signal.SIGTERM)
    assert stalled.wait(30) == 0  # it finished its (refused) task and stopped cleanly
    after, image_after = await store.get_task_and_image(task_id, ImageSize.S64)
    assert after is not None
    assert (after.status, after.attempts, after.updated_at) == (
        TaskStatus.DONE,
        2,
        winner.updated_at,
    )
    assert image_after == image_before
    log = (procs.logs / "work-0.log").read_text()
    assert "lease.lost" in log


async def test_a_worker_survives_a_redis_restart(procs: Processes, tmp_path: Path) -> None:
    """Redis goes away and comes back on the same port: the same worker process carries on."""
    server = RedisServer(directory=tmp_path / "own-redis")
    server.directory.mkdir()
    server.start()
    try:
        procs.settings = attrs.evolve(procs.settings, redis_url=server.url)
        store = Store(client_for(server.url), procs.settings)
        worker = procs.start("work")
        before = await submit(store)
        await wait_status(store, before, TaskStatus.DONE)

        server.stop()
        log = procs.logs / "work-0.log"
        wait_until(lambda: "redis.unreachable" in log.read_text(), 30, "the worker to notice")
        assert worker.poll() is None
        server = RedisServer(port=server.port, directory=tmp_path / "own-redis").start()

        store = Store(client_for(server.url), procs.settings)
        after = await submit(store)
        await wait_status(store, after, TaskStatus.DONE)
        assert worker.poll() is None
    finally:
        server.stop()


async def test_a_task_record_redis_cannot_count_on_does_not_stop_the_worker(
    procs: Processes, store: Store
) -> None:
    """Task records edited by hand or by another program: numbers that are not numbers are
    counted afresh; a record the claim cannot use at all is logged, and the worker goes on."""
    recounted, undated, unusable, fine = [await submit(store) for _ in range(4)]
    part = store.partitions[0]
    await store.redis.hset(part.task(recounted), "attempts", "x")
    await store.redis.hset(part.task(undated), "created_at", "soon")
    await store.redis.hdel(part.task(unusable), "digest")
    worker = procs.start("work")

    await wait_status(store, fine, TaskStatus.DONE)

    async def resized() -> bool:  # read as stored: clients get a 500 for a record like these
        states = [await store.redis.hget(part.task(i), "status") for i in (recounted, undated)]
        return states == [b"DONE", b"DONE"]

    await await_until(resized, 30, "the tasks with odd numbers to be resized")
    assert (await task_of(store, recounted)).attempts == 1
    await assert_done_with_both_sizes(store, recounted)
    assert await store.redis.hget(part.task(undated), "attempts") == b"1"
    log = procs.logs / "work-0.log"
    wait_until(lambda: "task.unrecoverable" in log.read_text(), 30, "a recovery pass to report it")
    assert worker.poll() is None
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    crashed = [e for e in events if e["event"] == "task.crashed"]
    assert crashed
    assert {e["task_id"] for e in crashed} == {unusable}
    assert "Traceback" in crashed[0]["exception"]
    refused = next(e for e in events if e["event"] == "task.unrecoverable")
    assert refused["task_id"] == unusable
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


async def test_recovery_recounts_attempts_that_are_not_a_number(store: Store) -> None:
    task_id = await submit(store)
    part = store.partitions[0]
    assert await store.take(1) == task_id
    claim = await store.claim(task_id, "gone")
    assert claim is not None
    await store.redis.hset(part.task(task_id), "attempts", "many")

    async def requeued() -> bool:
        return task_id in (await store.recover()).requeued

    await await_until(requeued, 10, "the expired lease to be re-queued")
    stored = await store.redis.hmget(part.task(task_id), ["status", "attempts"])
    assert stored == [b"WAITING", b"many"]
    again = await store.claim(task_id, "next")
    assert again is not None
    assert again.attempt == 1


async def test_a_bug_that_raises_on_every_attempt_fails_the_task_not_the_worker(
    procs: Processes, store: Store
) -> None:
    worker = procs.start("work", failpoints="before_complete=raise")
    task_id = await submit(store)
    failed = await wait_status(store, task_id, TaskStatus.FAILED)
    assert failed.attempts == procs.settings.max_attempts
    assert failed.error == (
        "gave up after 3 attempts (RESIZER_MAX_ATTEMPTS=3); "
        "last: InjectedFault: failpoint before_complete raised"
    )
    await assert_queues_empty(store)
    assert worker.poll() is None
    log = (procs.logs / "work-0.log").read_text()
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    given_back = [e for e in events if e["event"] in ("task.requeued", "task.failed")]
    assert [e["event"] for e in given_back] == ["task.requeued", "task.requeued", "task.failed"]
    assert all("Traceback" in e["exception"] for e in given_back)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


async def test_statistics_edited_by_hand_start_again_instead_of_failing_every_task(
    procs: Processes, store: Store
) -> None:
    part = store.partitions[0]
    await store.redis.hset(part.stats, mapping={"created": "many", "done": "1.5"})
    await store.redis.hset(part.durations, mapping={"count": "x", "sum": "y"})
    await store.redis.hset(part.claim_waits, "sum", "z")
    task_id = await submit(store)
    procs.start("work")
    await wait_status(store, task_id, TaskStatus.DONE)
    await assert_done_with_both_sizes(store, task_id)
    stats = await store.stats()
    assert (stats.counters["created"], stats.counters["done"]) == (1, 1)
    assert stats.durations["count"] == 1
    assert 0 < stats.durations["sum"] < 30
    assert 0 <= stats.claim_waits["sum"] < 30


async def test_bytes_another_program_pushed_into_a_queue_are_dropped_not_fatal(
    procs: Processes, store: Store
) -> None:
    part = store.partitions[0]
    await store.redis.lpush(part.waiting, b"\xff\xfe")
    task_id = await submit(store)
    worker = procs.start("work")
    await wait_status(store, task_id, TaskStatus.DONE)
    assert worker.poll() is None
    await assert_queues_empty(store)
    assert '"queue.entry_dropped"' in (procs.logs / "work-0.log").read_text()

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0

    # Left in flight as if by a worker from before: a recovery pass drops them too.
    await store.redis.lpush(part.processing, b"\xfe")
    await store.redis.zadd(part.leases, {b"\xfd": 0})
    recover = procs.start("recover")
    assert recover.wait(30) == 0
    await assert_queues_empty(store)
    assert (procs.logs / "recover-1.log").read_text().count('"queue.entry_dropped"') == 2
