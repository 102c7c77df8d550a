"""pyvips's thumbnail_buffer on the same files, in a process of its own.

Run by bench/kernel.py, never imported by it: importing pyvips loads libvips and its codecs into
the process, which rebinds Pillow's JPEG/PNG symbols to other library builds and would skew the
Pillow figures. VIPS_CONCURRENCY=1 is set by the caller (libvips reads it when it starts).

A small server, so that the kernel can interleave its measurements with ours (a shared machine's
load then hits both alike): each line on stdin is "PATH RUNS"; the answer is one JSON line, the
best ms per task over RUNS runs. The first line out is {"ready": true} or {"error": reason}.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.timing import pin_to_one_core
from resizer import memory

# The same output choices as the pipeline: JPEG q97 4:4:4, lossless WebP, optimised PNG.
_SAVE = {"jpeg": ".jpg[Q=97,subsample_mode=off]", "webp": ".webp[lossless]", "png": ".png"}


def _say(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def main() -> int:
    pin_to_one_core()
    # The same process conditions as ours (bench/kernel.py): large buffers reused, not re-faulted.
    memory.keep_freed_memory()
    try:
        import pyvips
    except Exception as exc:  # ImportError, or OSError when libvips itself cannot be loaded
        _say({"error": f"pyvips unavailable: {exc}"})
        return 0
    from resizer.imaging import output_format

    _say({"ready": True, "libvips": f"{pyvips.version(0)}.{pyvips.version(1)}"})
    for line in sys.stdin:
        name, runs = line.split()
        data = Path(name).read_bytes()
        loader = str(pyvips.Image.new_from_buffer(data, "").get("vips-loader"))
        suffix = _SAVE[output_format(_loader_format(loader))]

        def task(data: bytes = data, suffix: str = suffix) -> None:
            # Like the pipeline: one shrink-on-load thumbnail at 64, and the 32 from it.
            big = pyvips.Image.thumbnail_buffer(data, 64, height=64).copy_memory()
            big.write_to_buffer(suffix)
            big.thumbnail_image(32, height=32).write_to_buffer(suffix)

        task()
        best = float("inf")
        for _ in range(int(runs)):
            started = time.perf_counter()
            task()
            best = min(best, (time.perf_counter() - started) * 1000)
        _say({"ms": best})
    return 0


def _loader_format(loader: str) -> str:
    for key in ("jpeg", "png", "webp", "gif"):
        if key in loader:
            return key
    return loader


if __name__ == "__main__":
    sys.exit(main())
