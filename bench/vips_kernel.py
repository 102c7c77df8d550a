"""pyvips's thumbnail_buffer on the same files, in a process of its own.

Run by bench/kernel.py, never imported by it: importing pyvips loads libvips and its codecs into
the process, which rebinds Pillow's JPEG/PNG symbols to other library builds and would skew the
Pillow figures. VIPS_CONCURRENCY=1 is set by the caller (libvips reads it when it starts).

Prints one JSON object: {file name: ms per task}, or {"error": reason} when libvips is missing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.timing import ms_per_call, pin_to_one_core

# The same output choices as the pipeline: JPEG q97 4:4:4, lossless WebP, optimised PNG.
_SAVE = {
    "jpeg": ".jpg[Q=97,subsample_mode=off]",
    "webp": ".webp[lossless]",
    "png": ".png",
}


def main(paths: list[str]) -> int:
    pin_to_one_core()
    try:
        import pyvips
    except Exception as exc:  # ImportError, or OSError when libvips itself cannot be loaded
        print(json.dumps({"error": f"pyvips unavailable: {exc}"}))
        return 0
    from resizer.imaging import output_format

    results: dict[str, float] = {}
    for name in paths:
        path = Path(name)
        data = path.read_bytes()
        probe = pyvips.Image.new_from_buffer(data, "")
        loader = str(probe.get("vips-loader"))
        fmt = output_format(_loader_format(loader))
        suffix = _SAVE[fmt]

        def task(data: bytes = data, suffix: str = suffix) -> None:
            # Like the pipeline: one shrink-on-load thumbnail at 64, the 32 derived from it.
            big = pyvips.Image.thumbnail_buffer(data, 64, height=64).copy_memory()
            big.write_to_buffer(suffix)
            big.thumbnail_image(32, height=32).write_to_buffer(suffix)

        results[path.name] = ms_per_call(task)
    print(json.dumps(results))
    return 0


def _loader_format(loader: str) -> str:
    for key, fmt in (("jpeg", "jpeg"), ("png", "png"), ("webp", "webp"), ("gif", "gif")):
        if key in loader:
            return fmt
    return loader


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
