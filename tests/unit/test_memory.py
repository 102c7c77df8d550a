"""The worker's allocator tuning: freed large buffers are reused instead of faulted in again.

Counted in page faults (the kernel's count, exact and not timing-dependent), in fresh processes
so that each starts from glibc's defaults.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROGRAM = """
import resource, sys
from resizer import memory
if sys.argv[1] == "tuned":
    assert memory.keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
buffer = b"x" * (32 * 2**20)  # written, so every page is touched
del buffer
before = faults()
for _ in range(4):
    buffer = b"x" * (32 * 2**20)
    del buffer
print(faults() - before)
"""
PAGES_PER_BUFFER = 32 * 2**20 // 4096


def faults_over_four_buffers(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], check=True, capture_output=True, text=True
    )
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc")
def test_a_tuned_process_reuses_freed_buffers_instead_of_faulting_them_in() -> None:
    untuned = faults_over_four_buffers("default")
    tuned = faults_over_four_buffers("tuned")
    # Untuned, each 32 MB buffer is a fresh mmap: every page faults again.
    assert untuned >= 4 * PAGES_PER_BUFFER * 0.9, untuned
    assert tuned < PAGES_PER_BUFFER * 0.1, tuned
