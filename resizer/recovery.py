"""``resizer recover``: one recovery pass (for cron) or a loop, reporting what it did."""

from __future__ import annotations

import asyncio
import signal
from contextlib import suppress

import structlog

from resizer import faults, liveness, shutdown
from resizer.backoff import Backoff
from resizer.config import Settings
from resizer.models import RecoveryReport
from resizer.store import (
    REDIS_DOWN,
    REDIS_FULL,
    Store,
    open_store,
    outage_event,
    unavailable,
)

log = structlog.get_logger("resizer.recovery")

STOP_SECONDS = 8.0
"""The longest a loop asked to stop takes to exit (within compose's 10 s grace)."""


async def recover_once(store: Store) -> RecoveryReport:
    """One recovery pass, each task it acted on logged."""
    report = await store.recover()
    for task_id in report.requeued:
        log.warning("task.recovered", task_id=task_id, outcome="requeued")
    for task_id in report.failed:
        log.warning("task.recovered", task_id=task_id, outcome="failed (attempt cap)")
    for task_id in report.adopted:
        log.info("task.adopted", task_id=task_id)
    for task_id, error in report.unrecoverable.items():
        log.error("task.unrecoverable", task_id=task_id, error=error)
    return report


async def run_recovery(settings: Settings, every: float | None) -> None:
    """One recovery pass, or a pass every ``every`` seconds until SIGTERM/SIGINT; each pass
    logs ``recovery.finished`` with what it did."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stopping() -> None:
        shutdown.stop_within(STOP_SECONDS)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping)
    faults.hit("at_start")
    backoff = Backoff()
    checked = False
    async with open_store(settings) as store:
        while True:
            try:
                liveness.touch("recover")
                if not checked:
                    await store.check_memory_policy()
                    checked = True
                report = await recover_once(store)
                log.info(
                    "recovery.finished",
                    requeued=len(report.requeued),
                    failed=len(report.failed),
                    adopted=len(report.adopted),
                    unrecoverable=len(report.unrecoverable),
                )
                delay = every
                backoff.reset()
            except REDIS_DOWN + REDIS_FULL as exc:
                if every is None:
                    raise unavailable(exc) from None
                delay = backoff.next()
                log.warning(outage_event(exc), error=str(exc), retry_in=delay)
            if delay is None:
                return
            if await _wait_alive(stop, delay):
                return


async def _wait_alive(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` (True then), showing the loop is alive meanwhile."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while (left := until - loop.time()) > 0:
        liveness.touch("recover")
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(left, liveness.RECOVER_EVERY_SECONDS))
        if stop.is_set():
            return True
    return False
