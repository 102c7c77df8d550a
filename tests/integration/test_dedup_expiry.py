"""Deduplication against real expiry: a real Redis server expires keys on its own clock."""

from __future__ import annotations

import asyncio
import base64

import attrs
import pytest

from resizer.config import Settings
from resizer.models import TaskStatus
from resizer.store import Store, client_for
from resizer.store.keys import task_key
from tests.helpers import upload

pytestmark = pytest.mark.integration


@pytest.mark.topologies("single", "cluster")
async def test_tasks_that_joined_a_waiting_task_outlast_its_own_ttl_and_finish(
    real_settings: Settings,
) -> None:
    redis = client_for(real_settings.redis_url)
    short = Store(redis, attrs.evolve(real_settings, ttl_seconds=1))
    long = Store(redis, attrs.evolve(real_settings, ttl_seconds=60))
    try:
        queued = await short.create_task(upload(b"same bytes"))
        joined = await long.create_task(upload(b"same bytes"))
        # Wait, on Redis's own clock, until the queued task's own TTL has run out: no worker has
        # reached it (a backlog longer than the TTL).
        ends_ms = queued.created_at.timestamp() * 1000 + 1000
        while True:
            seconds, micros = await redis.time()
            if seconds * 1000 + micros // 1000 > ends_ms + 100:
                break
            await asyncio.sleep(0.05)
        assert await redis.exists(task_key(queued.id)) == 1
        task_id = await long.take(1.0)
        assert task_id == queued.id
        claim = await long.claim(task_id, "w1")
        assert claim is not None
        images = {64: base64.b64encode(b"64"), 32: base64.b64encode(b"32")}
        assert await long.complete(claim, "png", images) is True
        finished = await long.get_task(joined.id)
        assert finished is not None
        assert finished.status is TaskStatus.DONE
    finally:
        await redis.aclose()  # the two stores share this client
