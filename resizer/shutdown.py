"""Stops that are always prompt, whatever state Redis is in.

A role asked to stop (SIGTERM, SIGINT) first stops cleanly: the worker finishes its task, the
web server its requests. Nothing may hold the exit past that: not a thread stuck in
``getaddrinfo`` (asyncio resolves host names in threads, which the interpreter joins at exit),
not a reconnect loop. So ``stop_within`` arms a timer that ends the process when its grace
runs out, and ``exit_now`` leaves at once once the role is done, without joining stray threads.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import NoReturn

import structlog

log = structlog.get_logger("resizer.shutdown")


def stop_within(seconds: float) -> None:
    """From now on the process ends within ``seconds``, whatever is stuck."""
    timer = threading.Timer(seconds, _forced, args=(seconds,))
    timer.daemon = True
    timer.start()


def _forced(seconds: float) -> None:
    log.warning("process.stop_forced", after_seconds=seconds)
    _flush()
    os._exit(1)


def exit_now(code: int = 0) -> NoReturn:
    """End the process now: the role is done; threads still resolving a name do not matter."""
    _flush()
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
