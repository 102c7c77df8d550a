"""Processes as the OS sees them (``/proc``): CPU time, memory, children; and starting the
service's roles for a measurement."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench.targets import ROOT, Target
from resizer.embedded import free_port

STARTUP_SECONDS = 60.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far, with that of its children it has waited
    for (utime + stime + cutime + cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is fields[0], so utime..cstime (stat fields 14-17) are 11-14.
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found.extend(int(c) for c in (task / "children").read_text().split())
    return found


def descendants(pid: int) -> list[int]:
    found = []
    stack = [pid]
    while stack:
        for child in children(stack.pop()):
            found.append(child)
            stack.append(child)
    return found


def argv(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def status_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pss_mb(pid: int) -> float:
    """Proportional set size: private pages plus a fair share of shared ones."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def group_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def wait_answering(url: str, proc: subprocess.Popen[bytes], what: str) -> float:
    """Until ``url`` answers 200, or ``proc`` (``what``) exits or takes STARTUP_SECONDS.
    Returns the monotonic time it first answered."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return time.monotonic()
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{what} did not answer {url} within {STARTUP_SECONDS}s")


@contextlib.contextmanager
def bench_app(
    module: str, redis_url: str, probe: str = "/", python: str = sys.executable,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes], float]]:  # fmt: skip
    """``python -m MODULE PORT REDIS_URL`` (``bench.bare_app``, ``bench.floor_app``), once
    ``probe`` answers 200: its URL, its process, and the seconds it took to answer."""
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [python, "-m", module, str(port), redis_url],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        answered = wait_answering(url + probe, proc, module)
        yield url, proc, answered - started
    finally:
        stop(proc, grace=10)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 60) -> None:
    """Ask ``proc`` (a session leader) to stop; kill its whole session if it does not."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def resizer_up(
    target: Target, workers: int, redis_url: str, log_level: str = "INFO"
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``resizer up`` of ``target`` on a free port and the given Redis; yields (URL, process).

    Logs at ``log_level`` (the default level of a deployment) go to /dev/null: what writing them
    costs is counted, not what reading them would."""
    port = free_port()
    proc = subprocess.Popen(
        target.command("up", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
        cwd=target.root,
        env=target.env(REDIS_URL=redis_url, RESIZER_LOG_LEVEL=log_level),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_answering(f"{url}/ready", proc, f"`resizer up` ({target.name})")
        yield url, proc
    finally:
        stop(proc, signal.SIGINT)


def role_pids(up_pid: int) -> dict[str, list[int]]:
    """The processes under ``resizer up`` by kind: web, helpers (the web process's children),
    workers (with their children), other (the supervisor and the recovery loop)."""
    groups: dict[str, list[int]] = {"web": [], "helpers": [], "workers": [], "other": [up_pid]}
    for child in children(up_pid):
        with contextlib.suppress(OSError):
            args = argv(child)
            if b"serve" in args:
                groups["web"].append(child)
                groups["helpers"].extend(descendants(child))
            elif b"work" in args:
                groups["workers"].extend([child, *descendants(child)])
            else:
                groups["other"].extend([child, *descendants(child)])
    return groups
