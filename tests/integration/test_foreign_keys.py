"""Another program's key under one of resizer's names, of another type (WRONGTYPE).

resizer wants a Redis database of its own (docs/deployment.md), but a shared one happens: an
operator's typo, another service's keys, an old deployment's. Such a key made every POST a 500
with a traceback, workers exit in a loop, and a script that failed halfway left what it had
written (Redis rolls nothing back): a task stored but never queued. Now every script checks its
keys first and writes nothing, naming the key; the API answers 503, workers and recovery wait it
out like an outage, and all goes on once the key is removed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import structlog.testing
from aiohttp import web
from aiohttp.test_utils import TestClient

from resizer.api import make_app
from resizer.models import Claim
from resizer.store import Store, keys
from resizer.store.connection import WrongType
from tests.helpers import assert_untouched, await_done, backing_off, make_image, snapshot, upload

pytestmark = pytest.mark.integration

PART = keys.partition(0)
# Each operation, the state it runs from, and the keys (as named in resizer.store.keys) its
# script touches from there with a command of their type.
OPERATIONS = {
    "create": ("created", ["task", "blob", "content", "waiting", "stats"]),
    "claim": ("taken", ["task", "leases", "claim_waits", "blob"]),
    "complete": ("claimed", ["task", "processing", "leases", "content", "stats", "durations"]),
    "fail": ("claimed", ["task", "processing", "leases", "content", "stats", "failures"]),
    "retry": ("claimed", ["task", "processing", "leases", "waiting", "stats"]),
    "renew": ("claimed", ["task", "leases"]),
    "delete": ("created", ["task", "content"]),
    "recover": ("expired", ["task", "processing", "leases", "waiting", "content", "failures"]),
}
CASES = [(op, key) for op, (_, names) in OPERATIONS.items() for key in names]


class Scene:
    """A task brought to a state, on a real Redis; ``run`` does one operation on it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.upload = upload(make_image("PNG", size=80, unique=True), real=True)
        self.task_id = keys.new_task_id(0)
        self.claim: Claim | None = None

    async def bring_to(self, state: str, operation: str) -> None:
        # Another task first, done: the store announces its partitions with its first write.
        other = await self.store.create_task(upload(make_image("PNG", size=70), real=True))
        assert await self.store.take(1) == other.id
        claim = await self.store.claim(other.id, "worker-0")
        assert claim is not None
        assert await self.store.complete(claim, "png", {64: b"a", 32: b"b"})
        if operation == "create":
            return
        await self.store.create_task(self.upload, self.task_id)
        if state == "created":
            return
        assert await self.store.take(1) == self.task_id
        if state == "taken":
            return
        self.claim = await self.store.claim(self.task_id, "worker-1")
        assert self.claim is not None
        if state == "expired":
            await self.store.redis.zadd(PART.leases, {self.task_id: 0})

    def key(self, name: str) -> str:
        if name in ("task",):
            return PART.task(self.task_id)
        if name in ("blob", "content"):
            return str(getattr(PART, name)(self.upload.digest))
        return str(getattr(PART, name))

    async def run(self, operation: str) -> object:
        store, claim = self.store, self.claim
        if operation == "create":
            return await store.create_task(self.upload, self.task_id)
        if operation == "claim":
            return await store.claim(self.task_id, "worker-1")
        if operation == "delete":
            return await store.delete_task(self.task_id)
        if operation == "recover":
            return await store.recover()
        assert claim is not None
        if operation == "complete":
            return await store.complete(claim, "png", {64: b"a", 32: b"b"})
        if operation == "fail":
            return await store.fail(claim, "broken")
        if operation == "retry":
            return await store.retry(claim, "again")
        assert operation == "renew"
        return await store.renew(claim)


@pytest.mark.parametrize(("operation", "name"), CASES)
async def test_a_script_refuses_a_foreign_key_and_writes_nothing(
    real_store: Store, operation: str, name: str
) -> None:
    scene = Scene(real_store)
    state, _ = OPERATIONS[operation]
    await scene.bring_to(state, operation)
    redis = real_store.redis
    foreign = scene.key(name)
    await redis.delete(foreign)
    if name == "blob":  # ours is a string
        await redis.rpush(foreign, "another program's")
    else:
        await redis.set(foreign, "another program's")
    before = await snapshot(redis)
    with pytest.raises(WrongType) as refused:
        await scene.run(operation)
    assert foreign in str(refused.value)
    assert_untouched(before, await snapshot(redis))


async def test_the_api_answers_503_and_goes_on_once_the_key_is_gone(
    real_store: Store,
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]],
) -> None:
    client = await aiohttp_client(make_app(real_store.settings, real_store))
    redis = real_store.redis
    await redis.set(PART.waiting, "another program's")
    image = make_image("PNG", size=80, unique=True)
    with structlog.testing.capture_logs() as events:
        response = await client.post("/tasks", data=image, headers={"Content-Type": "image/png"})
    assert response.status == 503, await response.text()
    assert response.headers["Retry-After"] == "5"
    body = await response.json()
    assert body["error"]["code"] == "unavailable"
    assert "Redis database of its own" in body["error"]["message"]
    # The operator reads which key, in the log.
    (outage,) = [e for e in events if e["event"].startswith("redis.")]
    assert (outage["event"], outage["log_level"]) == ("redis.wrong_type", "warning")
    assert PART.waiting in outage["error"]
    # No task, original or content stored; the store's first write announced its partitions.
    assert {key.decode() async for key in redis.scan_iter()} == {PART.waiting, keys.PARTITIONS}
    await redis.delete(PART.waiting)
    response = await client.post("/tasks", data=image, headers={"Content-Type": "image/png"})
    assert response.status == 201, await response.text()


async def test_a_worker_waits_a_foreign_key_out_instead_of_exiting(real_store: Store) -> None:
    task = await real_store.create_task(upload(make_image("PNG", size=64), real=True))
    await real_store.redis.set(PART.processing, "another program's")
    async with backing_off(real_store, "redis.wrong_type"):
        await real_store.redis.delete(PART.processing)
        await await_done(real_store, task.id, 30, "the task to be resized once the key is gone")


async def test_a_partition_count_that_is_not_a_number_is_announced_anew(real_store: Store) -> None:
    await real_store.redis.set(keys.PARTITIONS, "eight")
    task = await real_store.create_task(upload(make_image("PNG", size=64), real=True))
    assert await real_store.get_task(task.id) == task
    assert (
        await real_store.redis.get(keys.PARTITIONS) == str(real_store.settings.partitions).encode()
    )
    assert await real_store.take(1) == task.id
