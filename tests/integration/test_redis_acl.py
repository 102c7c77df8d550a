"""A Redis whose ACL denies resizer's user what it needs: waited out, never a crash.

Managed Redis services hand out ACL users, and on Redis >= 7 a user made with ``ACL SETUSER``
has no pub/sub channels unless given them. A denied command (``NOPERM``) was a 500 with a
traceback in the API and a worker exiting with one; a denied channel failed the complete
script's PUBLISH after its writes, and the worker exited. Now the API answers 503, workers back
off logging ``redis.permission_denied``, scripts check their channels before writing, and all
goes on once the operator grants what is missing. The ACL docs/deployment.md gives is tested to
run a task end to end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import pytest
import redis.asyncio as aioredis
import structlog.testing
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.exceptions import NoPermissionError

from resizer.api import make_app
from resizer.config import Settings
from resizer.embedded import RedisServer
from resizer.store import Store, client_for, keys
from resizer.store.completions import Completions
from resizer.worker import Worker
from tests.helpers import (
    assert_untouched,
    await_done,
    await_until,
    backing_off,
    make_image,
    snapshot,
    upload,
)
from tests.topologies import redis7_binary

pytestmark = pytest.mark.integration

PART = keys.partition(0)
# What docs/deployment.md gives resizer's user: its keys and channels, every command but the
# dangerous ones, and the two of those it reads (INFO for metrics, CONFIG GET for the policy).
DOCUMENTED_ACL = [
    *("~{resizer*", "~resizer:*", "&{resizer*", "&resizer:*"),
    *("+@all", "-@dangerous", "+info", "+config|get"),
]


@attrs.frozen
class Acl:
    """A Redis with a user ``app`` whose rules the test sets; ``admin`` is the default user."""

    admin: aioredis.Redis
    url: str  # as ``app``

    async def rules(self, *rules: str) -> None:
        await self.admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", "app", "reset", "on", ">pw", *rules
        )

    async def grant(self, *rules: str) -> None:
        await self.admin.execute_command("ACL", "SETUSER", "app", *rules)  # type: ignore[no-untyped-call]


async def _acl(binary: str | None) -> AsyncIterator[Acl]:
    with RedisServer(binary=binary) as server:
        admin = aioredis.Redis.from_url(server.url)
        await admin.execute_command("ACL", "SETUSER", "app", "on", ">pw")  # type: ignore[no-untyped-call]
        try:
            yield Acl(admin, f"redis://app:pw@127.0.0.1:{server.port}/0")
        finally:
            await admin.aclose()


@pytest.fixture
async def acl() -> AsyncIterator[Acl]:
    async for found in _acl(None):
        yield found


@pytest.fixture
async def acl7() -> AsyncIterator[Acl]:
    binary = redis7_binary()
    if binary is None:
        pytest.skip("no redis-server >= 7 (channel permissions, redis.acl_check_cmd)")
    async for found in _acl(binary):
        yield found


@pytest.fixture
async def store_as_app(acl: Acl, settings: Settings) -> AsyncIterator[Store]:
    store = Store(client_for(acl.url), attrs.evolve(settings, redis_url=acl.url))
    yield store
    await store.close()


async def test_the_api_answers_503_while_scripts_are_denied(
    acl: Acl,
    store_as_app: Store,
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]],
) -> None:
    await acl.rules("~*", "&*", "+@all", "-@scripting")
    with structlog.testing.capture_logs() as started:
        client = await aiohttp_client(make_app(store_as_app.settings, store_as_app))
    # The web starts all the same, and says why it could not load its scripts.
    (warned,) = [e for e in started if e["event"] == "redis.permission_denied"]
    assert "script" in warned["error"]
    image = make_image("PNG", size=80, unique=True)
    with structlog.testing.capture_logs() as events:
        response = await client.post("/tasks", data=image, headers={"Content-Type": "image/png"})
    assert response.status == 503, await response.text()
    assert response.headers["Retry-After"] == "5"
    error = (await response.json())["error"]
    assert error["code"] == "unavailable"
    assert "denies resizer's user" in error["message"]
    denied = [e for e in events if e["event"] == "redis.permission_denied"]
    assert denied, events
    assert "evalsha" in denied[0]["error"] or "script" in denied[0]["error"]
    await acl.grant("+@scripting")
    response = await client.post("/tasks", data=image, headers={"Content-Type": "image/png"})
    assert response.status == 201, await response.text()


async def test_a_worker_waits_for_its_permissions_instead_of_exiting(
    acl: Acl, store_as_app: Store
) -> None:
    await acl.rules("~*", "&*", "+@all")
    task = await store_as_app.create_task(upload(make_image("PNG", size=64), real=True))
    await acl.rules("~*", "&*", "+@all", "-@scripting")
    worker_store = Store(client_for(acl.url), store_as_app.settings)
    try:
        async with backing_off(worker_store, "redis.permission_denied"):
            await acl.grant("+@scripting")
            await await_done(store_as_app, task.id, 30, "the task to be resized once allowed")
    finally:
        await worker_store.close()


async def test_a_denied_channel_fails_the_complete_script_with_nothing_written(
    acl7: Acl, settings: Settings
) -> None:
    # What a user made on Redis 7 has by default: every key and command, no channel.
    await acl7.rules("~*", "resetchannels", "+@all")
    store = Store(client_for(acl7.url), attrs.evolve(settings, redis_url=acl7.url))
    try:
        task = await store.create_task(upload(make_image("PNG", size=64), real=True))
        assert await store.take(1) == task.id
        claim = await store.claim(task.id, "worker-1")
        assert claim is not None
        before = await snapshot(acl7.admin)
        with pytest.raises(NoPermissionError, match=PART.finished):
            await store.complete(claim, "png", {64: b"a", 32: b"b"})
        assert_untouched(before, await snapshot(acl7.admin))
        # The subscription the web keeps for long-polls says why it has none.
        with structlog.testing.capture_logs() as events:
            completions = Completions(
                store.redis, lambda: store.finished_channels, store.sharded_pubsub
            )
            await completions.start()

            async def logged() -> bool:
                return any(e["event"] == "redis.permission_denied" for e in events)

            await await_until(logged, 10, "the denied subscription to be logged")
            await completions.stop()
        await acl7.grant("allchannels")
        assert await store.complete(claim, "png", {64: b"a", 32: b"b"})
    finally:
        await store.close()


async def test_the_documented_acl_runs_a_task_end_to_end(acl7: Acl, settings: Settings) -> None:
    await acl7.rules(*DOCUMENTED_ACL)
    store = Store(client_for(acl7.url), attrs.evolve(settings, redis_url=acl7.url, partitions=2))
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(store, store.settings).run(stop))
    try:
        await store.check_memory_policy()
        await store.load_scripts()
        created = [
            await store.create_task(upload(make_image("PNG", size=64, unique=True), real=True))
            for _ in range(4)
        ]
        for task in created:
            await await_done(store, task.id, 30, "a task run by the documented ACL's user")
        info = await store.info(failures=5)
        assert info is not None
    finally:
        stop.set()
        await asyncio.wait_for(worker, 10)
        await store.close()
