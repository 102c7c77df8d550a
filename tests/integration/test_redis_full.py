"""A Redis at its ``maxmemory`` with ``noeviction``: the API says 507, a worker waits it out.

Found by the chaos harness (tests/chaos, scenario 9). Redis refuses a write with ``-OOM ...``;
redis-py raises ``OutOfMemoryError`` for a plain command, but a write refused inside a Lua
script comes back as ``ResponseError("Error running script ... -OOM command not allowed ...")``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from resizer.api import make_app
from resizer.config import Settings
from resizer.embedded import RedisServer
from resizer.store import Store, client_for
from resizer.worker import Worker
from tests.helpers import await_done, make_image, upload

pytestmark = pytest.mark.integration


@pytest.fixture
async def full_store(tmp_path: Path, settings: Settings) -> AsyncIterator[Store]:
    """A store on a Redis of its own, ready to be made full with ``fill``."""
    with RedisServer(directory=tmp_path, extra_args=["--maxmemory-policy", "noeviction"]) as srv:
        store = Store(client_for(srv.url), attrs.evolve(settings, redis_url=srv.url))
        yield store
        await store.close()


async def fill(store: Store) -> None:
    """Used memory over ``maxmemory``: every write that may grow memory is refused."""
    await store.redis.config_set("maxmemory", "1")


async def unfill(store: Store) -> None:
    await store.redis.config_set("maxmemory", "0")


async def test_the_api_answers_507_json_and_stores_nothing(
    full_store: Store, aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
) -> None:
    import base64

    client = await aiohttp_client(make_app(full_store.settings, full_store))
    keys_before = await full_store.redis.dbsize()
    await fill(full_store)
    data = base64.b64encode(make_image("PNG", size=80)).decode()
    response = await client.post("/tasks", json={"data": data})
    assert response.status == 507
    assert response.headers["Retry-After"] == "60"
    assert response.content_type == "application/json"
    assert (await response.json())["error"]["code"] == "storage_full"
    assert await full_store.redis.dbsize() == keys_before
    await unfill(full_store)
    assert (await client.post("/tasks", json={"data": data})).status == 201


async def test_a_worker_waits_for_memory_instead_of_crashing(full_store: Store) -> None:
    task = await full_store.create_task(upload(make_image("PNG", size=64), real=True))
    await fill(full_store)
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(full_store, full_store.settings).run(stop))
    try:
        await asyncio.sleep(0.5)  # the worker meets the full Redis: it must back off, not die
        assert not worker.done(), worker.exception()
        await unfill(full_store)
        await await_done(full_store, task.id, 20, "the task to be DONE once memory frees")
    finally:
        stop.set()
        await asyncio.wait_for(worker, 10)
