"""A Redis that answers but takes no writes for now: the API says 503, a worker waits it out.

Three ways a Redis refuses writes while it answers reads: its last save to disk failed
(``-MISCONF``, with save points set; it refuses PING too), fewer replicas than
``min-replicas-to-write`` are in reach (``-NOREPLICAS``), or it became a replica (``-READONLY``,
a primary demoted where the clients still point). A fourth refuses everything: a script running
past its time limit (``-BUSY``). Each was a 500 with a traceback in the API and a crashed worker.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import redis.asyncio as aioredis
import structlog.testing
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.exceptions import ResponseError

from resizer.api import make_app
from resizer.config import Settings
from resizer.embedded import RedisServer, free_port
from resizer.store import Store, client_for
from resizer.store.connection import RedisBusy
from tests.helpers import await_done, await_until, backing_off, make_image, upload

pytestmark = pytest.mark.integration

WAYS = ["misconf", "noreplicas", "readonly", "busy"]
EVENTS = {"busy": "redis.busy"}  # the others: redis.refusing_writes


@attrs.define
class Refusing:
    store: Store
    directory: Path
    url: str
    script: asyncio.Task[object] | None = None

    async def refuse(self, way: str) -> None:
        redis = self.store.redis
        if way == "busy":
            await redis.config_set("lua-time-limit", "100")
            looping = aioredis.Redis.from_url(self.url)

            async def loop() -> object:
                try:
                    return await looping.eval("while true do end", 0)
                except ResponseError as exc:
                    return exc  # killed
                finally:
                    await looping.aclose()

            self.script = asyncio.create_task(loop())

            async def busy() -> bool:
                try:
                    await redis.ping()
                except RedisBusy:
                    return True
                return False

            await await_until(busy, 10, "Redis to be busy")
        elif way == "misconf":
            # A save that cannot write its file: Redis's directory is gone.
            await redis.config_set("save", "3600 1")
            shutil.rmtree(self.directory)
            await redis.bgsave()

            async def failed() -> bool:
                info = await redis.info("persistence")
                return bool(info["rdb_last_bgsave_status"] == "err")

            await await_until(failed, 10, "the save to fail")
        elif way == "noreplicas":
            await redis.config_set("min-replicas-to-write", "1")
        else:
            await redis.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))

    async def allow(self, way: str) -> None:
        redis = self.store.redis
        if way == "busy":
            assert self.script is not None
            await redis.script_kill()
            await asyncio.wait_for(self.script, 10)
        elif way == "misconf":
            await redis.config_set("save", "")  # no save points: failed saves stop nothing
        elif way == "noreplicas":
            await redis.config_set("min-replicas-to-write", "0")
        else:
            await redis.execute_command("REPLICAOF", "NO", "ONE")


@pytest.fixture
async def refusing(tmp_path: Path, settings: Settings) -> AsyncIterator[Refusing]:
    """A store on a Redis of its own, to be made to refuse writes."""
    directory = tmp_path / "data"
    directory.mkdir()
    with RedisServer(directory=directory) as srv:
        store = Store(client_for(srv.url), attrs.evolve(settings, redis_url=srv.url))
        yield Refusing(store, directory, srv.url)
        await store.close()


# Redis 6.2 lets a Lua script write past min-replicas-to-write (7 does not), and a task is
# created by a script: on 6.2 the POST succeeds, as Redis allows it.
@pytest.mark.parametrize("way", ["misconf", "readonly", "busy"])
async def test_the_api_answers_503_json_and_stores_nothing(
    refusing: Refusing,
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]],
    way: str,
) -> None:
    store = refusing.store
    client = await aiohttp_client(make_app(store.settings, store))
    keys_before = await store.redis.dbsize()
    await refusing.refuse(way)
    image = make_image("PNG", size=80, unique=True)
    with structlog.testing.capture_logs() as events:
        response = await client.post("/tasks", data=image, headers={"Content-Type": "image/png"})
    assert response.status == 503, await response.text()
    # The operator reads why in the log, in Redis's own words.
    (outage,) = [e for e in events if e["event"].startswith("redis.")]
    assert outage["event"] == ("redis.busy" if way == "busy" else "redis.refusing_writes")
    assert outage["log_level"] == "warning"
    assert {"misconf": "MISCONF", "readonly": "read only", "busy": "busy"}[way] in outage["error"]
    assert response.headers["Retry-After"] == "5"
    body = await response.json()
    assert body["error"]["code"] == "unavailable"
    assert "task store (Redis)" in body["error"]["message"]
    assert (await client.get("/ready")).status in (200, 503)  # PING is refused on some
    await refusing.allow(way)
    assert await store.redis.dbsize() == keys_before
    response = await client.post("/tasks", data=image, headers={"Content-Type": "image/png"})
    assert response.status == 201, await response.text()


@pytest.mark.parametrize("way", WAYS)
async def test_a_worker_waits_for_writes_instead_of_crashing(refusing: Refusing, way: str) -> None:
    store = refusing.store
    task = await store.create_task(upload(make_image("PNG", size=64), real=True))
    await refusing.refuse(way)
    async with backing_off(store, EVENTS.get(way, "redis.refusing_writes")):
        await refusing.allow(way)
        await await_done(store, task.id, 30, "the task to be resized once Redis takes writes")
