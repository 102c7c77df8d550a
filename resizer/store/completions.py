"""Pub/sub fan-in: one subscription per process, many local waiters woken from it.

``Completions`` wakes long-polling requests when their task finishes; ``Signal`` wakes an idle
worker when work is queued in any partition. Neither holds a Redis connection per waiter.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeAlias

import redis.exceptions
import structlog

from resizer.backoff import Backoff
from resizer.store.connection import REDIS_DOWN, Client

log = structlog.get_logger("resizer.store")

Channels: TypeAlias = Callable[[], Sequence[str]]
Sharded: TypeAlias = Callable[[], Awaitable[bool]]


async def _not_sharded() -> bool:
    return False


class _Listener:
    """Keeps one subscription to ``channels()`` alive, handing every message to ``on_message``;
    calls ``on_gap`` whenever messages may have been missed (a dropped subscription), and
    ``on_subscribed`` once each subscription is in place (what was published before it was
    missed too).

    Where ``sharded()`` says so (a Redis Cluster with sharded pub/sub), the channels are shard
    channels: one SSUBSCRIBE connection per primary that owns some of them, each read on its own
    (redis-py's ``get_sharded_message`` would wait out one primary's timeout before reading the
    next).
    """

    def __init__(
        self,
        client: Client,
        channels: Channels,
        on_message: Callable[[str], None],
        on_gap: Callable[[], None],
        on_subscribed: Callable[[], None] = lambda: None,
        sharded: Sharded = _not_sharded,
    ) -> None:
        self._client = client
        self._channels = channels
        self._on_message = on_message
        self._on_gap = on_gap
        self._on_subscribed = on_subscribed
        self._sharded = sharded
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._renew = False
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="subscription")

    async def stop(self) -> None:
        # Not cancel() alone: redis-py's pub/sub read does not always honour a cancellation (it
        # can hang in its cleanup). The listener checks this flag between short socket waits.
        self._stopping = True
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=2.0)
            self._task.cancel()

    def resubscribe(self) -> None:
        """Subscribe again to ``channels()``, which have changed."""
        self._renew = True

    async def _listen(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            pubsub: Any = None
            channels: list[Any] = []
            try:
                sharded = await self._sharded()
                channels = list(self._channels())
                self._renew = False
                if sharded:
                    pubsub = self._client.pubsub()
                    await pubsub.ssubscribe(*channels)
                    nodes = list(pubsub.node_pubsub_mapping)
                    reads = [self._shard_reader(pubsub, name) for name in nodes]
                else:
                    pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                    await pubsub.subscribe(*channels)
                    reads = [functools.partial(pubsub.get_message, timeout=0.25)]
                self.subscribed.set()
                self._on_subscribed()
                backoff.reset()
                await self._read_all(reads)
                if self._renew:
                    self._on_gap()
            except Exception as exc:
                # Redis gone, or (a cluster) a channel's slot now served elsewhere: subscribe
                # again, after a pause. Anything else is logged, and retried all the same: a
                # listener that died would leave its waiters to their timeouts.
                if isinstance(exc, redis.exceptions.NoPermissionError):
                    log.warning("redis.permission_denied", error=str(exc), channels=channels)
                elif not isinstance(exc, (*REDIS_DOWN, redis.exceptions.ResponseError)):
                    log.warning("subscription.failed", error=repr(exc))
                self.subscribed.clear()
                self._on_gap()
                await asyncio.sleep(backoff.next())
            finally:
                if pubsub is not None:
                    with suppress(Exception):
                        await asyncio.wait_for(pubsub.aclose(), 1.0)

    def _shard_reader(self, pubsub: Any, node_name: str) -> Callable[[], Awaitable[Any]]:
        node = self._client.get_node(node_name=node_name)  # type: ignore[union-attr]

        async def read() -> Any:
            if node_name not in pubsub.node_pubsub_mapping:
                # redis-py dropped that node's subscription (its slots moved): start over.
                raise redis.exceptions.ConnectionError(f"no subscription on {node_name} any more")
            return await pubsub.get_sharded_message(
                ignore_subscribe_messages=True, timeout=0.25, target_node=node
            )

        return read

    async def _read_all(self, reads: list[Callable[[], Awaitable[Any]]]) -> None:
        """Run every reader until they stop; the first error stops the others, then is raised."""
        broken = asyncio.Event()
        outcomes = await asyncio.gather(
            *(self._read(read, broken) for read in reads), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _read(self, read: Callable[[], Awaitable[Any]], broken: asyncio.Event) -> None:
        """Hand on what ``read`` gets until a stop, a renewal, or a sibling reader's error."""
        try:
            while not (self._stopping or self._renew or broken.is_set()):
                # A local wait on the socket (no command is sent): it only bounds how long a
                # stop request waits.
                message = await read()
                if message is not None and message["type"] in ("message", "smessage"):
                    data = message["data"]
                    # Bytes that are not UTF-8 are no task id nor tag of ours (another
                    # program's): decoded as they are, to match nothing, rather than breaking
                    # the subscription and waking every waiter at each one.
                    text = data.decode(errors="replace") if isinstance(data, bytes) else data
                    self._on_message(text)
        except BaseException:
            broken.set()
            raise


class Completions:
    """Wakes local waiters when the task they watch finishes (``{T}:finished`` channels).

    Long-polling requests register a future for their task id; the one listener resolves them.
    If the subscription drops, every waiter is woken so it re-reads its task: none misses a
    finish by more than its own timeout.
    """

    def __init__(self, client: Client, channels: Channels, sharded: Sharded = _not_sharded) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._listener = _Listener(client, channels, self._wake, self._wake_all, sharded=sharded)

    @property
    def subscribed(self) -> asyncio.Event:
        return self._listener.subscribed

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

    def resubscribe(self) -> None:
        """Listen to ``channels()`` again: they have changed (waiters are woken to re-read)."""
        self._listener.resubscribe()

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

    def __init__(self, client: Client, channels: Channels, sharded: Sharded = _not_sharded) -> None:
        self._event = asyncio.Event()
        self._messages: set[str] = set()
        self._gap = False
        self._listener = _Listener(
            client,
            channels,
            self._on_message,
            self._on_gap,
            on_subscribed=self._on_gap,
            sharded=sharded,
        )

    def resubscribe(self) -> None:
        """Listen to ``channels()`` again: they have changed."""
        self._listener.resubscribe()

    @property
    def subscribed(self) -> asyncio.Event:
        return self._listener.subscribed

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
