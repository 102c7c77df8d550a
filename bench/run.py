"""`make bench`: every section in one run, printed as it goes (figures go in BENCHMARKS.md).

Usage: python -m bench.run [--sections 1,2,3,4] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import PIL
from PIL import features

from bench import kernel, make_corpus, memory, service


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"machine: {cores} cores ({model}), Python {platform.python_version()},"
        f" Pillow {PIL.__version__} (libjpeg-turbo {features.version('libjpeg_turbo')},"
        f" zlib {features.version('zlib')}, libwebp {features.version('webp')})"
    )


def section(title: str, run: Callable[[], list[str]]) -> None:
    started = time.perf_counter()
    try:
        lines = run()
    except Exception as exc:
        lines = [f"{title}: not run: {type(exc).__name__}: {exc}"]
    print("\n".join(lines), flush=True)
    # Other processes on the machine skew every figure: say how busy it was.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"  ({time.perf_counter() - started:.0f} s, load average {load:.2f})\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sections", default="1,2,3,4")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    wanted = set(args.sections.split(","))
    make_corpus.main([])
    corpus = make_corpus.CORPUS
    paths = sorted(p for p in corpus.iterdir() if p.name in make_corpus.FILES)
    print(machine(), flush=True)
    print(f"corpus: {corpus} ({len(paths)} files, made by bench/make_corpus.py)\n", flush=True)
    kernel_ms: dict[str, float] = {}

    def run_kernel() -> list[str]:
        rows, note = kernel.measure(paths)
        kernel_ms.update({r.name: r.ours_ms for r in rows})
        return kernel.report(rows, note)

    if "1" in wanted:
        section("1. kernel", run_kernel)
    if "2" in wanted:
        if not kernel_ms:
            rows, _ = kernel.measure([p for p in paths if p.name in _set_files()])
            kernel_ms.update({r.name: r.ours_ms for r in rows})
        section("2. end to end", lambda: service.end_to_end(corpus, args.workers, kernel_ms))
    if "3" in wanted:
        section("3. API", lambda: service.api_latency(args.workers))
    if "4" in wanted:
        section(
            "4. memory",
            lambda: ["4. memory", *service.web_memory(), *memory.worker_memory(corpus)],
        )
    return 0


def _set_files() -> set[str]:
    return {name for _, name, _ in service.SETS}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
