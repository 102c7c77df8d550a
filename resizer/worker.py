"""The worker: take -> claim -> resize -> complete, with a heartbeat, forever, until asked to stop.

One task at a time per process (resizing is CPU-bound; scale with processes). The resize runs in
a thread so the event loop keeps renewing the lease while Pillow works: Pillow releases the GIL
in its decoders, resamplers and encoders, so even a task longer than the lease keeps its lease.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import Any

import structlog

from resizer import __version__, faults, imaging, liveness, memory, shutdown
from resizer.backoff import Backoff
from resizer.config import Settings
from resizer.errors import ImageDecodeError
from resizer.models import Claim, Thumbnail, WorkerRecord
from resizer.recovery import recover_once
from resizer.store import REDIS_DOWN, REDIS_FULL, Store, open_store, outage_event

log = structlog.get_logger("resizer.worker")

TAKE_TIMEOUT_SECONDS = 1.0
"""How long one BLMOVE blocks: also the longest an idle worker takes to notice a stop request."""

MAX_REASON_CHARS = 500
"""The most of an unforeseen error's text kept on its task (and in the recent failures)."""


class Worker:
    def __init__(self, store: Store, settings: Settings, name: str | None = None) -> None:
        self.store = store
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.processed = 0  # tasks handled, whatever their outcome
        self.done = 0
        self.failed = 0
        self.started_at = datetime.now(UTC)

    async def run(self, stop: asyncio.Event, *, max_tasks: int | None = None) -> None:
        """Process tasks until ``stop`` is set (the task in hand is always finished first)."""
        async with _background(self._presence, "worker presence"):
            await self._loop(stop, max_tasks)

    async def _presence(self, done: asyncio.Event) -> None:
        """Show this worker is alive: its record in the store (for ``resizer info``), and the
        liveness file (for ``resizer work --check``), every heartbeat, busy or idle."""
        interval = self.settings.heartbeat_seconds
        while not done.is_set():
            liveness.touch("work")
            record = WorkerRecord(
                name=self.name,
                host=socket.gethostname(),
                pid=os.getpid(),
                version=__version__,
                started_at=self.started_at,
                seen_at=datetime.now(UTC),
                done=self.done,
                failed=self.failed,
            )
            with suppress(*REDIS_DOWN, *REDIS_FULL):
                await self.store.heartbeat_worker(record, ttl_seconds=3 * interval)
            await _pause(done, interval)

    async def _loop(self, stop: asyncio.Event, max_tasks: int | None) -> None:
        backoff, crashes = Backoff(), Backoff()
        next_recovery = 0.0
        checked = False
        log.info("worker.started", worker=self.name)
        while not stop.is_set() and (max_tasks is None or self.processed < max_tasks):
            try:
                if not checked:
                    await self.store.check_memory_policy()
                    await self.store.load_scripts()
                    checked = True
                if time.monotonic() >= next_recovery:
                    await recover_once(self.store)
                    next_recovery = time.monotonic() + self.settings.recover_every_seconds
                task_id = await self.store.take(TAKE_TIMEOUT_SECONDS)
                if task_id is not None:
                    await self._process_or_pause(task_id, stop, crashes)
                backoff.reset()
            except REDIS_DOWN + REDIS_FULL as exc:
                # A full Redis (maxmemory) is waited out like an outage, not a crash.
                delay = backoff.next()
                log.warning(outage_event(exc), error=str(exc), retry_in=delay)
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        log.info("worker.stopped", worker=self.name, processed=self.processed)

    async def _process_or_pause(self, task_id: str, stop: asyncio.Event, crashes: Backoff) -> None:
        """``process``, surviving what it lets through: a failure in claiming the task or in
        giving it back (a task record Redis cannot use, a bug) is logged with its traceback, and
        the task left to recovery and its attempt cap. Exiting would only hand the task to the
        next worker, to fail the same way. A Redis outage is the loop's to wait out.

        One failure on every task (a bug in every claim) must not move the whole queue into
        the processing list at full speed: each crash in a row waits longer before the next."""
        try:
            await self.process(task_id)
        except REDIS_DOWN + REDIS_FULL:
            raise
        except Exception:
            pause = crashes.next()
            log.exception("task.crashed", task_id=task_id, worker=self.name, pause=pause)
            await _pause(stop, pause)
        else:
            crashes.reset()

    async def process(self, task_id: str) -> None:
        faults.hit("after_take")
        claim = await self.store.claim(task_id, self.name)
        if claim is None:
            log.info("task.skipped", task_id=task_id, reason="not waiting (expired or duplicate)")
            return
        with structlog.contextvars.bound_contextvars(task_id=task_id, attempt=claim.attempt):
            log.info("task.claimed", worker=self.name)
            faults.hit("after_claim")
            async with self._heartbeat(claim):
                try:
                    await self._resize_and_complete(claim)
                except REDIS_DOWN + REDIS_FULL:
                    raise
                except Exception as exc:
                    await self._give_back(claim, exc)
            self.processed += 1

    async def _give_back(self, claim: Claim, exc: Exception) -> None:
        """After a failure nobody foresaw, in the resize (a Pillow bug) or after it: the
        attempt counts, and the task goes back to the queue, or is FAILED at the cap, with the
        error kept on it for ``resizer info`` and its client."""
        reason = f"{exc.__class__.__name__}: {exc}"[:MAX_REASON_CHARS]
        outcome = await self.store.retry(claim, reason)
        if outcome == "failed":
            self.failed += 1
        event = "lease.lost" if outcome == "stale" else f"task.{outcome}"
        log.warning(event, error=reason, exc_info=exc)

    async def _resize_and_complete(self, claim: Claim) -> None:
        original = claim.original
        if original is None:
            if await self.store.fail(claim, "the original image is gone (its retention expired)"):
                self.failed += 1
            log.warning("task.failed", error="original missing")
            return
        started = time.perf_counter()
        try:
            thumbnails = await asyncio.to_thread(_resize, original, self.settings.max_decode_bytes)
        except ImageDecodeError as exc:
            if await self.store.fail(claim, exc.message):
                self.failed += 1
                log.info("task.failed", error=exc.message)
            else:
                log.warning("lease.lost", during="fail")
            return
        images = {t.size: base64.b64encode(t.data) for t in thumbnails}
        faults.hit("before_complete")
        seconds = time.perf_counter() - started
        if await self._complete_despite_outage(claim, thumbnails[0].format, images, seconds):
            self.done += 1
            faults.hit("after_complete")
            log.info(
                "task.done",
                format=thumbnails[0].format,
                duration_ms=round(seconds * 1000, 1),
            )
        else:
            log.warning("lease.lost", during="complete", detail="a newer attempt owns the task")

    async def _complete_despite_outage(
        self, claim: Claim, result_format: str, images: dict[int, bytes], seconds: float
    ) -> bool:
        """Results are worth keeping through a short Redis outage: retry while the lease lives."""
        backoff = Backoff()
        give_up_at = time.monotonic() + self.settings.lease_seconds
        while True:
            try:
                return await self.store.complete(claim, result_format, images, seconds)
            except REDIS_DOWN + REDIS_FULL as exc:
                if time.monotonic() > give_up_at:
                    log.warning(
                        "task.abandoned",
                        error=str(exc),
                        detail="its results could not be stored; the task runs again once "
                        "its lease expires",
                    )
                    raise
                await asyncio.sleep(backoff.next())

    @asynccontextmanager
    async def _heartbeat(self, claim: Claim) -> AsyncIterator[None]:
        async def beat(done: asyncio.Event) -> None:
            while not await _pause(done, self.settings.heartbeat_seconds):
                try:
                    if not await self.store.renew(claim):
                        log.warning("lease.lost", during="heartbeat")
                        return
                except REDIS_DOWN + REDIS_FULL as exc:
                    log.warning("lease.renewal_failed", error=str(exc))

        async with _background(beat, "lease heartbeat"):
            yield


async def _pause(done: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds``, or less if ``done`` is set; True if it is."""
    with suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), seconds)
    return done.is_set()


@asynccontextmanager
async def _background(
    loop: Callable[[asyncio.Event], Coroutine[Any, Any, None]], name: str
) -> AsyncIterator[None]:
    """Run ``loop(done)`` beside the body; stop it by setting ``done``, not by cancelling it:
    redis-py can swallow a cancellation that lands in the middle of a command, and the loop
    would then run on (and its caller wait on it) forever."""
    done = asyncio.Event()
    task = asyncio.create_task(loop(done), name=name)
    try:
        yield
    finally:
        done.set()
        # A command in flight ends within its socket timeout; past that, cancel as a last resort.
        finished, _ = await asyncio.wait({task}, timeout=15)
        if not finished:
            task.cancel()


def _resize(original: bytes, max_decode_bytes: int) -> list[Thumbnail]:
    faults.hit("during_resize", original)
    return imaging.make_thumbnails(original, max_decode_bytes=max_decode_bytes)


async def serve_worker(settings: Settings) -> None:
    """Entry point of ``resizer work``: run until SIGTERM/SIGINT, finishing the task in hand."""
    if memory.keep_freed_memory():
        log.info("allocator.tuned", keep_below=memory.KEEP_BELOW, trim_above=memory.TRIM_ABOVE)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stopping() -> None:
        # The task in hand may take up to a lease to finish and acknowledge (through an outage).
        shutdown.stop_within(settings.lease_seconds + 10)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping)
    faults.hit("at_start")
    # BLMOVE blocks for TAKE_TIMEOUT_SECONDS: the socket must wait longer than that.
    async with open_store(settings, socket_timeout=TAKE_TIMEOUT_SECONDS + 10) as store:
        await Worker(store, settings).run(stop)
