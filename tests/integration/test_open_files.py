"""The web against more connections than it should hold: it takes the hard limit on open files
at start, holds at most RESIZER_MAX_CONNECTIONS (fewer when its files would not hold them) and
lets the rest wait in the backlog, serves those it holds, and accepts again as they close."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import attrs
import pytest
from prometheus_client.parser import text_string_to_metric_families

from resizer import api, listener
from resizer.embedded import free_port
from resizer.processes import resizer_command
from tests.helpers import accepted, answers, make_noise_image, wait_until

pytestmark = pytest.mark.integration


@attrs.frozen
class Web:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open files limit for {pid}")


@pytest.fixture
def start_web(redis_server: Any, tmp_path: Path) -> Iterator[Any]:
    with ExitStack() as stack:

        def start(soft: int, hard: int, **env: str) -> Web:
            port = free_port()
            log = tmp_path / f"serve-{port}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    resizer_command("serve", "--host", "127.0.0.1", "--port", str(port)),
                    env={**os.environ, "REDIS_URL": redis_server.url, **env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
                )
            stack.callback(proc.wait, 30)
            stack.callback(proc.terminate)
            web = Web(proc, port, log)
            wait_until(lambda: answers(web.url), 60, "resizer serve")
            return web

        yield start


def status_of(url: str, path: str, data: bytes | None = None) -> int:
    request = urllib.request.Request(  # noqa: S310
        url + path, data=data, headers={"Content-Type": "image/png"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


class Clients:
    """Keep-alive connections that each ask for /health once and keep what they were told."""

    def __init__(self, stack: ExitStack, port: int, n: int) -> None:
        self.socks = [
            stack.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(n)
        ]
        self.answered: set[socket.socket] = set()
        for sock in self.socks:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.setblocking(False)

    def read(self) -> int:
        """How many have been answered so far."""
        for sock in self.socks:
            if sock in self.answered or sock.fileno() < 0:
                continue
            with suppress(BlockingIOError):
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
                self.answered.add(sock)
        return len(self.answered)

    def close(self, n: int) -> None:
        for sock in list(self.answered)[:n]:
            sock.close()


def test_the_web_takes_the_hard_limit_on_open_files(start_web: Any) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard <= 64:
        pytest.skip(f"the hard limit here ({hard}) leaves nothing to raise")
    web = start_web(64, hard)
    assert open_files_limit(web.proc.pid) == (hard, hard)
    assert any(event["event"] == "open_files.raised" for event in web.events())


def test_the_web_holds_at_most_its_cap_and_the_rest_wait(start_web: Any) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    web = start_web(hard, hard, RESIZER_MAX_CONNECTIONS="20")
    with ExitStack() as held:
        clients = Clients(held, web.port, 50)
        wait_until(lambda: clients.read() >= 20, 30, "20 connections answered")

        def paused() -> bool:
            return any(e["event"] == "accepting.paused" for e in web.events())

        wait_until(paused, 30, "the web to stop accepting at its cap")
        assert clients.read() == 20  # the other 30 wait in the backlog, unanswered
        clients.close(10)
        wait_until(lambda: clients.read() >= 30, 30, "10 waiting connections answered")
        assert clients.read() == 30
        (event,) = [e for e in web.events() if e["event"] == "accepting.paused"]
        assert (event["reason"], event["cap"]) == ("at_cap", 20)
    wait_until(lambda: answers(web.url, "/ready"), 30, "the web to accept again")
    assert status_of(web.url, "/tasks", make_noise_image("PNG", size=64)) == 201
    with urllib.request.urlopen(f"{web.url}/metrics", timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("resizer_http_connections_max", ())] == 20
    assert samples[("resizer_http_accept_pauses_total", (("reason", "at_cap"),))] >= 1
    assert samples[("resizer_http_accept_pauses_total", (("reason", "out_of_files"),))] == 0
    assert samples[("resizer_http_connections", ())] >= 1  # the scrape's own


@pytest.mark.parametrize(
    ("files", "cap"), [(listener.RESERVE_FILES + 40, 40), (48, 1)], ids=["some-room", "no-room"]
)
def test_the_cap_leaves_open_files_for_redis_and_never_runs_out(
    start_web: Any, files: int, cap: int
) -> None:
    web = start_web(files, files)
    (started,) = [e for e in web.events() if e["event"] == "server.started"]
    assert started["max_connections"] == cap
    with ExitStack() as held:
        # More than its files hold: asyncio's own accept loop ran out of files at 48 (and logged
        # each retry, more each second); the cap keeps them.
        clients = Clients(held, web.port, 100)
        wait_until(lambda: clients.read() >= cap, 30, f"{cap} connections answered")
        # A connection the web holds is still served, and Redis is still within its reach.
        sock = next(iter(clients.answered))
        sock.setblocking(True)
        sock.settimeout(10)
        sock.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        assert clients.read() == cap
    wait_until(lambda: answers(web.url, "/ready"), 30, "the web to accept again")
    assert status_of(web.url, "/tasks", make_noise_image("PNG", size=64)) == 201
    events = web.events()  # every line JSON
    assert not [e for e in events if "out of system resource" in str(e["event"])]
    assert not [e for e in events if e["level"] == "error"], events


def test_an_address_in_use_is_one_line(redis_server: Any) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            resizer_command("serve", "--host", "127.0.0.1", "--port", str(port)),
            env={**os.environ, "REDIS_URL": redis_server.url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr == f"resizer: cannot listen on 127.0.0.1:{port}: address already in use\n"
    assert "Traceback" not in done.stdout


def test_the_metrics_listener_of_a_real_serve(start_web: Any) -> None:
    """RESIZER_METRICS_ADDR: a second listener of the web's own, with its own small cap."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    port = free_port()
    web = start_web(hard, hard, RESIZER_METRICS_ADDR=f"127.0.0.1:{port}")
    assert status_of(web.url, "/metrics") == 404  # not on the API's port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert "resizer_http_connections_max 8192.0" in response.read().decode()
    cap = api.METRICS_CONNECTIONS
    with ExitStack() as held:
        # More scrapers than it takes: the rest wait in the backlog, and the API is not held up.
        for _ in range(2 * cap):
            held.enter_context(socket.create_connection(("127.0.0.1", port)))

        def paused() -> bool:
            return any(e["event"] == "accepting.paused" for e in web.events())

        wait_until(paused, 30, "the metrics listener to stop accepting at its cap")
        wait_until(lambda: accepted(port) >= cap, 30, f"{cap} connections accepted")
        assert accepted(port) == cap
        assert status_of(web.url, "/ready") == 200
