"""Child processes for ``resizer up`` and ``resizer work --processes N``: start, watch, restart,
and stop them in order, leaving nothing behind.

Children run in their own sessions so a Ctrl-C in the terminal reaches only the supervisor,
which then stops them in the right order (workers finish their task while Redis still runs).
They also get ``PR_SET_PDEATHSIG``: if the supervisor is SIGKILLed, the kernel stops them too.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

import attrs
import structlog

from resizer.backoff import Backoff

log = structlog.get_logger("resizer.processes")

_PR_SET_PDEATHSIG = 1
# Resolved now, in the parent: between fork and exec only async-signal-safe work is allowed.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(argv: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(argv),
        env=None if env is None else {**os.environ, **env},
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def resizer_command(*args: str) -> list[str]:
    """``resizer <args>`` run by this interpreter: shows as ``... -m resizer work`` in ``ps``."""
    return [sys.executable, "-m", "resizer", *args]


def stop_process(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("process.killed", pid=proc.pid, after_seconds=grace)
            proc.kill()
    return proc.wait()


_STABLE_SECONDS = 30.0


@attrs.define
class Child:
    name: str
    argv: list[str]
    stop_grace: float = 10.0
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    backoff: Backoff = attrs.field(factory=Backoff, repr=False)


class Supervisor:
    """Keeps children running; restarts any that dies; stops them all on SIGTERM/SIGINT.

    Children are stopped in list order, so put workers before what they depend on.
    """

    def __init__(self, children: Sequence[Child], env: Mapping[str, str] | None = None) -> None:
        self.children = list(children)
        self.env = env
        self._stop = threading.Event()

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        try:
            for child in self.children:
                if child.proc is None:
                    self._start(child)
                else:  # started by the caller (up's Redis, which must answer first)
                    child.started_at = time.monotonic()
                    log.info("child.started", child=child.name, pid=child.proc.pid)
            while not self._stop.wait(0.2):
                self._restart_dead()
        finally:
            self.stop_all()
        return 0

    def _start(self, child: Child) -> None:
        child.proc = spawn(child.argv, self.env)
        child.started_at = time.monotonic()
        log.info("child.started", child=child.name, pid=child.proc.pid)

    def _restart_dead(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.proc is None or child.proc.poll() is None:
                continue
            if child.next_start == 0.0:
                # Back off a child that keeps dying, so a broken one does not spin the CPU; one
                # that ran a while before dying starts again at once.
                if now - child.started_at > _STABLE_SECONDS:
                    child.backoff.reset()
                delay = child.backoff.next()
                child.next_start = now + delay
                log.warning(
                    "child.died",
                    child=child.name,
                    pid=child.proc.pid,
                    code=child.proc.returncode,
                    restart_in=delay,
                )
            elif now >= child.next_start:
                child.restarts += 1
                child.next_start = 0.0
                self._start(child)

    def stop_all(self) -> None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in self.children:
            if child.proc is not None:
                code = stop_process(child.proc, child.stop_grace)
                log.info("child.stopped", child=child.name, code=code)
