"""``resizer up`` keeps its Redis alive and its data on disk: killed or restarted, it loses no
acknowledged task."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from resizer.embedded import free_port
from resizer.processes import resizer_command
from tests.helpers import make_image, wait_until

pytestmark = pytest.mark.integration


@attrs.define
class Up:
    url: str
    log: Path
    proc: subprocess.Popen[bytes]

    def pids(self) -> dict[str, int]:
        """The latest pid of each child, from up's own log."""
        found = {}
        for line in self.log.read_text().splitlines():
            if '"child.started"' in line:
                event = json.loads(line)
                found[event["child"]] = event["pid"]
        return found


def call(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "image/png"} if body is not None else {}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def submit(url: str) -> str:
    status, body = call(f"{url}/tasks", "POST", make_image("PNG", unique=True))
    assert status == 201, body
    task_id: str = json.loads(body)["id"]
    return task_id


def status_of(url: str, task_id: str) -> str | None:
    code, body = call(f"{url}/tasks/{task_id}")
    return str(json.loads(body)["status"]) if code == 200 else None


StartUp = Callable[..., Up]


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[StartUp]:
    procs: list[subprocess.Popen[bytes]] = []
    port = free_port()

    def start(*args: str, workers: int | None = 1) -> Up:
        """``resizer up ARGS``, with ``--workers`` unless ``workers`` is None (the default)."""
        log = tmp_path / f"up-{len(procs)}.log"
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        count = () if workers is None else ("--workers", str(workers))
        argv = resizer_command("up", "--port", str(port), *count, *args)
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        up = Up(f"http://127.0.0.1:{port}", log, proc)
        wait_until(lambda: call(f"{up.url}/ready")[0] == 200, 60, "resizer up to be ready")
        return up

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def test_a_killed_redis_is_restarted_with_its_tasks(start_up: StartUp, tmp_path: Path) -> None:
    up = start_up("--data-dir", str(tmp_path / "data"))
    done = submit(up.url)
    wait_until(lambda: status_of(up.url, done) == "DONE", 30, "the first task")
    old = up.pids()["redis"]
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: up.pids().get("redis") != old, 30, "Redis restarted")
    wait_until(lambda: call(f"{up.url}/ready")[0] == 200, 30, "the API ready again")
    # Written more than a second before the kill (appendfsync everysec): still there.
    assert status_of(up.url, done) == "DONE"
    after = submit(up.url)
    wait_until(lambda: status_of(up.url, after) == "DONE", 30, "a task after the restart")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_up_restarted_on_its_data_loses_no_acknowledged_task(
    start_up: StartUp, tmp_path: Path, stop: signal.Signals
) -> None:
    data = tmp_path / "data"
    first = start_up("--data-dir", str(data), "--maxmemory", str(2**30))
    # More tasks than one worker finishes at once: some are still waiting when up stops.
    ids = [submit(first.url) for _ in range(30)]
    wait_until(lambda: (data / "appendonly.aof").stat().st_size > 0, 10, "the append-only file")
    # The promise is for tasks acknowledged more than a second ago (appendfsync everysec).
    time.sleep(1.5)
    first.proc.send_signal(stop)
    first.proc.wait(60)
    if stop is signal.SIGKILL:
        # Its children got SIGTERM from the kernel (PDEATHSIG); Redis writes its file as it goes.
        wait_until(lambda: call(f"{first.url}/health")[0] == 0, 30, "the old web to go")
    second = start_up("--data-dir", str(data))
    wait_until(lambda: all(status_of(second.url, t) == "DONE" for t in ids), 60, "every task DONE")


def test_up_runs_one_more_worker_than_it_may_use_cores(start_up: StartUp) -> None:
    """By default: a worker leaves its core idle while it waits on Redis, and one more fills it."""
    up = start_up("--ephemeral", workers=None)
    wanted = len(os.sched_getaffinity(0)) + 1

    def workers() -> int:
        return sum(1 for child in up.pids() if child.startswith("worker-"))

    wait_until(lambda: workers() == wanted, 30, f"{wanted} workers started")
    done = submit(up.url)
    wait_until(lambda: status_of(up.url, done) == "DONE", 30, "a task done")
    assert workers() == wanted


def test_a_second_up_on_the_same_data_refuses_to_start(start_up: StartUp, tmp_path: Path) -> None:
    data = tmp_path / "data"
    start_up("--data-dir", str(data))
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    second = subprocess.run(
        resizer_command("up", "--port", str(free_port()), "--data-dir", str(data)),
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 2
    assert b"in use by another resizer up" in second.stderr


def test_ephemeral_keeps_nothing_on_disk(
    start_up: StartUp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    up = start_up("--ephemeral")
    submit(up.url)
    assert not home.exists()
