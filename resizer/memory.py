"""How a process asks the C allocator to treat its memory: the large buffers of a worker's image
work and of the web's uploads, and what starting up leaves behind.

Decoding a large image allocates tens of MB (a 2048x2048 PNG: its inflated rows, the pixels,
Pillow's image) and frees them at the end of the task. glibc serves allocations over its
dynamic mmap threshold (128 KiB at first) with fresh mmap()s and gives them back on free, so the
next task faults every page in again (a sixth of a PNG task's time; BENCHMARKS.md). Serving
buffers up to ``KEEP_BELOW`` from the heap, and keeping up to ``TRIM_ABOVE`` of freed heap
before returning it, lets the next task reuse warm pages. The cost is that a worker's resident
memory stays at its high-water mark; its peak does not change.

The web process has the same pattern at a smaller scale: each upload's body, its decoded image
and the copies between are freed once the task is stored. With 8 uploads of 1024 px photos in
flight, glibc's own thresholds had each upload fault ~200 pages in again (0.3-0.7 ms of kernel
time a task); the web keeps its buffers in the heap too (``WEB_KEEP_BELOW``, ``WEB_TRIM_ABOVE``:
glibc's own ceiling for its dynamic threshold, and twice that).

Python's cyclic garbage collector is the other cost of starting: importing a role creates ~100k
objects that live as long as the process, and the collector traversed them ~140 times while
they were being created (~65 ms of a web process's start on the benchmark machine) and finds
almost nothing to free. A process runs its imports without it (``resizer.__main__``), then moves
everything they made out of its sight (``imports_done``) and turns it back on.
"""

from __future__ import annotations

import ctypes
import gc
import platform

KEEP_BELOW = 64 * 2**20
TRIM_ABOVE = 128 * 2**20
WEB_KEEP_BELOW = 32 * 2**20
WEB_TRIM_ABOVE = 64 * 2**20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def imports_done() -> None:
    """Start collecting garbage again, after imports run with the collector off.

    ``gc.freeze`` moves every object alive now to the permanent generation, which collections
    never traverse: the modules' objects would only ever survive them, and each full collection
    in a serving process would otherwise walk them all again. The few cycles that importing
    left unreachable (~3,000 objects in the web) are frozen with them, for good.
    """
    gc.freeze()
    gc.enable()


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc's ``malloc_trim``).

    Importing leaves freed buffers (the compiled modules read in) scattered in the heap, where
    glibc keeps them: ~12 MB of a web process's idle resident memory on the benchmark machine.
    A service calls this once it has started; glibc only, a no-op elsewhere.
    """
    if platform.libc_ver()[0] == "glibc":
        ctypes.CDLL(None).malloc_trim(0)


def keep_freed_memory(keep_below: int = KEEP_BELOW, trim_above: int = TRIM_ABOVE) -> bool:
    """Tune glibc's malloc for this process (threads included): buffers up to ``keep_below``
    bytes from the heap, up to ``trim_above`` bytes of freed heap kept. False where it is not
    glibc."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    kept = libc.mallopt(_M_MMAP_THRESHOLD, keep_below)
    trimmed = libc.mallopt(_M_TRIM_THRESHOLD, trim_above)
    return bool(kept) and bool(trimmed)
