"""The chaos harness: real ``resizer`` processes against a real Redis, a real HTTP client, a
watcher that checks what clients can see at every moment, and the final audit of the store.

Nothing here sleeps blindly: every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import redis
from PIL import Image

from resizer.config import Settings
from resizer.embedded import RedisServer, free_port
from resizer.models import ImageSize, TaskStatus
from resizer.processes import resizer_command
from resizer.store.keys import partition, task_key
from tests.helpers import wait_until

FINISHED = {TaskStatus.DONE.value, TaskStatus.FAILED.value}


# --- the figures ------------------------------------------------------------------------------


@attrs.define
class Figures:
    """One row of the chaos table, plus any extra measurements (latencies, memory...)."""

    scenario: str
    submitted: int = 0
    done: int = 0
    failed_expected: int = 0
    lost: int = 0
    faults: int = 0
    wall_seconds: float = 0.0
    outcome: str = "not run"
    notes: dict[str, Any] = attrs.Factory(dict)
    kind: str = "fault"  # or "hostile": a row of the hostile table (answer, figure, alive)
    answer: str = ""
    figure: str = ""
    alive: bool | None = None
    started: float = attrs.Factory(time.monotonic)

    def stop_clock(self) -> None:
        self.wall_seconds = round(time.monotonic() - self.started, 1)

    def take(self, audit: Audit, failed_expected: int = 0) -> None:
        self.done = audit.status.get(TaskStatus.DONE.value, 0)
        self.failed_expected = min(failed_expected, audit.status.get("FAILED", 0))
        self.lost = audit.lost

    def as_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        del data["started"]
        return data


# --- processes --------------------------------------------------------------------------------


def rss_peak_kib(pid: int) -> int:
    """The process' peak resident set (VmHWM), KiB; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@attrs.define
class Cluster:
    """A Redis server and the ``resizer`` processes of one scenario; everything is killed at the
    end, whatever happened."""

    settings: Settings
    logs: Path
    redis_server: RedisServer
    procs: list[subprocess.Popen[bytes]] = attrs.Factory(list)
    names: dict[int, str] = attrs.Factory(dict)

    def env(self, failpoints: str = "", **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            **self.settings.to_env(),
            "RESIZER_FAILPOINTS": failpoints,
            "PYTHONUNBUFFERED": "1",
            **extra,
        }

    def start(
        self, *args: str, failpoints: str = "", settings: Settings | None = None
    ) -> subprocess.Popen[bytes]:
        env = self.env(failpoints)
        if settings is not None:
            env.update(settings.to_env())
        name = f"{args[0]}-{len(self.procs)}"
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                resizer_command(*args), env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        self.names[proc.pid] = name
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.logs / f"{self.names[proc.pid]}.log").read_text(errors="replace")

    def events(self, proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
        return parse_events(self.log_of(proc))

    def serve(self, settings: Settings | None = None) -> tuple[subprocess.Popen[bytes], str]:
        """``resizer serve`` on a free port; returns once ``/health`` answers."""
        port = free_port()
        proc = self.start("serve", "--host", "127.0.0.1", "--port", str(port), settings=settings)
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert proc.poll() is None, self.log_of(proc)
            return http_get(url, "/health", timeout=1)[0] == 200

        wait_until(healthy, 20, "resizer serve to answer /health")
        return proc, url

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait()

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url, socket_timeout=10)


class Zygote:
    """Forks real worker processes from a warmed-up Python (see tests/chaos/zygote.py)."""

    def __init__(self, cluster: Cluster, failpoints: str = "") -> None:
        self.logs = cluster.logs
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.zygote", str(cluster.logs)],
            env=cluster.env(failpoints),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parents[2],
        )
        cluster.procs.append(self.proc)
        self.spawned: list[int] = []

    def spawn(self) -> int:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(b"\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline())
        self.spawned.append(pid)
        return pid

    def log(self, pid: int) -> str:
        path = self.logs / f"forked-work-{self.spawned.index(pid)}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def events(self, pid: int) -> list[dict[str, Any]]:
        return parse_events(self.log(pid))

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10, f"worker {pid} to die")

    def close(self) -> None:
        for pid in self.spawned:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait()


def parse_events(log: str) -> list[dict[str, Any]]:
    found = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by SIGKILL
    return found


# --- waiting ----------------------------------------------------------------------------------


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    return await asyncio.to_thread(proc.wait, timeout)


def statuses(client: redis.Redis, ids: list[str]) -> list[str | None]:
    """Each task's status as clients see it: a task that joined another has that one's."""
    pipe = client.pipeline(transaction=False)
    for task_id in ids:
        pipe.hmget(task_key(task_id), "status", "leader")
    found = [
        (None if s is None else s.decode(), None if ld is None else ld.decode())
        for s, ld in pipe.execute()
    ]
    leaders = sorted({ld for s, ld in found if ld is not None and s not in FINISHED})
    pipe = client.pipeline(transaction=False)
    for leader in leaders:
        pipe.hget(task_key(leader), "status")
    of_leader = {ld: s.decode() for ld, s in zip(leaders, pipe.execute(), strict=True) if s}
    return [of_leader.get(ld, s) if ld is not None and s not in FINISHED else s for s, ld in found]


def task_hashes(client: redis.Redis) -> set[str]:
    """The ids of every task record in Redis (hashes named ``{resizer}:task:<id>``)."""
    found = set()
    for key in client.scan_iter(match=partition(0).task("*"), count=1000):
        if client.type(key) == b"hash":
            found.add(key.decode().rpartition(":")[2])
    return found


async def wait_finished(
    client: redis.Redis, ids: Iterable[str], timeout: float, tick: Callable[[], None] | None = None
) -> None:
    """Until every task is DONE or FAILED (or the deadline: the audit then counts the rest lost)."""
    pending = list(ids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        found = await asyncio.to_thread(statuses, client, pending)
        pending = [t for t, s in zip(pending, found, strict=True) if s not in FINISHED]
        if tick is not None:
            tick()
        if pending:
            await asyncio.sleep(0.1)


# --- HTTP -------------------------------------------------------------------------------------


def http_get(base: str, path: str, timeout: float = 10) -> tuple[int, dict[str, Any]]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    except OSError:
        return 0, {}
    finally:
        conn.close()


@attrs.define
class Api:
    """The real HTTP client side: submits, records every answer and its latency."""

    session: aiohttp.ClientSession
    base: str
    answers: Counter[int] = attrs.Factory(Counter)
    post_ms: list[float] = attrs.Factory(list)
    get_ms: list[float] = attrs.Factory(list)
    slowest_ms: float = 0.0
    error_codes: Counter[str] = attrs.Factory(Counter)

    async def post(self, image: bytes) -> tuple[int, dict[str, Any]]:
        body = {"data": base64.b64encode(image).decode()}
        return await self._call("POST", "/tasks", self.post_ms, json=body)

    async def status(self, task_id: str) -> tuple[int, dict[str, Any]]:
        return await self._call("GET", f"/tasks/{task_id}", self.get_ms)

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return await self._call("GET", path, self.get_ms)

    async def _call(
        self, method: str, path: str, latencies: list[float], **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        started = time.perf_counter()
        try:
            async with self.session.request(method, self.base + path, **kwargs) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status, text = 0, "{}"
        elapsed = (time.perf_counter() - started) * 1000
        latencies.append(elapsed)
        self.slowest_ms = max(self.slowest_ms, elapsed)
        self.answers[status] += 1
        body: dict[str, Any] = json.loads(text) if text.startswith("{") else {"raw": text}
        if status >= 400 or status == 0:
            error = body.get("error")
            self.error_codes[
                f"{status} {error.get('code') if isinstance(error, dict) else '-'}"
            ] += 1
        return status, body

    async def submit(self, image: bytes) -> str:
        status, body = await self.post(image)
        assert status == 201, (status, body)
        task_id: str = body["id"]
        return task_id


def open_session(concurrency: int = 64, timeout: float = 30) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))], 1)


# --- what a client can see --------------------------------------------------------------------


def decodes_to(data: str, size: int) -> bool:
    try:
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            img.load()
            return img.size == (size, size)
    except Exception:  # any failure to decode is the finding
        return False


class Watcher(threading.Thread):
    """A client polling the API all along: whenever it sees a task DONE it fetches both sizes
    at once; both must be there and decode. It also checks that a DONE task never changes
    again (no second DONE, no going back). Every breach is kept as a violation."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.host, port = base.removeprefix("http://").split(":")
        self.port = int(port)
        self.ids: list[str] = []
        self.lock = threading.Lock()
        self.done_at: dict[str, str] = {}
        self.violations: list[str] = []
        self.checks = 0
        self.stopping = threading.Event()
        self.conn: http.client.HTTPConnection | None = None

    def watch(self, task_id: str) -> None:
        with self.lock:
            self.ids.append(task_id)

    def _get(self, path: str) -> tuple[int, dict[str, Any]]:
        for _ in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
            try:
                self.conn.request("GET", path)
                response = self.conn.getresponse()
                return response.status, json.loads(response.read() or b"{}")
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
        return 0, {}

    def run(self) -> None:
        cursor = 0
        while not self.stopping.is_set():
            with self.lock:
                if not self.ids:
                    task_id = ""
                else:
                    cursor = (cursor + 1) % len(self.ids)
                    task_id = self.ids[cursor]
            # Paced (~100 checks a second), so the watcher does not starve the service of CPU.
            if self.stopping.wait(0.01) or not task_id:
                continue
            self.check(task_id)

    def check(self, task_id: str) -> None:
        status, view = self._get(f"/tasks/{task_id}")
        if status != 200:
            return  # Redis away (503) or server busy: nothing visible, nothing wrong
        self.checks += 1
        seen = self.done_at.get(task_id)
        if seen is not None and (view["status"] != "DONE" or view["updated_at"] != seen):
            self.violations.append(f"{task_id} changed after DONE: {view}")
        if view["status"] != "DONE":
            return
        self.done_at[task_id] = view["updated_at"]
        for size in (ImageSize.S64, ImageSize.S32):
            code, image = self._get(f"/tasks/{task_id}/image?size={size.value}")
            if code == 503:
                continue
            if code != 200 or not decodes_to(image.get("data", ""), int(size.value)):
                self.violations.append(f"{task_id} DONE but its {size.value} image: {code}")

    def finish(self) -> list[str]:
        """Stop, after one last look at every task."""
        self.stopping.set()
        self.join(30)
        with self.lock:
            ids = list(self.ids)
        for task_id in ids:
            self.check(task_id)
        if self.conn is not None:
            self.conn.close()
        return self.violations


class QueueSampler(threading.Thread):
    """Samples the queue structures all along: an id twice in ``waiting``, or both waiting and
    processing at once, would be a task queued twice."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.samples = 0
        self.violations: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.01):
            try:
                pipe = self.client.pipeline(transaction=True)
                pipe.lrange(partition(0).waiting, 0, -1)
                pipe.lrange(partition(0).processing, 0, -1)
                waiting, processing = pipe.execute()
            except redis.RedisError:
                continue
            self.samples += 1
            twice = [i for i, n in Counter(waiting).items() if n > 1]
            both = set(waiting) & set(processing)
            if twice or both:
                self.violations.append(f"queued twice: {twice} in both lists: {both}")

    def finish(self) -> list[str]:
        self.stopping.set()
        self.join(10)
        return self.violations


# --- the audit --------------------------------------------------------------------------------


@attrs.define
class Audit:
    status: Counter[str]
    lost: int
    leftovers: dict[str, int]
    attempts: Counter[int]
    bad_outputs: list[str]
    tasks: dict[str, dict[str, str]]

    @property
    def extra_attempts(self) -> int:
        return sum((n - 1) * count for n, count in self.attempts.items() if n > 1)

    def assert_clean(self) -> None:
        assert self.lost == 0, f"{self.lost} tasks lost: {self.status}"
        assert self.bad_outputs == [], self.bad_outputs[:5]
        assert self.leftovers == {"waiting": 0, "processing": 0, "leases": 0}, self.leftovers


async def audit(client: redis.Redis, ids: list[str], base: str) -> Audit:
    """Every accepted task: finished (else lost); when DONE, both sizes served by the API decode
    to the right size; nothing left in any queue structure."""

    def read_all() -> list[dict[bytes, bytes]]:
        pipe = client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hgetall(task_key(task_id))
        hashes: list[dict[bytes, bytes]] = pipe.execute()
        return hashes

    hashes = await asyncio.to_thread(read_all)
    tasks = {
        task_id: {k.decode(): v.decode() for k, v in fields.items()}
        for task_id, fields in zip(ids, hashes, strict=True)
    }
    # A task that joined another (the same bytes in flight) keeps WAITING in its own record and
    # reads its status (and error) from the task it joined, as the API shows it.
    for record in tasks.values():
        leader = record.get("leader")
        if leader is not None and record.get("status") not in FINISHED:
            fields = ("status", "updated_at", "error", "result_format")
            values = client.hmget(task_key(leader), fields)
            record.update(
                {f: v.decode() for f, v in zip(fields, values, strict=True) if isinstance(v, bytes)}
            )
    status = Counter(t.get("status", "MISSING") for t in tasks.values())
    lost = sum(n for s, n in status.items() if s not in FINISHED)
    attempts = Counter(int(t.get("attempts", 0)) for t in tasks.values())
    done = [i for i, t in tasks.items() if t.get("status") == "DONE"]
    bad: list[str] = []
    gate = asyncio.Semaphore(32)
    async with open_session(32) as session:

        async def check(task_id: str, size: int) -> None:
            async with gate, session.get(f"{base}/tasks/{task_id}/image?size={size}") as r:
                body = await r.json() if r.status == 200 else {}
            if not decodes_to(body.get("data", ""), size):
                bad.append(f"{task_id}:{size}: {r.status}")

        await asyncio.gather(*(check(t, size) for t in done for size in (64, 32)))
    leftovers = {
        "waiting": int(client.llen(partition(0).waiting)),
        "processing": int(client.llen(partition(0).processing)),
        "leases": int(client.zcard(partition(0).leases)),
    }
    return Audit(status, lost, leftovers, attempts, bad, tasks)


def start_cluster(redis_server: RedisServer, settings: Settings, logs: Path) -> Cluster:
    logs.mkdir(parents=True, exist_ok=True)
    settings = attrs.evolve(settings, redis_url=redis_server.url)
    return Cluster(settings=settings, logs=logs, redis_server=redis_server)


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
