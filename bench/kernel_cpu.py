"""The kernel's CPU per task as a worker spends it: ``imaging.make_thumbnails``, mean CPU time.

Standalone (stdlib and ``resizer`` only), so any checkout's interpreter can run it on its own
code: section 2 runs it with ours and with the baseline's. The mean, not the best run: the
workers' CPU it is compared with is a mean too. The worker's allocator setting is applied, as
``resizer work`` applies it.

Usage: python bench/kernel_cpu.py SECONDS FILE...   (prints {"FILE": ms, ...} as JSON)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def mean_cpu_ms(data: bytes, seconds: float) -> float:
    from resizer import imaging

    for _ in range(3):
        imaging.make_thumbnails(data)
    runs, spent = 0, 0.0
    while spent < seconds * 1000 or runs < 10:
        started = time.process_time()
        imaging.make_thumbnails(data)
        spent += (time.process_time() - started) * 1000
        runs += 1
    return spent / runs


def main(argv: list[str]) -> int:
    from resizer import memory

    memory.keep_freed_memory()
    seconds = float(argv[0])
    found = {name: mean_cpu_ms(Path(name).read_bytes(), seconds) for name in argv[1:]}
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
