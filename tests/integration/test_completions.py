"""The web's one subscription for long-polls, on a real Redis, against what others publish."""

from __future__ import annotations

import asyncio

import pytest
import structlog.testing

from resizer.store import Completions, Store

pytestmark = pytest.mark.integration


async def test_a_message_that_is_not_utf8_wakes_nobody_and_keeps_the_subscription(
    real_store: Store,
) -> None:
    completions = Completions(real_store.redis, lambda: real_store.finished_channels)
    await completions.start()
    try:
        await asyncio.wait_for(completions.subscribed.wait(), 10)
        (channel,) = real_store.finished_channels
        with structlog.testing.capture_logs() as events:
            async with completions.watch("a") as a, completions.watch("b") as b:
                await real_store.redis.publish(channel, b"\xff\xfe")
                await real_store.redis.publish(channel, "a")
                await asyncio.wait_for(a, 10)
                assert not b.done()  # not woken by a dropped subscription
        assert completions.subscribed.is_set()
        assert [e for e in events if e["event"] == "subscription.failed"] == []
    finally:
        await completions.stop()
