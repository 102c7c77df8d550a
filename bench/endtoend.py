"""Section 2 of `make bench`: where the CPU goes, end to end.

``resizer up --workers 2`` on its own Redis, driven by the black-box load client
(``bench/load.py``, a process of its own). Per set of 2,000 unique uploads, as JSON (base64)
and as raw bodies (``Content-Type: application/octet-stream``): tasks/s, the efficiency
against the kernel limit (cores x 1000 / kernel ms), and the CPU ms per task of each kind of
process, read from ``/proc`` before and after the burst (utime + stime, waited-for children
included): web, its helper processes, workers, Redis, the rest of ``up`` (supervisor,
recovery), the load client. Beside them the kernel's own CPU per task, measured before the
service starts (``bench/kernel_cpu.py``, mean CPU time of ``make_thumbnails``), and the ratio

    (web + helpers + worker overhead + Redis) / kernel,  worker overhead = workers - kernel

which says how much the service spends around each task's kernel. Beside each bar, the same
ratio for ``bench/floor_app.py`` under the same load: what any aiohttp service that keeps the
originals in Redis spends on the two requests of a task (web + Redis; no worker).

With a baseline (``--baseline``), the same runs with its code, from its venv, in the same run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
from redis import Redis as SyncRedis

from bench import procs, summary
from bench.load import JSON, RAW
from bench.targets import BASELINE_COMMIT, OURS, ROOT, Target, baseline_figure
from resizer.embedded import RedisServer

SETS = (("512 PNG", "photo-512.png"), ("1024 JPEG", "phone-1024.jpg"),
        ("3000 JPEG", "phone-3000.jpg"))  # fmt: skip
BARS = {
    ("1024 JPEG", JSON): 0.6,
    ("3000 JPEG", JSON): 0.35,
    ("1024 JPEG", RAW): 0.4,
    ("3000 JPEG", RAW): 0.2,
}
KINDS = ("web", "helpers", "workers", "redis", "other", "client")
COMMAND = "python -m bench.run --sections 2"


@attrs.frozen
class SetRun:
    target: str
    label: str
    mode: str
    tasks: int
    failed: int
    seconds: float
    cpu_ms: dict[str, float]  # per task, by kind of process
    kernel_ms: float
    cores: int

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds > 0 else float("nan")

    @property
    def limit(self) -> float:
        return self.cores * 1000 / self.kernel_ms

    @property
    def overhead_ms(self) -> float:
        """What the workers spend beyond the kernel, per task."""
        return self.cpu_ms["workers"] - self.kernel_ms

    @property
    def ratio(self) -> float:
        around = self.cpu_ms["web"] + self.cpu_ms["helpers"] + self.overhead_ms
        return (around + self.cpu_ms["redis"]) / self.kernel_ms


def kernel_cpu(target: Target, files: Sequence[Path]) -> dict[str, float]:
    """Mean CPU ms of ``make_thumbnails`` per file, with ``target``'s code and interpreter."""
    script = str(ROOT / "bench" / "kernel_cpu.py")
    found: dict[str, float] = json.loads(target.run(script, "2", *map(str, files), timeout=600))
    return {Path(name).name: ms for name, ms in found.items()}


def modes(target: Target) -> tuple[str, ...]:
    # face751 took JSON bodies only: a raw body would be refused as JSON that does not parse.
    return (JSON, RAW) if target is OURS else (JSON,)


def burst(
    url: str, service: Callable[[], dict[str, list[int]]], redis_pid: int, path: Path, mode: str,
    count: int, serial: int,
) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
    """One set through the load client: its result, and the CPU seconds of each kind of
    process over the burst (after the client's warm-up, which is not counted). ``service``
    gives the service's processes by kind (``procs.role_pids``)."""
    client = subprocess.Popen(
        [sys.executable, "-m", "bench.load", url, str(path), "--mode", mode,
         "--count", str(count), "--serial", str(serial)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert client.stdin is not None
    assert client.stdout is not None
    try:
        if client.stdout.readline().strip() != "ready":
            raise RuntimeError("the load client did not warm up")

        def cpu() -> dict[str, float]:
            groups: dict[str, list[int]] = {kind: [] for kind in KINDS} | service()
            groups["redis"] = [redis_pid]
            groups["client"] = [client.pid]
            return {kind: procs.group_cpu(groups[kind]) for kind in KINDS}

        before = cpu()
        client.stdin.write("go\n")
        client.stdin.flush()
        line = client.stdout.readline()
        after = cpu()  # the client waits for its stdin to close: it is still there to read
        if not line:
            raise RuntimeError("the load client stopped without a result")
        result: dict[str, float] = json.loads(line)
    finally:
        with contextlib.suppress(OSError):
            client.stdin.close()
        client.wait(30)
    return result, {kind: after[kind] - before[kind] for kind in KINDS}


def run_target(target: Target, corpus: Path, workers: int, count: int) -> list[SetRun]:
    """Every set of ``target``, each on a fresh Redis and a fresh ``resizer up``: a set finds
    neither the memory nor the connections the one before it left."""
    cores = min(workers, len(os.sched_getaffinity(0)))
    kernel = kernel_cpu(target, [corpus / name for _, name in SETS])
    runs = []
    for label, name in SETS:
        for mode in modes(target):
            with (
                RedisServer() as redis,
                procs.resizer_up(target, workers, redis.url) as (url, up),
            ):
                assert redis.proc is not None
                service = functools.partial(procs.role_pids, up.pid)
                result, cpu = burst(url, service, redis.proc.pid, corpus / name, mode, count, 0)
            tasks = int(result["tasks"])
            runs.append(
                SetRun(
                    target=target.name,
                    label=label,
                    mode=mode,
                    tasks=tasks,
                    failed=int(result["failed"]),
                    seconds=result["seconds"],
                    cpu_ms={k: v * 1000 / tasks for k, v in cpu.items()},
                    kernel_ms=kernel[name],
                    cores=cores,
                )
            )
    return runs


@attrs.frozen
class Floor:
    """The floors under one bar, each over the kernel: the floor app's web + Redis, and the
    floor workers' overhead (their CPU - the kernel) + Redis."""

    app: float
    workers: float

    @property
    def total(self) -> float:
        return self.app + self.workers


def floor_workers(path: Path, count: int, workers: int, kernel_ms: float) -> float:
    """(overhead + Redis) / kernel of ``workers`` ``bench/floor_worker.py`` processes draining
    ``count`` queued tasks of ``path``'s image."""
    from bench import floor_worker

    with RedisServer() as redis, SyncRedis.from_url(redis.url) as client:
        assert redis.proc is not None
        client.set(floor_worker.ORIGINAL, path.read_bytes())
        ids = [f"t{n}" for n in range(count)]
        for start in range(0, count, 1000):
            client.rpush(floor_worker.QUEUE, *ids[start : start + 1000])
        before = procs.cpu_seconds(redis.proc.pid)
        running = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.floor_worker", redis.url],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(workers)
        ]
        results = [json.loads(each.communicate(timeout=900)[0]) for each in running]
        redis_ms = (procs.cpu_seconds(redis.proc.pid) - before) * 1000
    tasks = sum(int(r["tasks"]) for r in results)
    worker_ms = sum(float(r["cpu_s"]) for r in results) * 1000
    return (worker_ms - tasks * kernel_ms + redis_ms) / tasks / kernel_ms


def floor(
    corpus: Path, count: int, workers: int, kernel: dict[str, float]
) -> dict[tuple[str, str], Floor]:
    """The floors under each bar: the floor app's, then the floor workers' (one per file)."""
    files = dict(SETS)
    apps = {}
    for label, mode in BARS:
        name = files[label]
        with (
            RedisServer() as redis,
            procs.bench_app("bench.floor_app", redis.url, "/tasks/warm") as (url, app, _),
        ):
            assert redis.proc is not None
            result, cpu = burst(
                url, lambda: {"web": [app.pid]}, redis.proc.pid, corpus / name, mode, count, 0
            )
        per_task = {k: v * 1000 / int(result["tasks"]) for k, v in cpu.items()}
        apps[(label, mode)] = (per_task["web"] + per_task["redis"]) / kernel[name]
    names = {files[label] for label, _ in BARS}
    behind = {name: floor_workers(corpus / name, count, workers, kernel[name]) for name in names}
    return {(label, mode): Floor(app, behind[files[label]]) for (label, mode), app in apps.items()}


def end_to_end(
    corpus: Path, workers: int, count: int, targets: Sequence[Target],
    kernel_best: dict[str, float],
) -> list[str]:  # fmt: skip
    lines = [
        f"2. end to end: `resizer up --workers {workers}` on its own Redis; {count} unique tasks"
        " per set, 8 POSTs in flight, each followed by a long-poll, from the load client"
        " (bench/load.py, its own process); logs at INFO to /dev/null",
        "   CPU ms per task by kind of process, from /proc over the burst; kernel = mean CPU of"
        " make_thumbnails on the file (bench/kernel_cpu.py); overhead = workers - kernel;"
        " ratio = (web + helpers + overhead + redis) / kernel",
        f"{'target':8} {'set':9} {'upload':6} {'tasks/s':>7} {'limit/s':>7} {'effic.':>6}"
        f" {'web':>5} {'helpers':>7} {'workers':>7} {'overhd':>6} {'redis':>5} {'other':>5}"
        f" {'client':>6} {'kernel':>6} {'ratio':>5} {'failed':>6}",
    ]
    runs: list[SetRun] = []
    for target in targets:
        found = run_target(target, corpus, workers, count)
        runs.extend(found)
        for run in found:
            c = run.cpu_ms
            lines.append(
                f"{run.target:8} {run.label:9} {run.mode:6} {run.rate:7.1f} {run.limit:7.1f}"
                f" {run.rate / run.limit:6.0%} {c['web']:5.2f} {c['helpers']:7.2f}"
                f" {c['workers']:7.2f} {run.overhead_ms:6.2f} {c['redis']:5.2f} {c['other']:5.2f}"
                f" {c['client']:6.2f} {run.kernel_ms:6.2f} {run.ratio:5.2f} {run.failed:6d}"
            )
    best = ", ".join(f"{name} {kernel_best[name]:.2f}" for _, name in SETS if name in kernel_best)
    lines += [
        "  helpers: ours starts none (the web process reads every body as it arrives), so 0;"
        f" {BASELINE_COMMIT} decoded bodies over 1 MiB in a pool of 2 processes",
        "  limit = cores x 1000 / kernel ms; effic. = tasks/s / limit"
        + (f"; section 1's best-of kernel ms: {best}" if best else ""),
    ]
    ours = {(r.label, r.mode): r for r in runs if r.target == OURS.name}
    theirs = {(r.label, r.mode): r for r in runs if r.target != OURS.name}
    floors = (
        floor(corpus, count, workers, {dict(SETS)[r.label]: r.kernel_ms for r in ours.values()})
        if ours
        else {}
    )
    lines += [
        "  the floor: bench/floor_app.py (a bare aiohttp app: the body read, decoded, hashed and"
        " stored with one MSET; the long-poll one GET; no queue, worker, log or metric) under the"
        " same load, (web + Redis) / kernel; plus bench/floor_worker.py (LMOVE to a processing"
        f" list, GET, the kernel, thumbnails SET and LREM in one MULTI/EXEC), {workers} of them"
        f" draining {count} queued tasks, (overhead + Redis) / kernel:",
        "  "
        + ", ".join(
            f"{label} {mode} {each.app:.2f} + {each.workers:.2f} = {each.total:.2f}"
            for (label, mode), each in floors.items()
        ),
    ]
    for (label, mode), line in BARS.items():
        if (label, mode) not in ours:
            continue
        run = ours[(label, mode)]
        base, said = baseline_figure(
            f"e2e.{mode}.{label}.ratio",
            theirs[(label, mode)].ratio if (label, mode) in theirs else None,
        )
        was = "" if base is None else f"; baseline {base:.2f} ({said})"
        if (label, mode) in floors:
            under = floors[(label, mode)]
            was += (
                f"; the floor: {under.total:.2f} (app {under.app:.2f}"
                f" + workers {under.workers:.2f})"
            )
        lines.append(
            summary.judge(
                f"{label}, {mode} uploads: (web + helpers + worker overhead + Redis) / kernel"
                f" <= {line}",
                f"{run.ratio:.2f}{was}",
                run.ratio <= line,
                COMMAND,
            )
        )
    for (label, mode), each in ours.items():
        theirs_run = theirs.get((label, mode))
        base, said = baseline_figure(
            f"e2e.{mode}.{label}.efficiency",
            None if theirs_run is None else theirs_run.rate / theirs_run.limit,
        )
        effic = each.rate / each.limit
        lines.append(
            summary.judge(
                f"{label}, {mode} uploads: tasks/s against the kernel limit (a figure, no bar)",
                f"{effic:.0%} ({each.rate:.1f} tasks/s of {each.limit:.0f})"
                + ("" if base is None else f"; baseline {base:.0%} ({said})"),
                None,
                COMMAND,
            )
        )
    return lines
