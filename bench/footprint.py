"""Section 7 of `make bench`: the footprint of a deployment, ours against the baseline's.

- **runtime**: a fresh venv with the runtime dependencies only (``poetry install --only main
  --compile``, as the Dockerfile installs them: no dev group, no extras, so ours without
  ``embedded``'s Redis binary), its site-packages without the venv's own pip and setuptools,
  plus the package's source; MB as ``du`` counts.
- **idle RSS** and **start time** of ``resizer serve``, ``resizer work`` and
  ``resizer recover --every 30``, each run from that runtime venv against a real Redis: start
  time to ``/health`` answering 200 (serve) or to the first line the process writes (work,
  recover), median of ``RUNS``; RSS (VmRSS, its children included) after ``IDLE_SECONDS`` idle.
  ``serve``'s start, the one with a bar, is the median of ``START_RUNS``, taken in turns with
  the other target's and a bare aiohttp + redis-py app's (``bench/bare_app.py``): a start lasts
  a few tenths of a second, and the machine's pace drifts over the minutes between one target's
  measurements and the other's, so only starts taken side by side make a ratio.
  Every module is compiled beforehand, the package's too, as in the image: under
  ``PYTHONDONTWRITEBYTECODE`` (the image sets it) a process would otherwise compile each module
  it imports at every start, which triples a start time and is not what a deployment pays.
- ``resizer --help`` and ``resizer work --check`` (a worker container's health probe, run every
  15 s): wall time, median of ``RUNS`` + 2.

Venvs are made under a temporary directory and removed afterwards; poetry installs from its
cache, so this takes seconds, not a download.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from bench import procs, summary
from bench.targets import OURS, ROOT, Target, baseline_figure
from resizer.embedded import RedisServer, free_port

RUNS = 3
START_RUNS = 9
IDLE_SECONDS = 2.0
VENV_TOOLING = ("pip", "setuptools", "_distutils_hack", "wheel", "distutils-precedence.pth")
COMMAND = "python -m bench.run --sections 7"
BARS = {"runtime": 0.45, "serve RSS": 0.60, "serve start": 0.60}


@attrs.frozen
class Footprint:
    runtime_mb: float
    biggest: list[tuple[str, float]]  # the largest installed distributions' directories, MB
    rss_mb: dict[str, float]
    start_s: dict[str, float]
    help_s: float
    check_s: float | None  # a worker container's health probe; None where there is none
    bare_start_s: float | None = None  # bench/bare_app.py from the same venv (ours only)


def du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0]) / 1024


def _poetry(target: Target) -> str:
    own = target.root / ".tools" / "poetry" / "bin" / "poetry"
    return str(own if own.is_file() else ROOT / ".tools" / "poetry" / "bin" / "poetry")


@contextlib.contextmanager
def runtime_venv(target: Target) -> Iterator[Path]:
    """A fresh venv with ``target``'s runtime dependencies (and the project, editable)."""
    with tempfile.TemporaryDirectory(prefix="resizer-footprint-") as tmp:
        env = {
            **{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
            "POETRY_VIRTUALENVS_IN_PROJECT": "false",
            "POETRY_VIRTUALENVS_PATH": tmp,
            "POETRY_NO_INTERACTION": "1",
        }
        subprocess.run(
            [_poetry(target), "install", "--only", "main", "--compile", "--quiet"],
            cwd=target.root,
            env=env,
            check=True,
            capture_output=True,
            timeout=600,
        )
        (venv,) = [p for p in Path(tmp).iterdir() if (p / "bin" / "python").exists()]
        # The project is installed editable: its own modules are compiled where they are.
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "compileall", "-q", str(target.root / "resizer")],
            check=True,
            capture_output=True,
            timeout=600,
        )
        yield venv


def runtime_size(target: Target, venv: Path) -> tuple[float, list[tuple[str, float]]]:
    (site,) = venv.glob("lib/python*/site-packages")
    sizes = {
        entry.name: du_mb(entry)
        for entry in site.iterdir()
        if not any(entry.name.startswith(tool) for tool in VENV_TOOLING)
    }
    package = target.root / "resizer"
    with tempfile.TemporaryDirectory() as tmp:  # the source alone, without __pycache__
        copy = Path(tmp) / "resizer"
        shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
        sizes["resizer (source)"] = du_mb(copy)
    biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:6]
    return sum(sizes.values()), biggest


def _start(
    venv: Path, target: Target, args: Sequence[str], redis_url: str, *, idle: bool = True
) -> tuple[float, float]:
    """(seconds to ready, idle RSS MB) of one ``resizer ARGS`` process; no RSS (0) unless
    ``idle``."""
    port = free_port()
    if args[0] == "serve":
        args = [*args, "--host", "127.0.0.1", "--port", str(port)]
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(venv / "bin" / "python"), "-m", "resizer", *args],
        cwd=target.root,
        env=target.env(REDIS_URL=redis_url, RESIZER_LOG_LEVEL="INFO"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        if args[0] == "serve":
            ready = procs.wait_answering(f"http://127.0.0.1:{port}/health", proc, "serve")
        else:
            assert proc.stdout is not None
            if not proc.stdout.readline():
                raise RuntimeError(f"`resizer {' '.join(args)}` wrote nothing and exited")
            ready = time.monotonic()
        rss = 0.0
        if idle:
            time.sleep(IDLE_SECONDS)
            for pid in [proc.pid, *procs.descendants(proc.pid)]:
                with contextlib.suppress(OSError):
                    rss += procs.status_mb(pid)
    finally:
        procs.stop(proc, signal.SIGTERM, grace=20)
    return ready - started, rss


def _bare_start(venv: Path, redis_url: str) -> float:
    """Seconds to the first 200 of ``bench/bare_app.py`` (aiohttp and redis-py, nothing else):
    the start that any aiohttp service on Redis pays, the floor under ``serve``'s."""
    python = str(venv / "bin" / "python")
    with procs.bench_app("bench.bare_app", redis_url, python=python, env=OURS.env()) as started:
        return started[2]


ROLES = {
    "serve": ("serve",),
    "work": ("work",),
    "recover": ("recover", "--every", "30"),
}


def measure(target: Target, venv: Path, redis_url: str) -> Footprint:
    """``target``'s footprint but for serve's start, which ``measure_all`` adds."""
    runtime, biggest = runtime_size(target, venv)
    rss: dict[str, float] = {}
    start: dict[str, float] = {}
    for role, args in ROLES.items():
        runs = [_start(venv, target, args, redis_url) for _ in range(RUNS)]
        rss[role] = statistics.median(r for _, r in runs)
        if role != "serve":  # serve's start is taken side by side (serve_starts)
            start[role] = statistics.median(s for s, _ in runs)
    helps = []
    for _ in range(RUNS + 2):
        began = time.monotonic()
        subprocess.run(
            [str(venv / "bin" / "resizer"), "--help"],
            env=target.env(),
            capture_output=True,
            check=True,
        )
        helps.append(time.monotonic() - began)
    checks = []
    for _ in range(RUNS + 2):
        began = time.monotonic()
        done = subprocess.run(
            [str(venv / "bin" / "resizer"), "work", "--check"],
            env=target.env(),
            capture_output=True,
        )
        checks.append(time.monotonic() - began)
    # 0 or 1 is a verdict (no worker runs here: 1); anything else, no such probe.
    check = statistics.median(checks) if done.returncode in (0, 1) else None
    return Footprint(runtime, biggest, rss, start, statistics.median(helps), check)


def serve_starts(
    compared: Sequence[Target], venvs: dict[str, Path], redis_url: str
) -> tuple[dict[str, float], float]:
    """Median seconds to serve's first /health 200 per target, and the bare app's from our
    venv: ``START_RUNS`` rounds, each starting every one of them in turn."""
    times: dict[str, list[float]] = {target.name: [] for target in compared}
    bare: list[float] = []
    for _ in range(START_RUNS):
        for target in compared:
            venv = venvs[target.name]
            times[target.name].append(
                _start(venv, target, ROLES["serve"], redis_url, idle=False)[0]
            )
        bare.append(_bare_start(venvs[OURS.name], redis_url))
    return {name: statistics.median(each) for name, each in times.items()}, statistics.median(bare)


def measure_all(compared: Sequence[Target]) -> dict[str, Footprint]:
    with contextlib.ExitStack() as stack:
        venvs = {target.name: stack.enter_context(runtime_venv(target)) for target in compared}
        with RedisServer() as redis:
            found = {
                target.name: measure(target, venvs[target.name], redis.url) for target in compared
            }
            starts, bare = serve_starts(compared, venvs, redis.url)
    return {
        name: attrs.evolve(
            each,
            start_s={**each.start_s, "serve": starts[name]},
            bare_start_s=bare if name == OURS.name else None,
        )
        for name, each in found.items()
    }


def footprint(compared: Sequence[Target]) -> list[str]:
    lines = [
        "7. footprint: runtime venv (poetry install --only main --compile, no extras; site-packages"
        " without pip/setuptools, plus the package source), idle RSS after"
        f" {IDLE_SECONDS:g} s and start time (serve: to /health 200; work, recover: to the first"
        f" line written), median of {RUNS} (serve's: of {START_RUNS}, in turns with the other"
        " target's and the bare app's), from that venv against a real Redis",
        f"{'target':8} {'runtime MB':>10} {'serve MB':>8} {'serve s':>7} {'work MB':>7}"
        f" {'work s':>6} {'recover MB':>10} {'recover s':>9} {'--help s':>8} {'check s':>7}",
    ]
    found = measure_all(compared)
    for target in compared:
        each = found[target.name]
        lines.append(
            f"{target.name:8} {each.runtime_mb:10.1f} {each.rss_mb['serve']:8.1f}"
            f" {each.start_s['serve']:7.2f} {each.rss_mb['work']:7.1f} {each.start_s['work']:6.2f}"
            f" {each.rss_mb['recover']:10.1f} {each.start_s['recover']:9.2f} {each.help_s:8.2f}"
            f" {'-' if each.check_s is None else f'{each.check_s:.2f}':>7}"
        )
        lines.append(
            "         largest: " + ", ".join(f"{name} {mb:.1f}" for name, mb in each.biggest)
        )
        if each.bare_start_s is not None:
            lines.append(
                f"         a bare aiohttp + redis-py app (bench/bare_app.py) from this venv starts"
                f" in {each.bare_start_s:.2f} s"
            )
    ours = found[OURS.name]
    theirs = next((f for name, f in found.items() if name != OURS.name), None)
    figures = {
        "runtime": (ours.runtime_mb, None if theirs is None else theirs.runtime_mb, "MB"),
        "serve RSS": (
            ours.rss_mb["serve"], None if theirs is None else theirs.rss_mb["serve"], "MB"
        ),
        "serve start": (
            ours.start_s["serve"], None if theirs is None else theirs.start_s["serve"], "s"
        ),
    }  # fmt: skip
    keys = {"runtime": "runtime_mb", "serve RSS": "serve_rss_mb", "serve start": "serve_start_s"}
    for name, (mine, measured, unit) in figures.items():
        base, said = baseline_figure(f"footprint.{keys[name]}", measured)
        share = None if not base else mine / base
        floor = ""
        if name == "serve start" and base and ours.bare_start_s is not None:
            floor = f"; a bare aiohttp + redis-py app: {ours.bare_start_s / base:.0%}"
        lines.append(
            summary.judge(
                f"{name} <= {BARS[name]:.0%} of face751's",
                f"{mine:.2f} {unit}"
                + ("" if base is None else f" = {share:.0%} of {base:.2f} {unit} ({said})")
                + floor,
                None if share is None else share <= BARS[name],
                COMMAND,
            )
        )
    return lines
