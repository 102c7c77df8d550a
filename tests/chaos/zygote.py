"""A warmed-up parent that forks ``resizer work`` processes in milliseconds (like gunicorn's
preload): ``python -m tests.chaos.zygote LOGDIR`` reads one line per worker wanted on stdin and
answers each with the new worker's pid.

Python needs 1-3 s to import the worker on a busy 2-core machine; a massacre that kills a
worker every 0.5 s would otherwise mostly kill workers still importing. Each forked worker is
still a process of its own running the real worker loop (``resizer.worker.serve_worker``) with
the settings of its environment, and dies for real with SIGKILL.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import traceback
from pathlib import Path

from resizer import logs
from resizer.config import Settings
from resizer.worker import serve_worker

_PR_SET_PDEATHSIG = 1


def _child(log: Path) -> None:
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # no orphan if the zygote dies
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    logs.configure(os.environ.get("RESIZER_LOG_LEVEL", "INFO"), json=True)
    asyncio.run(serve_worker(Settings.from_env()))


def main() -> None:
    logdir = Path(sys.argv[1])
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the workers
    for n, _ in enumerate(sys.stdin):
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _child(logdir / f"forked-work-{n}.log")
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        print(pid, flush=True)


if __name__ == "__main__":
    main()
