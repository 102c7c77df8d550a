"""The worker loop in-process on fakeredis: outcomes and the events it logs."""

from __future__ import annotations

import asyncio

import pytest
import structlog
from structlog.testing import capture_logs

from resizer import header, worker
from resizer.models import TaskStatus, Thumbnail, Upload
from resizer.store import Store
from resizer.worker import Worker
from tests.helpers import await_until, make_image


async def submit(store: Store, data: bytes) -> str:
    return (await store.create_task(Upload.of(header.inspect(data, 10**8), data))).id


async def run(store: Store, tasks: int) -> None:
    async with asyncio.timeout(20):
        await Worker(store, store.settings, name="test").run(asyncio.Event(), max_tasks=tasks)


async def test_each_transition_is_one_event_with_the_task_id_bound(fake_store: Store) -> None:
    task_id = await submit(fake_store, make_image("PNG"))
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        await run(fake_store, 1)
    task_events = [e for e in events if e["event"].startswith("task.")]
    assert [e["event"] for e in task_events] == ["task.claimed", "task.done"]
    assert all(e["task_id"] == task_id and e["attempt"] == 1 for e in task_events)
    task = await fake_store.get_task(task_id)
    assert task is not None
    assert task.status is TaskStatus.DONE


async def test_an_undecodable_image_fails_at_once(fake_store: Store) -> None:
    png = make_image("PNG", size=64)
    task_id = await submit(fake_store, png[:60] + bytes(len(png) - 60))
    with capture_logs() as events:
        await run(fake_store, 1)
    task = await fake_store.get_task(task_id)
    assert task is not None
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 1)
    assert [e["event"] for e in events if e["event"].startswith("task.")] == [
        "task.claimed",
        "task.failed",
    ]


async def test_an_unexpected_error_is_retried_up_to_the_cap(
    fake_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    def flaky(original: bytes, max_decode_bytes: int) -> list[Thumbnail]:
        nonlocal calls
        calls += 1
        raise MemoryError("simulated")

    monkeypatch.setattr(worker, "_resize", flaky)
    task_id = await submit(fake_store, make_image("PNG"))
    with capture_logs() as events:
        await run(fake_store, 3)
    assert calls == fake_store.settings.max_attempts == 3
    task = await fake_store.get_task(task_id)
    assert task is not None
    assert task.status is TaskStatus.FAILED
    assert task.error is not None
    assert "MemoryError: simulated" in task.error
    outcomes = [e["event"] for e in events if e["event"] in ("task.requeued", "task.failed")]
    assert outcomes == ["task.requeued", "task.requeued", "task.failed"]


async def test_a_transient_error_then_success(
    fake_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = worker._resize
    failures = iter([True])

    def once_flaky(original: bytes, max_decode_bytes: int) -> list[Thumbnail]:
        if next(failures, False):
            raise OSError("disk hiccup")
        return real(original, max_decode_bytes)

    monkeypatch.setattr(worker, "_resize", once_flaky)
    task_id = await submit(fake_store, make_image("JPEG"))
    await run(fake_store, 2)
    task = await fake_store.get_task(task_id)
    assert task is not None
    assert (task.status, task.attempts) == (TaskStatus.DONE, 2)


async def test_a_crash_on_every_task_slows_the_worker_down_instead_of_draining_the_queue(
    fake_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_claim(task_id: str, worker: str, token: str | None = None) -> None:
        raise RuntimeError("a bug in every claim")

    monkeypatch.setattr(fake_store, "claim", broken_claim)
    for _ in range(5):
        await submit(fake_store, make_image("PNG", unique=True))
    stop = asyncio.Event()
    with capture_logs() as events:
        running = asyncio.create_task(Worker(fake_store, fake_store.settings, name="t").run(stop))

        async def crashed_four_times() -> bool:
            return len([e for e in events if e["event"] == "task.crashed"]) >= 4

        await await_until(crashed_four_times, 10, "four crashes")
        stop.set()
        await asyncio.wait_for(running, 10)
    crashed = [e for e in events if e["event"] == "task.crashed"]
    assert all(e["exc_info"] is True for e in crashed)  # logged with its traceback
    pauses = [e["pause"] for e in crashed]
    assert pauses == sorted(pauses)  # each crash in a row waits at least as long
    assert pauses[3] >= 2 * pauses[0]
    # Every id it took waits in the processing list for recovery: none lost, none claimed.
    part = fake_store.partitions[0]
    assert await fake_store.redis.llen(part.processing) == len(pauses)
    assert await fake_store.redis.llen(part.waiting) == 5 - len(pauses)
