"""Naive Pillow (bench/kernel.py's ``naive``) in a plain process: glibc's default allocator.

Run by bench/kernel.py beside the other methods: the kernel section measures every method with
the worker's allocator setting (resizer/memory.py), which also speeds up naive Pillow's large
buffers; the naive bars are judged against naive Pillow as a plain Python process runs it, here.
The same small protocol as bench/vips_kernel.py: "PATH RUNS" in, {"ms": best} out.
"""

from __future__ import annotations

import functools
import sys

from bench.kernel import naive
from bench.timing import pin_to_one_core, say, serve_best_ms


def main() -> int:
    pin_to_one_core()
    say({"ready": True})
    serve_best_ms(lambda path: functools.partial(naive, path.read_bytes()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
