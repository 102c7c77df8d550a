"""Section 4b of `make bench`: peak RSS of a worker making thumbnails of the largest image.

Each measurement runs in a fresh process (peak RSS only grows): it imports the pipeline, reads
the file, notes its RSS, makes the thumbnails, and reports its peak (VmHWM) above that.

Usage: python -m bench.memory ours|naive FILE   (prints JSON)
"""

from __future__ import annotations

import json
import subprocess
import sys
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
    run(data)
    return {"base_mb": base, "peak_mb": _status_mb("VmHWM")}


def worker_memory(corpus: Path) -> list[str]:
    largest = max(corpus.iterdir(), key=lambda p: _pixels(p))
    lines = []
    for kind in ("ours", "naive"):
        out = subprocess.run(
            [sys.executable, "-m", "bench.memory", kind, str(largest)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout)
        lines.append(
            f"  {'pipeline' if kind == 'ours' else 'naive Pillow'} on {largest.name}"
            f" ({_pixels(largest) / 1e6:.0f} MP): peak RSS {result['peak_mb']:.0f} MB,"
            f" +{result['peak_mb'] - result['base_mb']:.0f} MB over the idle process"
        )
    return lines


def _pixels(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as img:
        return int(img.width * img.height)


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], Path(sys.argv[2]))))
