"""Small timing and process helpers shared by the benchmark sections."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator


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
