"""What an operator runs: ``resizer info`` and the health checks of the roles without HTTP,
against real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from resizer.config import Settings
from resizer.embedded import free_port
from resizer.models import ImageInfo, Upload
from resizer.processes import resizer_command
from tests.helpers import make_image, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    """The roles' environment: a short lease (1 s heartbeats), a private temporary directory
    (where the liveness files live)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RESIZER_")}
    return {
        **base,
        "REDIS_URL": redis_url,
        "RESIZER_LEASE_SECONDS": "3",
        "TMPDIR": str(tmp_path),
        "RESIZER_FAILPOINTS": "during_resize=sleep:30@SLOW",
    }


@pytest.fixture
def started(env: dict[str, str], tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        resizer_command(*args), env=env, capture_output=True, text=True, timeout=60, check=False
    )


def info(env: dict[str, str]) -> dict[str, Any]:
    done = run(env, "info", "--json")  # through the web (RESIZER_URL)
    assert done.returncode == 0, done.stderr
    view: dict[str, Any] = json.loads(done.stdout)
    return view


def submit(settings: Settings, data: bytes) -> str:
    from resizer.store import Store, client_for

    async def create() -> str:
        store = Store(client_for(settings.redis_url), settings)
        try:
            return (await store.create_task(Upload.of(ImageInfo("png", 96, 96), data))).id
        finally:
            await store.close()

    return asyncio.run(create())


def test_info_shows_the_queue_its_workers_and_its_failures(
    env: dict[str, str], started: list[subprocess.Popen[bytes]], real_settings: Settings
) -> None:
    port = free_port()
    web = resizer_command("serve", "--host", "127.0.0.1", "--port", str(port))
    started.append(subprocess.Popen(web, env=env, stdout=subprocess.DEVNULL))
    env["RESIZER_URL"] = f"http://127.0.0.1:{port}"
    wait_until(lambda: run(env, "healthcheck").returncode == 0, 30, "the web process")
    worker = subprocess.Popen(resizer_command("work"), env=env, stdout=subprocess.DEVNULL)
    started.append(worker)
    wait_until(lambda: len(info(env)["workers"]) == 1, 30, "the worker's record")
    slow = submit(real_settings, make_image("PNG", unique=True) + b"SLOW")
    waiting = submit(real_settings, make_image("PNG", unique=True))
    wait_until(lambda: info(env)["in_flight"] != [], 30, "the slow task in flight")
    view = info(env)
    (held,) = view["in_flight"]
    (record,) = view["workers"]
    assert held["task_id"] == slow
    assert record["task_id"] == slow  # busy with it
    assert record["record"]["pid"] == worker.pid
    assert held["worker"] == record["record"]["name"]
    assert view["stats"]["waiting"] == 1
    assert view["stats"]["oldest_waiting_seconds"] >= 0
    assert waiting not in {f["task_id"] for f in view["in_flight"]}
    text = run(env, "info")
    assert text.returncode == 0
    assert f"busy with {slow}" in text.stdout
    assert "1 waiting" in text.stdout

    worker.send_signal(signal.SIGKILL)
    worker.wait()
    broken = make_image("PNG", size=64)
    broken = broken[:60] + bytes(len(broken) - 60)
    bad = submit(real_settings, broken)
    clean_env = {**env, "RESIZER_FAILPOINTS": ""}
    started.append(subprocess.Popen(resizer_command("work"), env=clean_env))
    wait_until(lambda: bad in {f["task_id"] for f in info(env)["failures"]}, 60, "the failure")
    (failure,) = [f for f in info(env)["failures"] if f["task_id"] == bad]
    assert "decode" in failure["error"]


def test_info_says_when_the_server_is_away(env: dict[str, str]) -> None:
    done = run({**env, "RESIZER_URL": "http://127.0.0.1:1"}, "info")
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1
    assert "resizer up" in done.stderr


@pytest.mark.parametrize(("role", "args"), [("work", ()), ("recover", ("--every", "1"))])
def test_the_health_check_of_a_role_without_http(
    env: dict[str, str], started: list[subprocess.Popen[bytes]], role: str, args: tuple[str, ...]
) -> None:
    assert run(env, role, "--check").returncode == 1  # nothing ran on this "host" yet
    no_server = {**env, "RESIZER_URL": "http://127.0.0.1:1"}
    assert run(no_server, "healthcheck", "--role", "auto").returncode == 1
    proc = subprocess.Popen(resizer_command(role, *args), env=env, stdout=subprocess.DEVNULL)
    started.append(proc)
    wait_until(lambda: run(env, role, "--check").returncode == 0, 30, f"{role} to be alive")
    # The image's one HEALTHCHECK tells the role in the container: no HTTP asked of a worker.
    no_server = {**env, "RESIZER_URL": "http://127.0.0.1:1"}
    assert run(no_server, "healthcheck", "--role", "auto").returncode == 0
    if role == "work":
        proc.send_signal(signal.SIGSTOP)  # hung: its loop no longer turns
        try:
            wait_until(lambda: run(env, role, "--check").returncode == 1, 30, "unhealthy")
        finally:
            proc.send_signal(signal.SIGCONT)
