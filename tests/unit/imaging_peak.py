"""One decode in a process of its own, for test_imaging_budget.py: peak RSS is per process and
only grows, so each measurement needs a fresh one.

The process imports the worker's pipeline, tunes malloc as a worker does, reads both files and
makes thumbnails of the small one (the codecs' code pages and tables are then in the baseline),
notes its resident memory, makes thumbnails of the large one under the given budget, and prints
the baseline and the peak (VmHWM) as JSON, with the error if the pipeline refused the file.

Usage: python -m tests.unit.imaging_peak WARM_UP_FILE FILE MAX_DECODE_BYTES
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main(argv: list[str]) -> dict[str, object]:
    from resizer import imaging, memory
    from resizer.errors import ImageDecodeError

    memory.keep_freed_memory()
    warm_up, data = Path(argv[0]).read_bytes(), Path(argv[1]).read_bytes()
    imaging.make_thumbnails(warm_up)
    baseline = _status_bytes("VmRSS")
    error = None
    try:
        imaging.make_thumbnails(data, max_decode_bytes=int(argv[2]))
    except ImageDecodeError as exc:
        error = exc.message
    return {"baseline": baseline, "peak": _status_bytes("VmHWM"), "error": error}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
