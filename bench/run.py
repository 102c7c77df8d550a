"""`make bench`: every section in one run, printed as it goes (figures go in BENCHMARKS.md).

Usage: python -m bench.run [--sections 1,2,3,4,5,6,7] [--workers N] [--tasks N]
                           [--baseline PATH]

With ``--baseline PATH`` (or ``RESIZER_BASELINE``), a checkout of the baseline with its own
``make venv``, the sections that compare with it run its code too, in the same run.
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

from bench import (
    coldstart,
    endtoend,
    footprint,
    kernel,
    make_corpus,
    memory,
    service,
    summary,
    targets,
    upload_latency,
)


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
    parser.add_argument("--sections", default="1,2,3,4,5,6,7")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per set in section 2")
    parser.add_argument(
        "--baseline",
        default=None,
        help=f"a checkout of the baseline with its venv (default: ${targets.BASELINE_ENV})",
    )
    args = parser.parse_args(argv)
    wanted = set(args.sections.split(","))
    compared = targets.targets(args.baseline)
    make_corpus.main([])
    corpus = make_corpus.CORPUS
    paths = sorted(p for p in corpus.iterdir() if p.name in make_corpus.FILES)
    print(machine(), flush=True)
    for target in compared:
        print(f"{target.name}: {target.root} at {target.version()}, {target.python}", flush=True)
    if len(compared) == 1:
        print(
            f"no baseline checkout (--baseline or {targets.BASELINE_ENV}): baseline figures are"
            " the ones recorded in BENCHMARKS.md",
            flush=True,
        )
    print(f"corpus: {corpus} ({len(paths)} files, made by bench/make_corpus.py)\n", flush=True)
    kernel_ms: dict[str, float] = {}

    def run_kernel() -> list[str]:
        rows, note = kernel.measure(paths)
        kernel_ms.update({r.name: r.ours_ms for r in rows})
        return kernel.report(rows, note)

    if "1" in wanted:
        section("1. kernel", run_kernel)
    if "2" in wanted:
        section(
            "2. end to end",
            lambda: endtoend.end_to_end(corpus, args.workers, args.tasks, compared, kernel_ms),
        )
    if "3" in wanted:
        section("3. API", lambda: service.api_latency(args.workers))
    if "4" in wanted:
        section(
            "4. memory",
            lambda: ["4. memory", *service.web_memory(), *memory.worker_memory(corpus)],
        )
    if "5" in wanted:
        section("5. cold start", lambda: coldstart.cold_start(corpus, compared))
    if "6" in wanted:
        section("6. upload latency", lambda: upload_latency.upload_latency(compared))
    if "7" in wanted:
        section("7. footprint", lambda: footprint.footprint(compared))
    print("\n".join(summary.table()), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
