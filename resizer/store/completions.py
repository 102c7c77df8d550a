"""Pub/sub fan-in: one subscription per process, many local waiters woken from it.

``Completions`` wakes long-polling requests when their task finishes; ``Signal`` wakes an idle
worker when work is queued in any partition. Neither holds a Redis connection per waiter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress

from resizer.backoff import Backoff
from resizer.store.connection import REDIS_DOWN, Client


class _Listener:
    """Keeps one subscription to ``channels`` alive, handing every message to ``on_message``;
    calls ``on_gap`` whenever messages may have been missed (a dropped subscription), and
    ``on_subscribed`` once each subscription is in place (what was published before it was
    missed too)."""

    def __init__(
        self,
        client: Client,
        channels: Sequence[str],
        on_message: Callable[[str], None],
        on_gap: Callable[[], None],
        on_subscribed: Callable[[], None] = lambda: None,
    ) -> None:
        self._client = client
        self._channels = list(channels)
        self._on_message = on_message
        self._on_gap = on_gap
        self._on_subscribed = on_subscribed
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name=f"subscription {self._channels[0]}")

    async def stop(self) -> None:
        # Not cancel() alone: redis-py's pub/sub read does not always honour a cancellation (it
        # can hang in its cleanup). The listener checks this flag between short socket waits.
        self._stopping = True
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=2.0)
            self._task.cancel()

    async def _listen(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self._channels)
                self.subscribed.set()
                self._on_subscribed()
                backoff.reset()
                while not self._stopping:
                    # A local wait on the socket (no command is sent): it only bounds how long
                    # a stop request waits.
                    message = await pubsub.get_message(timeout=0.25)
                    if message is not None and message["type"] == "message":
                        data = message["data"]
                        self._on_message(data.decode() if isinstance(data, bytes) else data)
            except REDIS_DOWN:
                self.subscribed.clear()
                self._on_gap()
                await asyncio.sleep(backoff.next())
            finally:
                with suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)  # type: ignore[no-untyped-call]


class Completions:
    """Wakes local waiters when the task they watch finishes (``{T}:finished`` channels).

    Long-polling requests register a future for their task id; the one listener resolves them.
    If the subscription drops, every waiter is woken so it re-reads its task: none misses a
    finish by more than its own timeout.
    """

    def __init__(self, client: Client, channels: Sequence[str]) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._listener = _Listener(client, channels, self._wake, self._wake_all)

    @property
    def subscribed(self) -> asyncio.Event:
        return self._listener.subscribed

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

    @asynccontextmanager
    async def watch(self, task_id: str) -> AsyncIterator[asyncio.Future[None]]:
        """A future resolved when ``task_id`` finishes. Enter it *before* re-reading the task."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, set()).add(future)
        try:
            yield future
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[task_id]

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def _wake(self, task_id: str) -> None:
        for future in self._waiters.get(task_id, ()):
            if not future.done():
                future.set_result(None)

    def _wake_all(self) -> None:
        for task_id in list(self._waiters):
            self._wake(task_id)


class Signal:
    """Collects what is published on one channel: the messages since the last ``drain``, and
    whether some may have been missed (a dropped subscription). ``wait`` wakes on either."""

    def __init__(self, client: Client, channel: str) -> None:
        self._event = asyncio.Event()
        self._messages: set[str] = set()
        self._gap = False
        self._listener = _Listener(
            client, [channel], self._on_message, self._on_gap, on_subscribed=self._on_gap
        )

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

    def _on_message(self, message: str) -> None:
        self._messages.add(message)
        self._event.set()

    def _on_gap(self) -> None:
        self._gap = True
        self._event.set()

    def drain(self) -> tuple[set[str], bool]:
        """The distinct messages since the last call, and whether any may have been missed."""
        messages, gap = self._messages, self._gap
        self._messages, self._gap = set(), False
        self._event.clear()
        return messages, gap

    async def wait(self, timeout: float) -> bool:
        """True once something arrived since the last ``drain``, False after ``timeout``."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        return self._event.is_set()
