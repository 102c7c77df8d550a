"""Section 1 of `make bench`: the image kernel, one core, per corpus file.

For each file: the pipeline (``make_thumbnails``: decode, 64 and 32, encode), naive Pillow
(``Image.open(...).resize((64, 64))`` and ``(32, 32)`` from the full image, then the same
encoding), the decoder's floor (the pipeline's own ``draft()`` decode alone for JPEG, a plain
decode for other formats), pyvips ``thumbnail_buffer`` in its own process, and the PSNR of the
pixels before encoding and of the delivered files against the float reference.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from PIL import Image

from bench import summary
from bench.timing import one_core
from resizer import budget, header, imaging, memory, pngdecode
from resizer.models import SIZES
from tests.quality import planes_of, psnr, reference

COMMAND = "python -m bench.run --sections 1"


@attrs.frozen
class KernelRow:
    name: str
    format: str
    mode: str
    side: int
    megabytes: float
    ours_ms: float
    naive_ms: float
    floor_ms: float
    vips_ms: float | None
    psnr_pixels: float  # worst of the sizes, before encoding
    psnr_files: float  # worst of the sizes, as delivered
    plain_naive_ms: float | None = None  # naive in a plain process (glibc's default allocator)

    @property
    def vs_naive(self) -> float:
        return self.naive_ms / self.ours_ms

    @property
    def vs_floor(self) -> float:
        return self.ours_ms / self.floor_ms

    @property
    def vs_vips(self) -> float | None:
        return None if self.vips_ms is None else self.vips_ms / self.ours_ms


def naive(data: bytes) -> list[bytes]:
    """What a first version would do: full decode, resize from the full image for each size."""
    out = []
    with Image.open(io.BytesIO(data)) as img:
        fmt = header.output_format((img.format or "").lower())
        for size in SIZES:
            thumb = img.resize((size, size))
            writable = ("RGB", "L", "CMYK") if fmt == "jpeg" else ("RGB", "RGBA", "L", "LA", "P")
            if thumb.mode not in writable:
                thumb = thumb.convert("RGB")
            buf = io.BytesIO()
            thumb.save(buf, fmt.upper())
            out.append(buf.getvalue())
    return out


def floor(data: bytes) -> None:
    """The decoder alone, as the pipeline asks for it (JPEG: the same draft scale; PNG: the
    pipeline's own decoder where it takes the file)."""
    if pngdecode.decode(data) is not None:
        return
    with Image.open(io.BytesIO(data)) as img:
        if img.format in ("JPEG", "MPO"):
            wanted = budget.jpeg_draft_request(img.mode, SIZES[0])
            img.draft(img.mode, (wanted, wanted))
            imaging._whole_file_at_once(img, data)
        img.load()


def quality(data: bytes) -> tuple[float, float]:
    """Worst PSNR over the sizes: pixels before encoding, and delivered files."""
    _, pixels = imaging.thumbnail_images(data)
    files = imaging.make_thumbnails(data)
    worst_pixels = worst_files = float("inf")
    for img, thumb in zip(pixels, files, strict=True):
        ref = reference(data, thumb.size)
        worst_pixels = min(worst_pixels, psnr(ref, planes_of(img)))
        with Image.open(io.BytesIO(thumb.data)) as delivered:
            delivered.load()
            worst_files = min(worst_files, psnr(ref, planes_of(delivered)))
    return worst_pixels, worst_files


class HelperProcess:
    """A method measured in a process of its own: a small server (bench/vips_kernel.py,
    bench/plain_naive.py) answering "PATH RUNS" lines with the best ms over RUNS runs."""

    def __init__(self, module: str, env: dict[str, str] | None = None) -> None:
        self.error: str | None = None
        self.proc: subprocess.Popen[str] | None = subprocess.Popen(
            [sys.executable, "-m", module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, **(env or {})),
        )
        self.hello: dict[str, Any] = self._read()
        if "error" in self.hello or "ready" not in self.hello:
            self.error = str(self.hello.get("error", self.hello))
            self.close()

    def _read(self) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            return {"error": f"helper process exited ({self.proc.poll()})"}
        result: dict[str, Any] = json.loads(line)
        return result

    def best_ms(self, path: Path, runs: int) -> float | None:
        if self.proc is None or self.proc.stdin is None:
            return None
        self.proc.stdin.write(f"{path} {runs}\n")
        self.proc.stdin.flush()
        answer = self._read()
        if "ms" not in answer:
            self.error = str(answer.get("error", answer))
            self.close()
            return None
        return float(answer["ms"])

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(30)
            self.proc = None


# The files of the bars against naive Pillow (see checks()).
NAIVE_BARS = ("smooth-3000.jpg", "phone-3000.jpg")
# Each method gets at least this much time per round (and at least MIN_RUNS runs): a 5 ms task
# then runs 16 times a round, where a fixed count left its best-of exposed to noise.
ROUND_MS = 80.0
MIN_RUNS = 4
# Rounds per file. With 6, the smooth 3000 px JPEG's ratio to plain naive Pillow spread over
# 10.25-12.71x in five back-to-back measurements on this VM; with 12, over 10.47-10.84x: the best
# of more rounds is less often a round that the neighbours' load slowed down.
ROUNDS = 12


def measure(
    paths: list[Path], rounds: int = ROUNDS, runs: int = MIN_RUNS
) -> tuple[list[KernelRow], str | None]:
    """Every method on every file, interleaved in rounds (ours, naive, floor, pyvips, then
    again), best run kept: load from other processes then hits all methods alike. ``runs`` is
    the least number of runs per method and round; fast methods run more (``ROUND_MS``)."""
    # As in a worker process (resizer/memory.py); the pyvips process does the same.
    memory.keep_freed_memory()
    vips = HelperProcess("bench.vips_kernel", {"VIPS_CONCURRENCY": "1"})
    # Naive Pillow once more, as a plain Python process runs it (glibc's default allocator),
    # for the naive bars only: they are judged on it (see checks()).
    plain = HelperProcess("bench.plain_naive")
    rows = []
    try:
        with one_core():
            for path in paths:
                rows.append(
                    _row(path, vips, plain if path.name in NAIVE_BARS else None, rounds, runs)
                )
    finally:
        vips.close()
        plain.close()
    if vips.error is not None:
        return rows, vips.error
    return rows, f"libvips {vips.hello['libvips']} (pyvips-binary), VIPS_CONCURRENCY=1"


def _best(fn: Callable[[], object], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - started) * 1000)
    return best


def _row(
    path: Path, vips: HelperProcess, plain: HelperProcess | None, rounds: int, runs: int
) -> KernelRow:
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        fmt, mode, side = (img.format or "?").lower(), img.mode, img.width
    psnr_pixels, psnr_files = quality(data)
    methods: dict[str, Callable[[], object]] = {
        "ours": functools.partial(imaging.make_thumbnails, data),
        "naive": functools.partial(naive, data),
        "floor": functools.partial(floor, data),
    }
    counts = {}
    for name, fn in methods.items():
        fn()  # warm-up: one-time costs (building a profile's colour transform) stay out
        started = time.perf_counter()
        fn()  # how long one run takes
        took_ms = (time.perf_counter() - started) * 1000
        counts[name] = max(runs, math.ceil(ROUND_MS / max(took_ms, 0.1)))
    best = dict.fromkeys(methods, float("inf"))
    vips_ms: float | None = None
    plain_ms: float | None = None
    for _ in range(rounds):
        for name, fn in methods.items():
            best[name] = min(best[name], _best(fn, counts[name]))
        vips_ms = _min(vips_ms, vips.best_ms(path, counts["ours"]))
        if plain is not None:
            plain_ms = _min(plain_ms, plain.best_ms(path, counts["naive"]))
    return KernelRow(
        name=path.name,
        format=fmt,
        mode=mode,
        side=side,
        megabytes=len(data) / 1e6,
        ours_ms=best["ours"],
        naive_ms=best["naive"],
        floor_ms=best["floor"],
        vips_ms=vips_ms,
        plain_naive_ms=plain_ms,
        psnr_pixels=psnr_pixels,
        psnr_files=psnr_files,
    )


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(rows: list[KernelRow], vips_note: str | None) -> list[str]:
    lines = [
        f"1. kernel: one core, ms per task (decode + 64 + 32 + encode), best of {ROUNDS} rounds of"
        f" >= {MIN_RUNS} runs (>= {ROUND_MS:.0f} ms) interleaved with the other methods",
        f"{'file':24} {'MB':>5} {'ours':>7} {'naive':>7} {'xnaive':>6} {'floor':>7}"
        f" {'/floor':>6} {'vips':>7} {'xvips':>6} {'dB px':>6} {'dB file':>7}",
    ]
    for r in rows:
        lines.append(
            f"{r.name:24} {r.megabytes:5.2f} {r.ours_ms:7.1f} {r.naive_ms:7.1f}"
            f" {r.vs_naive:6.1f} {r.floor_ms:7.1f} {r.vs_floor:6.2f} {_f(r.vips_ms, '7.1f')}"
            f" {_f(r.vs_vips, '6.2f')} {r.psnr_pixels:6.1f} {r.psnr_files:7.1f}"
        )
    lines.append(
        "  xnaive = naive/ours, /floor = ours/decode floor, xvips = vips/ours (>= 1: ours faster)"
    )
    if vips_note:
        lines.append(f"  pyvips: {vips_note}")
    lines.extend(f"  {line}" for line in checks(rows))
    return lines


def checks(rows: list[KernelRow]) -> list[str]:
    """The issue's bars, each PASS or SHORT with the figure."""
    out = []

    def bar(label: str, ok: bool, detail: str) -> None:
        out.append(f"{'PASS ' if ok else 'SHORT'} {label}: {detail}")
        summary.BARS.append(summary.Bar(f"kernel: {label}", detail, ok, COMMAND))

    by_name = {r.name: r for r in rows}
    for name, label, times in (
        ("smooth-3000.jpg", "smooth 3000 JPEG >= 10x naive", 10),
        ("phone-3000.jpg", "grainy 3000 JPEG >= 4x naive", 4),
    ):
        if name in by_name:
            r = by_name[name]
            # Judged against naive Pillow as a user runs it: the two lines in a plain
            # Python process. In the kernel section naive Pillow also enjoys the worker's
            # allocator tuning (resizer/memory.py), part of our engineering, not of naive
            # Pillow's: that stricter figure is shown beside it.
            if r.plain_naive_ms is None:
                bar(label, r.vs_naive >= times, f"{r.vs_naive:.1f}x")
                continue
            plain = r.plain_naive_ms / r.ours_ms
            bar(
                label,
                plain >= times,
                f"{plain:.1f}x against naive Pillow in a plain process ({r.plain_naive_ms:.0f} ms);"
                f" {r.vs_naive:.1f}x against naive given the worker's allocator tuning too",
            )
    jpegs = [r for r in rows if r.format in ("jpeg", "mpo")]
    # CMYK is converted by littlecms on the whole draft decode (inks must not be averaged
    # before their conversion), which costs a share of that decode itself: its own bar.
    for label, limit, group in (
        ("JPEG within 1.25x of draft decode", 1.25, [r for r in jpegs if r.mode != "CMYK"]),
        ("CMYK JPEG within 1.6x of draft decode", 1.6, [r for r in jpegs if r.mode == "CMYK"]),
    ):
        if group:
            worst = max(group, key=lambda r: r.vs_floor)
            bar(label, worst.vs_floor <= limit, f"worst {worst.vs_floor:.2f}x ({worst.name})")
    with_vips = [r for r in rows if r.vs_vips is not None]
    if with_vips:
        slower = [f"{r.name} {r.vs_vips:.2f}x" for r in with_vips if (r.vs_vips or 0) < 1]
        bar("no slower than pyvips", not slower, ", ".join(slower) or "every file")
    pngs = [r for r in rows if r.format == "png"]
    if pngs:
        worst = min(pngs, key=lambda r: r.vs_naive)
        bar("PNG no slower than naive", worst.vs_naive >= 1,
            f"worst {worst.vs_naive:.1f}x ({worst.name})")  # fmt: skip
    worst_px = min(rows, key=lambda r: r.psnr_pixels)
    bar("pixels >= 42 dB", worst_px.psnr_pixels >= 42,
        f"worst {worst_px.psnr_pixels:.1f} dB ({worst_px.name})")  # fmt: skip
    worst_file = min(rows, key=lambda r: r.psnr_files)
    bar("delivered files >= 36 dB", worst_file.psnr_files >= 36,
        f"worst {worst_file.psnr_files:.1f} dB ({worst_file.name})")  # fmt: skip
    return out


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted(Path("bench/corpus").iterdir())
    rows, note = measure(paths)
    print("\n".join(report(rows, note)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
