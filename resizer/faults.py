"""Failpoints: named places where a test can make a real worker process crash or stall.

Off unless ``RESIZER_FAILPOINTS`` is set, e.g. ``before_complete=kill`` or
``during_resize=sleep:5@POISON`` (the action runs only for images whose bytes contain
``POISON``). Actions: ``kill`` (SIGKILL to this process: a crash no handler can soften),
``sleep:SECONDS``, ``raise`` (an unexpected exception), ``stuck_thread`` (a thread that never
ends, as one stuck resolving a host name). The fault-tolerance tests use them to
crash a worker deterministically at each step of a task's life.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time

import attrs

ENV = "RESIZER_FAILPOINTS"


class InjectedFault(RuntimeError):
    """Raised by a ``raise`` failpoint: stands for any unexpected bug."""


@attrs.frozen
class _Spec:
    action: str
    marker: bytes | None


@functools.cache
def _specs() -> dict[str, _Spec]:
    specs: dict[str, _Spec] = {}
    for item in filter(None, os.environ.get(ENV, "").split(",")):
        name, _, rest = item.partition("=")
        action, _, marker = rest.partition("@")
        specs[name.strip()] = _Spec(action.strip(), marker.encode() if marker else None)
    return specs


def hit(name: str, data: bytes = b"") -> None:
    spec = _specs().get(name)
    if spec is None or (spec.marker is not None and spec.marker not in data):
        return
    if spec.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif spec.action.startswith("sleep:"):
        time.sleep(float(spec.action.removeprefix("sleep:")))
    elif spec.action == "raise":
        raise InjectedFault(f"failpoint {name} raised")
    elif spec.action == "stuck_thread":
        # A thread that never returns, as one stuck in getaddrinfo: the exit must not wait for it.
        threading.Thread(target=threading.Event().wait, name="stuck", daemon=False).start()
