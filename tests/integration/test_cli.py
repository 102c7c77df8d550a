"""The ``resizer`` command as a user runs it: real subprocesses, ``resizer up`` included."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import attrs
import pytest
from PIL import Image

from resizer.embedded import free_port
from resizer.processes import resizer_command
from tests.helpers import answers, make_image, wait_until

pytestmark = pytest.mark.integration


@attrs.frozen
class Up:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def child_pids(self) -> dict[str, int]:
        pids = {}
        for line in self.log.read_text().splitlines():
            if '"child.started"' in line:
                event = json.loads(line)
                pids[event["child"]] = event["pid"]
        return pids


def resizer(*args: str, url: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """Run ``resizer ARGS --url URL`` as a user would, with ``stdin`` as its standard input."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    argv = (
        resizer_command(*args) if args[0] == "--version" else resizer_command(*args, "--url", url)
    )
    done = subprocess.run(argv, env=env, capture_output=True, input=stdin, timeout=120, check=False)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[1][0] != "Z"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """``resizer up`` exactly as ``make up`` runs it: embedded Redis, web, workers, recovery."""
    port = free_port()
    log = tmp_path_factory.mktemp("up") / "up.log"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["XDG_DATA_HOME"] = str(log.parent)  # up's default data directory, kept in the test's
    # Append mode: up and its children share this file, and each line must land whole.
    with log.open("ab") as out:
        proc = subprocess.Popen(
            resizer_command("up", "--port", str(port), "--workers", "2"),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    service = Up(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_until(lambda: answers(service.url), 60, "resizer up to serve /health")
        yield service
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_submit_wait_status_fetch_through_resizer_up(up: Up, tmp_path: Path) -> None:
    jpeg, png = tmp_path / "photo.jpg", tmp_path / "logo.png"
    jpeg.write_bytes(make_image("JPEG", size=300))
    png.write_bytes(make_image("PNG", size=120, mode="RGBA"))

    submitted = resizer("submit", str(jpeg), str(png), "--wait", url=up.url)
    assert submitted.returncode == 0, submitted.stderr
    ids = submitted.stdout.split()
    assert len(ids) == 2

    status = resizer("status", ids[0], url=up.url)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"{ids[0]}  DONE  attempts=1")

    for task_id, fmt in zip(ids, ("JPEG", "PNG"), strict=True):
        for size in ("64", "32"):
            target = tmp_path / f"{task_id}-{size}.img"
            fetched = resizer("fetch", task_id, "--size", size, "-o", str(target), url=up.url)
            assert fetched.returncode == 0, fetched.stderr
            with Image.open(target) as img:
                assert img.size == (int(size), int(size))
                assert img.format == fmt
    original = tmp_path / "original.jpg"
    assert (
        resizer("fetch", ids[0], "--size", "original", "-o", str(original), url=up.url).returncode
        == 0
    )
    assert original.read_bytes() == jpeg.read_bytes()


def test_up_runs_workers_as_resizer_work_children_and_restarts_them(up: Up) -> None:
    pids = up.child_pids()
    worker_pids = [pid for name, pid in pids.items() if name.startswith("worker-")]
    assert len(worker_pids) == 2
    for pid in worker_pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[-3:-1] == [b"resizer", b"work"]
    os.kill(worker_pids[0], signal.SIGKILL)
    wait_until(lambda: up.child_pids()["worker-0"] != worker_pids[0], 30, "worker-0 restarted")
    assert alive(up.child_pids()["worker-0"])


def test_failures_are_one_clear_line_and_a_nonzero_exit(up: Up, tmp_path: Path) -> None:
    rect = tmp_path / "wide.png"
    rect.write_bytes(make_image("PNG", size=80, height=40))
    rejected = resizer("submit", str(rect), url=up.url)
    assert rejected.returncode == 1
    assert rejected.stderr.strip().count("\n") == 0
    assert "square" in rejected.stderr
    assert "Traceback" not in rejected.stderr

    missing = resizer("status", "no-such-task", url=up.url)
    assert missing.returncode == 1
    assert "404" in missing.stderr

    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = resizer("status", "abc", url=nowhere)
    assert unreachable.returncode == 3  # the documented code for an unreachable server
    assert nowhere in unreachable.stderr
    assert "resizer up" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def test_submit_wait_exits_nonzero_when_a_task_fails(up: Up, tmp_path: Path) -> None:
    png = make_image("PNG", size=64)
    broken = tmp_path / "broken.png"
    broken.write_bytes(png[:60] + bytes(len(png) - 60))  # the header passes, the pixels do not
    result = resizer("submit", str(broken), "--wait", url=up.url)
    assert result.returncode == 1
    assert "FAILED" in result.stderr


def test_version() -> None:
    result = resizer("--version", url="")
    assert result.returncode == 0
    assert result.stdout.startswith("resizer ")


# --- the batch-friendly client (issue: a command-line client people enjoy) ----------------------


def test_submit_directories_stdin_json_and_a_rejected_file(up: Up, tmp_path: Path) -> None:
    album = tmp_path / "album"
    (album / "nested").mkdir(parents=True)
    (album / "a.png").write_bytes(make_image("PNG", unique=True))
    (album / "nested" / "b.JPG").write_bytes(make_image("JPEG", unique=True))
    (album / "notes.txt").write_text("not an image, not submitted")
    (album / "wide.png").write_bytes(make_image("PNG", size=60, height=30))
    piped = make_image("PNG", size=70, unique=True)

    result = resizer("submit", str(album), "-", "--wait", "--json", url=up.url, stdin=piped)
    assert result.returncode == 1  # one file was rejected
    assert "wide.png" in result.stderr
    assert "square" in result.stderr
    report = json.loads(result.stdout)
    by_source = {Path(r["source"]).name: r for r in report}
    assert set(by_source) == {"a.png", "b.JPG", "wide.png", "-"}
    for name in ("a.png", "b.JPG", "-"):
        assert by_source[name]["status"] == "DONE"
        assert by_source[name]["error"] is None
    assert by_source["wide.png"]["id"] is None


def test_status_many_as_json_and_watch(up: Up, tmp_path: Path) -> None:
    files = []
    for i in range(2):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(make_image("PNG", unique=True))
    ids = resizer("submit", *map(str, files), url=up.url).stdout.split()
    watched = resizer("status", *ids, "--watch", url=up.url)
    assert watched.returncode == 0
    assert all(f"{task_id}  DONE" in watched.stdout for task_id in ids)
    as_json = resizer("status", *ids, "--json", url=up.url)
    assert [v["status"] for v in json.loads(as_json.stdout)] == ["DONE", "DONE"]


def test_fetch_all_sizes_into_a_directory_and_to_stdout(up: Up, tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(make_image("JPEG", size=200, unique=True))
    (task_id,) = resizer("submit", str(photo), "--wait", url=up.url).stdout.split()
    out = tmp_path / "out"
    fetched = resizer("fetch", task_id, "--size", "all", "-o", str(out), url=up.url)
    assert fetched.returncode == 0, fetched.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{task_id}_{s}.jpg" for s in ("64", "32", "original"))
    assert (out / f"{task_id}_original.jpg").read_bytes() == photo.read_bytes()

    again = resizer("fetch", task_id, "--size", "all", "-o", str(out), url=up.url)
    assert again.returncode == 1
    assert "--force" in again.stderr
    forced = resizer("fetch", task_id, "--size", "all", "-o", str(out), "--force", url=up.url)
    assert forced.returncode == 0

    raw = subprocess.run(
        [*resizer_command("fetch", task_id, "--size", "32", "-o", "-", "--url", up.url)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    with Image.open(io.BytesIO(raw.stdout)) as img:
        assert (img.format, img.size) == ("JPEG", (32, 32))


@pytest.mark.parametrize(
    "command",
    ["serve", "work", "recover", "up", "submit", "status", "fetch", "delete", "healthcheck"],
)
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = subprocess.run(
        resizer_command(command, "--help"), capture_output=True, text=True, timeout=60, check=True
    )
    assert "Example" in result.stdout


def test_shell_completion_is_available() -> None:
    installed = Path(sys.executable).parent / "resizer"  # the console script poetry installs
    # typer finds the shell among the process's ancestors (shellingham), and takes no shell
    # name from the command line: run it from bash, as a user would. pytest may have no shell
    # above it (started in the background, its parent gone). "; true" keeps bash from exec'ing.
    result = subprocess.run(
        ["bash", "-c", f"{shlex.quote(str(installed))} --show-completion; true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "complete -o default -F _resizer_completion resizer" in result.stdout


def test_a_batch_on_a_terminal_shows_a_progress_bar(up: Up, tmp_path: Path) -> None:
    import pty

    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(make_image("PNG", unique=True))
    controller, terminal = pty.openpty()
    try:
        env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
        done = subprocess.run(
            resizer_command("submit", str(tmp_path), "--url", up.url),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=terminal,
            env=env,
            timeout=60,
            check=True,
        )
        os.close(terminal)
        seen = b""
        with suppress(OSError):  # EIO once the terminal's other end is closed
            while chunk := os.read(controller, 65536):
                seen += chunk
    finally:
        os.close(controller)
    assert b"submitting" in seen  # the bar, drawn on the terminal (stderr)
    assert len(done.stdout.split()) == 6  # "<id>  <file>" lines on stdout


# --- per-item results, delete, fetch --wait -----------------------------------------------------


def test_status_prints_every_item_with_its_error(up: Up, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_image("PNG", unique=True))
    (task_id,) = resizer("submit", str(photo), "--wait", url=up.url).stdout.split()

    as_json = resizer("status", task_id, "nope", "--json", url=up.url)
    assert as_json.returncode == 1  # one id is unknown
    known, unknown = json.loads(as_json.stdout)
    assert (known["id"], known["status"], known["error"]) == (task_id, "DONE", None)
    assert known["attempts"] == 1
    assert unknown["id"] == "nope"
    assert unknown["status"] is None
    assert unknown["error"]["code"] == "not_found"

    as_text = resizer("status", task_id, "nope", url=up.url)
    assert as_text.returncode == 1
    assert as_text.stdout.startswith(f"{task_id}  DONE  attempts=1")
    assert as_text.stderr.startswith("resizer: nope: 404 ")


def test_delete_then_the_task_is_gone(up: Up, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_image("PNG", unique=True))
    (task_id,) = resizer("submit", str(photo), url=up.url).stdout.split()

    deleted = resizer("delete", task_id, url=up.url)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout == f"{task_id}  deleted\n"
    assert resizer("status", task_id, url=up.url).returncode == 1

    again = resizer("delete", task_id, "--json", url=up.url)
    assert again.returncode == 1
    (item,) = json.loads(again.stdout)
    assert (item["id"], item["deleted"], item["error"]["code"]) == (task_id, False, "not_found")


def test_fetch_wait_long_polls_until_done_then_writes(up: Up, tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(make_image("JPEG", size=400, unique=True))
    (task_id,) = resizer("submit", str(photo), url=up.url).stdout.split()  # no --wait
    out = tmp_path / "out"
    fetched = resizer("fetch", task_id, "--wait", "--size", "all", "-o", str(out), url=up.url)
    assert fetched.returncode == 0, fetched.stderr
    with Image.open(out / f"{task_id}_32.jpg") as img:
        assert (img.format, img.size) == ("JPEG", (32, 32))
    assert (out / f"{task_id}_original.jpg").read_bytes() == photo.read_bytes()


# --- the client library in a process that cannot import the server ------------------------------

_CLIENT_ONLY = r"""
import asyncio
import json
import sys

BLOCKED = (
    "redis", "hiredis", "PIL", "numpy", "numba", "pyspng", "deflate", "prometheus_client",
    "resizer.api", "resizer.worker", "resizer.store", "resizer.imaging", "resizer.recovery",
    "resizer.embedded", "resizer.processes", "resizer.cli", "resizer.pngdecode", "resizer.cmyk",
)


def blocked(name):
    return any(name == b or name.startswith(b + ".") for b in BLOCKED)


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if blocked(name):
            raise ImportError(f"{name} must not be imported by a client")
        return None


sys.meta_path.insert(0, Blocker())

import resizer

url, png, jpeg = sys.argv[1:4]
report = {}
with resizer.Client(url) as client:
    created = client.submit(png)
    done = client.wait(created.id, timeout=60)
    thumb = client.fetch(created.id, 64)
    report["sync"] = [
        done.status.value, thumb.format, thumb.data.hex(),
        client.delete(created.id), client.delete(created.id),
    ]


async def main():
    async with resizer.AsyncClient(url) as client:
        with open(jpeg, "rb") as f:
            created = await client.submit(f.read())
        done = await client.wait(created.id, timeout=60)
        thumb = await client.fetch(created.id, 32)
        return [done.status.value, thumb.format, thumb.data.hex()]


report["async"] = asyncio.run(main())
report["imported"] = sorted(m for m in sys.modules if blocked(m))
print(json.dumps(report))
"""


def test_the_client_library_works_without_importing_the_server(up: Up, tmp_path: Path) -> None:
    png, jpeg = tmp_path / "a.png", tmp_path / "b.jpg"
    png.write_bytes(make_image("PNG", size=100, unique=True))
    jpeg.write_bytes(make_image("JPEG", size=100, unique=True))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESIZER_")}
    done = subprocess.run(
        [sys.executable, "-c", _CLIENT_ONLY, up.url, str(png), str(jpeg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["imported"] == []
    status, fmt, data, deleted, deleted_again = report["sync"]
    assert (status, fmt, deleted, deleted_again) == ("DONE", "png", True, False)
    with Image.open(io.BytesIO(bytes.fromhex(data))) as img:
        assert (img.format, img.size) == ("PNG", (64, 64))
    status, fmt, data = report["async"]
    assert (status, fmt) == ("DONE", "jpeg")
    with Image.open(io.BytesIO(bytes.fromhex(data))) as img:
        assert (img.format, img.size) == ("JPEG", (32, 32))


# --- logs ---------------------------------------------------------------------------------------


def test_probes_are_logged_at_debug_and_other_requests_at_info(up: Up, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_image("PNG", unique=True))
    assert resizer("submit", str(photo), url=up.url).returncode == 0
    assert answers(up.url)

    # The fields as the JSON renderer writes them, in their order (method, route, status).
    posted = '"method": "POST", "route": "/tasks", "status": 201'
    wait_until(lambda: posted in up.log.read_text(), 20, "the POST /tasks to be logged")
    # The fixture and this test polled /health: at INFO, those requests leave no line.
    text = up.log.read_text()
    assert '"event": "request.handled"' in text
    for probe in ("/health", "/ready", "/metrics"):
        assert f'"route": "{probe}"' not in text


def test_recover_logs_a_structured_event(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESIZER_")}
    done = subprocess.run(
        resizer_command("recover"),
        env={**env, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    events = [json.loads(line) for line in done.stdout.splitlines()]  # every line is JSON
    (finished,) = [e for e in events if e["event"] == "recovery.finished"]
    assert (finished["requeued"], finished["failed"], finished["adopted"]) == (0, 0, 0)
    assert finished["level"] == "info"


def test_up_never_shows_the_redis_password(tmp_path: Path) -> None:
    port = free_port()
    secret = "s3cret-pw"
    redis_url = f"redis://admin:{secret}@127.0.0.1:{free_port()}/0"  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESIZER_")}
    log = tmp_path / "up.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            resizer_command("up", "--port", str(port), "--workers", "1"),
            env={**env, "REDIS_URL": redis_url},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: '"up.started"' in log.read_text(), 60, "up to log up.started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert secret not in text
    (started,) = [json.loads(line) for line in text.splitlines() if '"up.started"' in line]
    assert started["redis"] == redis_url.replace(secret, "***")


def test_sigterm_stops_up_and_leaves_no_process_behind(up: Up) -> None:
    """Runs last in this module: it stops the shared ``up``."""
    pids = up.child_pids()
    assert {"web", "recover", "worker-0", "worker-1"} <= set(pids)
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(60) == 0
    for name, pid in up.child_pids().items():
        assert not alive(pid), f"{name} (pid {pid}) outlived resizer up"
    assert not answers(up.url)
