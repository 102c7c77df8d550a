"""Section 4b of `make bench`: peak RSS of a worker making thumbnails of the largest image, and
of a worker's first tagged CMYK image (littlecms builds the profile's transform then).

Each measurement runs in a fresh process (peak RSS only grows): it imports the pipeline, reads
the file, notes its RSS, makes the thumbnails, and reports its peak (VmHWM) above that, and how
long that first task took.

Usage: python -m bench.memory ours|naive FILE   (prints JSON)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(kind: str, path: Path) -> dict[str, float]:
    from bench.kernel import naive
    from resizer import imaging

    run: Callable[[bytes], object] = naive if kind == "naive" else imaging.make_thumbnails
    data = path.read_bytes()
    base = _status_mb("VmRSS")
    started = time.perf_counter()
    run(data)
    took = time.perf_counter() - started
    return {"base_mb": base, "peak_mb": _status_mb("VmHWM"), "seconds": took}


def worker_memory(corpus: Path) -> list[str]:
    files = {path: _describe(path) for path in sorted(corpus.iterdir())}
    largest = max(files, key=lambda p: files[p][0])
    lines = []
    for kind in ("ours", "naive"):
        result = _measure(kind, largest)
        lines.append(
            f"  {'pipeline' if kind == 'ours' else 'naive Pillow'} on {largest.name}"
            f" ({files[largest][0] / 1e6:.0f} MP): peak RSS {result['peak_mb']:.0f} MB,"
            f" +{result['peak_mb'] - result['base_mb']:.0f} MB over the idle process"
        )
    tagged_cmyk = [path for path, (_, tagged) in files.items() if tagged]
    if tagged_cmyk:
        result = _measure("ours", tagged_cmyk[0])
        lines.append(
            f"  pipeline on {tagged_cmyk[0].name}, a process's first tagged CMYK image (littlecms"
            f" builds its transform): peak RSS {result['peak_mb']:.0f} MB,"
            f" +{result['peak_mb'] - result['base_mb']:.0f} MB over the idle process,"
            f" {result['seconds']:.1f} s for that task"
        )
    return lines


def _measure(kind: str, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory", kind, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def _describe(path: Path) -> tuple[int, bool]:
    """Pixels, and whether it is CMYK with an ICC profile."""
    from PIL import Image

    with Image.open(path) as img:
        return img.width * img.height, img.mode == "CMYK" and "icc_profile" in img.info


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], Path(sys.argv[2]))))
