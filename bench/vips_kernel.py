"""pyvips's thumbnail_buffer on the same files, in a process of its own.

Run by bench/kernel.py, never imported by it: importing pyvips loads libvips and its codecs into
the process, which rebinds Pillow's JPEG/PNG symbols to other library builds and would skew the
Pillow figures. VIPS_CONCURRENCY=1 is set by the caller (libvips reads it when it starts).

A small server, so that the kernel can interleave its measurements with ours (a shared machine's
load then hits both alike): each line on stdin is "PATH RUNS"; the answer is one JSON line, the
best ms per task over RUNS runs. The first line out is {"ready": true} or {"error": reason}.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from bench.timing import pin_to_one_core, say, serve_best_ms
from resizer import memory

# The same output choices as the pipeline: JPEG q97 4:4:4, lossless WebP, optimised PNG.
_SAVE = {"jpeg": ".jpg[Q=97,subsample_mode=off]", "webp": ".webp[lossless]", "png": ".png"}


def main() -> int:
    pin_to_one_core()
    # The same process conditions as ours (bench/kernel.py): large buffers reused, not re-faulted.
    memory.keep_freed_memory()
    try:
        import pyvips
    except Exception as exc:  # ImportError, or OSError when libvips itself cannot be loaded
        say({"error": f"pyvips unavailable: {exc}"})
        return 0
    from resizer.header import output_format

    say({"ready": True, "libvips": f"{pyvips.version(0)}.{pyvips.version(1)}"})

    def task_for(path: Path) -> Callable[[], None]:
        data = path.read_bytes()
        loader = str(pyvips.Image.new_from_buffer(data, "").get("vips-loader"))
        suffix = _SAVE[output_format(_loader_format(loader))]

        def task() -> None:
            # Like the pipeline: one shrink-on-load thumbnail at 64, and the 32 from it.
            big = pyvips.Image.thumbnail_buffer(data, 64, height=64).copy_memory()
            big.write_to_buffer(suffix)
            big.thumbnail_image(32, height=32).write_to_buffer(suffix)

        return task

    serve_best_ms(task_for)
    return 0


def _loader_format(loader: str) -> str:
    for key in ("jpeg", "png", "webp", "gif"):
        if key in loader:
            return key
    return loader


if __name__ == "__main__":
    sys.exit(main())
