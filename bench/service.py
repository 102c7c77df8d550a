"""Sections 2, 3 and 4a of `make bench`: the whole service through `resizer up`.

2. end to end: tasks/s through `resizer up` with N workers on the 512 PNG, 1024 JPEG and 3000
   JPEG sets, against the kernel limit on the same cores (efficiency), and task latency p50/p99
   (server timestamps: created_at to updated_at) in a run paced at half the measured rate.
3. API: POST and status p50/p99 at a fixed concurrency, beside a bare aiohttp handler doing one
   Redis round trip on the same Redis (the framework's own limit on this machine).
4a. memory: peak RSS of the web process while it receives a 30 MB body.

Everything runs on this machine: the load generator shares the cores with the service, which
the figures include (noted in BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import aiohttp
import attrs
from PIL import Image

from bench.timing import percentile
from resizer.embedded import RedisServer, free_port

STARTUP_SECONDS = 60.0


@attrs.frozen
class RunResult:
    label: str
    tasks: int
    failed: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds > 0 else float("nan")


@contextlib.contextmanager
def resizer_up(workers: int, redis_url: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`resizer up` on a free port, on the given Redis; yields (base URL, process)."""
    port = free_port()
    env = dict(os.environ, REDIS_URL=redis_url, RESIZER_LOG_LEVEL="warning")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "resizer",
            "up",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_answering(f"{url}/health", proc, "`resizer up`")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_answering(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    """Until ``url`` answers 200, or ``proc`` (``what``) exits or takes STARTUP_SECONDS."""
    import urllib.request

    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer {url} within {STARTUP_SECONDS}s")


def _timestamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> str:
    async with session.post(
        f"{url}/tasks", data=body, headers={"Content-Type": "application/json"}
    ) as response:
        payload = await response.json()
        if response.status != 201:
            raise RuntimeError(f"POST /tasks: {response.status} {payload}")
        return str(payload["id"])


async def _wait_finished(session: aiohttp.ClientSession, url: str, task_id: str) -> dict[str, str]:
    while True:
        async with session.get(f"{url}/tasks/{task_id}", params={"wait": "30"}) as response:
            payload: dict[str, str] = await response.json()
        if payload.get("status") in ("DONE", "FAILED"):
            return payload


async def _run_tasks(
    url: str, bodies: Sequence[bytes], label: str, interval: float = 0.0, in_flight: int = 8
) -> RunResult:
    """Submit ``count`` tasks (at most ``in_flight`` POSTs at once, or one every ``interval``
    seconds), follow each with a long-poll, and time them with the server's own clocks."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        posting = asyncio.Semaphore(in_flight)

        async def one(index: int, body: bytes) -> dict[str, str]:
            if interval:
                await asyncio.sleep(index * interval)
            async with posting:
                task_id = await _post(session, url, body)
            return await _wait_finished(session, url, task_id)

        records = await asyncio.gather(*(one(i, body) for i, body in enumerate(bodies)))
    count = len(records)
    created = [_timestamp(r["created_at"]) for r in records]
    finished = [_timestamp(r["updated_at"]) for r in records]
    failed = sum(1 for r in records if r["status"] != "DONE")
    return RunResult(
        label=label,
        tasks=count,
        failed=failed,
        seconds=max(finished) - min(created),
        latencies=[(f - c) * 1000 for c, f in zip(created, finished, strict=True)],
    )


def _body(data: bytes) -> bytes:
    return json.dumps({"data": base64.b64encode(data).decode("ascii")}).encode()


def unique_variant(data: bytes, index: int) -> bytes:
    """The same image with a unique comment: the service shares work between identical uploads
    (content-addressed), so a throughput test must never send the same bytes twice. The comment
    changes neither the pixels nor the decoding cost."""
    text = f"bench task {index}".encode()
    if data.startswith(b"\xff\xd8"):  # JPEG: a COM segment right after SOI
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]
    if data.startswith(b"\x89PNG\r\n\x1a\n"):  # PNG: a tEXt chunk right after IHDR
        body = b"Comment\x00" + text
        chunk = struct.pack(">I", len(body)) + b"tEXt" + body
        chunk += struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF)
        return data[:33] + chunk + data[33:]
    raise ValueError("unique_variant handles JPEG and PNG only")


# --- section 2 ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_groups(up_pid: int, redis_pid: int) -> dict[str, list[int]]:
    """The processes of the service by role: web (with any helper processes it started),
    workers, redis, and the rest (supervisor, recovery). Call it again when helpers may have
    appeared: CPU times are cumulative, so a late-found helper still counts in full."""
    groups: dict[str, list[int]] = {
        "web": [],
        "workers": [],
        "redis": [redis_pid],
        "other": [up_pid],
    }
    for child in _children(up_pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            role = "web" if b"serve" in argv else "workers" if b"work" in argv else "other"
            groups[role].extend([child, *_descendants(child)])
    return groups


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found.extend(int(c) for c in (task / "children").read_text().split())
    return found


def cpu_by_group(groups: dict[str, list[int]]) -> dict[str, float]:
    totals = {}
    for role, pids in groups.items():
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        totals[role] = total
    totals["client"] = cpu_seconds(os.getpid())
    return totals


SETS = (("512 PNG", "photo-512.png", 400), ("1024 JPEG", "phone-1024.jpg", 600),
        ("3000 JPEG", "phone-3000.jpg", 160))  # fmt: skip


def end_to_end(corpus: Path, workers: int, kernel_ms: dict[str, float]) -> list[str]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"2. end to end: `resizer up --workers {workers}` on {cores} cores (client on the same"
        " cores); burst = all tasks at once (8 POSTs in flight); latency at half that rate",
        f"{'set':10} {'tasks':>5} {'tasks/s':>8} {'limit/s':>8} {'effic.':>7}"
        f" {'p50 ms':>8} {'p99 ms':>8} {'failed':>6}",
    ]
    with RedisServer() as redis, resizer_up(workers, redis.url) as (url, up):
        assert redis.proc is not None
        serial = 0
        for label, name, count in SETS:
            data = (corpus / name).read_bytes()
            paced_count = max(20, count // 2)
            bodies = [_body(unique_variant(data, serial + i)) for i in range(count + paced_count)]
            serial += len(bodies)
            asyncio.run(_run_tasks(url, bodies[:10], "warm-up"))
            groups = process_groups(up.pid, redis.proc.pid)  # after the warm-up: helpers exist
            cpu_before = cpu_by_group(groups)
            burst = asyncio.run(_run_tasks(url, bodies[10:count], label))
            groups = process_groups(up.pid, redis.proc.pid)
            cpu_after = cpu_by_group(groups)
            paced = asyncio.run(
                _run_tasks(url, bodies[count:], label, interval=2 / burst.rate, in_flight=64)
            )
            ms_kernel = kernel_ms.get(name, float("nan"))
            limit = min(workers, cores or 1) * 1000 / ms_kernel
            lines.append(
                f"{label:10} {burst.tasks:5d} {burst.rate:8.1f} {limit:8.1f}"
                f" {burst.rate / limit:7.0%}"
                f" {percentile(paced.latencies, 50):8.1f} {percentile(paced.latencies, 99):8.1f}"
                f" {burst.failed + paced.failed:6d}"
            )
            per_task = {
                role: (cpu_after[role] - cpu_before[role]) * 1000 / burst.tasks
                for role in cpu_after
            }
            lines.append(
                "           CPU ms per task: "
                + ", ".join(f"{role} {ms:.1f}" for role, ms in per_task.items())
                + f" (kernel alone {ms_kernel:.1f})"
            )
    lines.append(
        "  limit = min(workers, cores) x 1000 / kernel ms of the same file (section 1);"
        " latency = created_at -> updated_at, paced at half the burst rate"
    )
    return lines


# --- section 3 ----------------------------------------------------------------------------------


def _tiny_png() -> bytes:
    out = io.BytesIO()
    Image.linear_gradient("L").resize((16, 16)).convert("RGB").save(out, "PNG")
    return out.getvalue()


async def _latencies(
    requests: list[tuple[str, str, bytes | None]], concurrency: int
) -> tuple[list[float], float]:
    """Send (method, url, body) requests with a fixed number in flight: (ms each, wall s)."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    results: list[float] = []
    queue = list(reversed(requests))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            while queue:
                method, target, body = queue.pop()
                started = time.perf_counter()
                async with session.request(
                    method, target, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()
                    if response.status >= 400:
                        raise RuntimeError(f"{method} {target}: {response.status}")
                results.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
    return results, time.perf_counter() - started


def api_latency(workers: int, concurrency: int = 16, count: int = 2000) -> list[str]:
    lines = [
        f"3. API: {count} requests per row, {concurrency} in flight, tiny image (16x16 PNG)",
        f"{'endpoint':34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}",
    ]
    tiny = _tiny_png()
    body = _body(tiny)
    with RedisServer() as redis:
        rows: list[tuple[str, list[float], float]] = []
        with resizer_up(workers, redis.url) as (url, _):
            posts: list[tuple[str, str, bytes | None]] = [
                ("POST", f"{url}/tasks", _body(unique_variant(tiny, i))) for i in range(count)
            ]
            times, wall = asyncio.run(_latencies(posts, concurrency))
            rows.append(("resizer POST /tasks", times, wall))
            task_id = asyncio.run(_create_one(url, body))
            gets: list[tuple[str, str, bytes | None]] = [
                ("GET", f"{url}/tasks/{task_id}", None)
            ] * count
            times, wall = asyncio.run(_latencies(gets, concurrency))
            rows.append(("resizer GET /tasks/{id}", times, wall))
        with _bare_app(redis.url) as bare_url:
            gets = [("GET", f"{bare_url}/", None)] * count
            asyncio.run(_latencies(gets[:200], concurrency))  # warm-up
            times, wall = asyncio.run(_latencies(gets, concurrency))
            rows.append(("bare aiohttp + 1 Redis GET", times, wall))
    for label, times, wall in rows:
        lines.append(
            f"{label:34} {len(times) / wall:8.0f} {percentile(times, 50):8.2f}"
            f" {percentile(times, 99):8.2f}"
        )
    return lines


async def _create_one(url: str, body: bytes) -> str:
    async with aiohttp.ClientSession() as session:
        return await _post(session, url, body)


@contextlib.contextmanager
def _bare_app(redis_url: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_app", str(port), redis_url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_answering(url, proc, "the bare app")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


# --- section 4a ---------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    found = []
    stack = [pid]
    while stack:
        current = stack.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                children = [int(c) for c in (task / "children").read_text().split()]
                found.extend(children)
                stack.extend(children)
    return found


def _web_pid(root: int) -> int:
    for pid in _descendants(root):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"serve" in argv:
                return pid
    raise RuntimeError("could not find the web process (`resizer serve`) under `resizer up`")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
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


def big_square_png(target_bytes: int) -> bytes:
    """A square PNG of incompressible noise, about target_bytes long."""
    side = int((target_bytes / 3) ** 0.5)
    planes = [Image.effect_noise((side, side), 80) for _ in range(3)]
    out = io.BytesIO()
    Image.merge("RGB", planes).save(out, "PNG", compress_level=1)
    return out.getvalue()


def web_memory(body_mb: float = 30.0) -> list[str]:
    image = big_square_png(int(body_mb * 1e6 * 3 / 4) - 100)
    body = _body(image)
    with RedisServer() as redis, resizer_up(1, redis.url) as (url, proc):
        pid = _web_pid(proc.pid)

        def web_rss() -> float:
            # The web process and any helper it runs (large bodies may be decoded elsewhere), as
            # PSS: pages the helpers share with their parent are counted once, not per process.
            total = 0.0
            for each in [pid, *_descendants(pid)]:
                with contextlib.suppress(OSError):
                    total += pss_mb(each)
            return total

        before = web_rss()
        peak = before
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, web_rss())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            started = time.perf_counter()
            status = asyncio.run(_post_status(url, body))
            elapsed = time.perf_counter() - started
        finally:
            done.set()
            sampler.join()
        hwm = rss_mb(pid, "VmHWM")
        helpers = len(_descendants(pid))
    return [
        f"  web process receiving a {len(body) / 1e6:.1f} MB body ({status} in {elapsed:.2f} s):"
        f" {before:.0f} MB before, peak {peak:.0f} MB (+{peak - before:.0f} MB: PSS of the web"
        f" process and its {helpers} helper processes, sampled every 5 ms; the web process's own"
        f" RSS high-water mark {hwm:.0f} MB)"
    ]


async def _post_status(url: str, body: bytes) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/tasks", data=body, headers={"Content-Type": "application/json"}
        ) as response,
    ):
        await response.read()
        return response.status
