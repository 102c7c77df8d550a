"""Small timing and process helpers shared by the benchmark sections."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator


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


def ms_per_call(fn: Callable[[], object], min_seconds: float = 0.6, min_runs: int = 5) -> float:
    """Best (minimum) wall time of fn() in ms, after one warm-up call.

    The minimum, as timeit recommends: other processes on a shared machine only ever add time.
    """
    fn()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
        if len(times) >= 200:
            break
    return min(times)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0..100), nearest-rank; values need not be sorted."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]
