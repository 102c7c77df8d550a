"""Small timing and process helpers shared by the benchmark sections."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """Run this process on a single core, so 'ms per task' is a single-core figure.

    Restores the previous set on exit: child processes inherit the affinity, and the service
    started after the kernel section must get every core.
    """
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(cores)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


def pin_to_one_core() -> None:
    """Pin for the rest of this process's life (for a process that runs one measurement)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0..100), nearest-rank; values need not be sorted."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[rank]


def say(payload: dict[str, Any]) -> None:
    """One JSON line to the parent process (the helper processes' protocol, bench/kernel.py)."""
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def serve_best_ms(task_for: Callable[[Path], Callable[[], object]]) -> None:
    """Answer each "PATH RUNS" line on stdin with {"ms": the best of RUNS runs} of the task
    ``task_for(PATH)`` makes (after one warm-up run)."""
    for line in sys.stdin:
        name, runs = line.split()
        task = task_for(Path(name))
        task()
        best = float("inf")
        for _ in range(int(runs)):
            started = time.perf_counter()
            task()
            best = min(best, (time.perf_counter() - started) * 1000)
        say({"ms": best})
