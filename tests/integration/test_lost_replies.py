"""A script whose reply is lost runs twice (redis-py sends it again), and that changes nothing.

Redis is stalled with ``DEBUG SLEEP`` past the client's socket timeout while a script is in
flight: the client gives up on the first connection and sends the script again on a second;
when Redis wakes it runs both. ``INFO commandstats`` shows that it did run twice; the task's
record shows that it was processed once, with one attempt counted.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from resizer.config import Settings
from resizer.models import TaskStatus
from resizer.store import Store, client_for, core
from tests.helpers import upload

pytestmark = pytest.mark.integration

TIMEOUT = 0.3  # the client's socket timeout in these tests
STALL = 0.5  # longer than one timeout, shorter than two: exactly one re-send
IMAGES = {64: base64.b64encode(b"64"), 32: base64.b64encode(b"32")}


@pytest.fixture
async def store(real_settings: Settings) -> AsyncIterator[Store]:
    impatient = Store(client_for(real_settings.redis_url, socket_timeout=TIMEOUT), real_settings)
    # Loaded first: a script Redis does not know yet is refused (NOSCRIPT), not run, when sent.
    await impatient.load_scripts()
    yield impatient
    await impatient.close()


def evalsha_calls(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        stats: dict[str, Any] = client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    finally:
        client.close()


async def stalled(url: str, call: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``call`` while Redis sleeps; returns its result once Redis woke up."""
    sleeper = aioredis.Redis.from_url(url, socket_timeout=10)
    probe = aioredis.Redis.from_url(url, socket_timeout=10)
    try:
        # Connected first: a connection's handshake under load could outlast the probe's 50 ms
        # and pass for Redis asleep, before the sleeper has sent its command.
        await sleeper.ping()
        await probe.ping()
        sleeping = asyncio.create_task(
            sleeper.execute_command("DEBUG", "SLEEP", STALL)  # type: ignore[no-untyped-call]
        )
        # Wait until Redis is asleep: a PING then goes unanswered.
        while True:
            try:
                async with asyncio.timeout(0.05):
                    await probe.ping()
            except TimeoutError:
                break
        started = time.monotonic()
        result = await call()
        assert time.monotonic() - started > TIMEOUT, "the call did not wait for Redis"
        await sleeping
        return result
    finally:
        await sleeper.aclose()
        await probe.aclose()


async def run_twice(url: str, call: Callable[[], Awaitable[Any]]) -> Any:
    before = evalsha_calls(url)
    result = await stalled(url, call)
    assert evalsha_calls(url) - before >= 2, "the script was not sent twice"
    return result


async def test_create(store: Store, redis_url: str) -> None:
    task = await run_twice(redis_url, lambda: store.create_task(upload(b"once")))
    assert task.status is TaskStatus.WAITING
    stats = await store.stats()
    assert stats.counters["created"] == 1
    assert stats.waiting == 1


async def test_create_with_the_original_beside_the_script(
    store: Store, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Large originals go in a SET in the create's MULTI (small ones here, so that both copies
    # of the transaction reach Redis before the first connection gives up): it runs twice.
    monkeypatch.setattr(core, "_SET_BESIDE_BYTES", 8)
    task = await run_twice(redis_url, lambda: store.create_task(upload(b"beside the script")))
    assert task.status is TaskStatus.WAITING
    stats = await store.stats()
    assert (stats.counters["created"], stats.waiting) == (1, 1)
    assert await store.take(1) == task.id
    claim = await store.claim(task.id, "w1")
    assert claim is not None
    assert claim.original == b"beside the script"


async def test_claim(store: Store, redis_url: str) -> None:
    task = await store.create_task(upload(b"claimed once"))
    assert await store.take(1) == task.id
    claim = await run_twice(redis_url, lambda: store.claim(task.id, "w1"))
    assert claim is not None
    assert claim.original == b"claimed once"
    stored = await store.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (TaskStatus.IN_PROGRESS, 1)
    assert await store.complete(claim, "png", IMAGES) is True


async def test_complete(store: Store, redis_url: str) -> None:
    task = await store.create_task(upload(b"completed once"))
    assert await store.take(1) == task.id
    claim = await store.claim(task.id, "w1")
    assert claim is not None
    assert await run_twice(redis_url, lambda: store.complete(claim, "png", IMAGES)) is True
    stored = await store.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (TaskStatus.DONE, 1)
    stats = await store.stats()
    assert stats.counters["done"] == 1
    assert stats.durations["count"] == 1


@pytest.mark.parametrize("fatal", [False, True])
async def test_fail_and_retry(store: Store, redis_url: str, fatal: bool) -> None:
    task = await store.create_task(upload(b"given back once"))
    assert await store.take(1) == task.id
    claim = await store.claim(task.id, "w1")
    assert claim is not None
    if fatal:
        assert await run_twice(redis_url, lambda: store.fail(claim, "broken")) is True
    else:
        assert await run_twice(redis_url, lambda: store.retry(claim, "flaky")) == "requeued"
    stored = await store.get_task(task.id)
    assert stored is not None
    stats = await store.stats()
    if fatal:
        assert (stored.status, stats.counters["failed"], stats.waiting) == (
            TaskStatus.FAILED,
            1,
            0,
        )
    else:
        assert (stored.status, stats.counters["retried"], stats.waiting) == (
            TaskStatus.WAITING,
            1,
            1,
        )


async def test_renew(store: Store, redis_url: str) -> None:
    task = await store.create_task(upload(b"renewed"))
    assert await store.take(1) == task.id
    claim = await store.claim(task.id, "w1")
    assert claim is not None
    assert await run_twice(redis_url, lambda: store.renew(claim)) is True
    assert await store.complete(claim, "png", IMAGES) is True
