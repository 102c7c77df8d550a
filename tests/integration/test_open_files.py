"""The web against as many connections as it may open files: it takes the hard limit on open
files at start, and past that limit it keeps serving what it holds, logs in JSON, and serves
again once connections close."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import attrs
import pytest

from resizer.embedded import free_port
from resizer.processes import resizer_command
from tests.helpers import answers, make_noise_image, wait_until

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

        def start(soft: int, hard: int) -> Web:
            port = free_port()
            log = tmp_path / f"serve-{port}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    resizer_command("serve", "--host", "127.0.0.1", "--port", str(port)),
                    env={**os.environ, "REDIS_URL": redis_server.url},
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


def test_the_web_takes_the_hard_limit_on_open_files(start_web: Any) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard <= 64:
        pytest.skip(f"the hard limit here ({hard}) leaves nothing to raise")
    web = start_web(64, hard)
    assert open_files_limit(web.proc.pid) == (hard, hard)
    assert any(event["event"] == "open_files.raised" for event in web.events())


def test_past_its_open_files_the_web_serves_what_it_holds_then_recovers(start_web: Any) -> None:
    limit = 48
    web = start_web(limit, limit)
    with ExitStack() as held:
        flood = []
        for _ in range(2 * limit):
            sock = held.enter_context(socket.create_connection(("127.0.0.1", web.port)))
            flood.append(sock)  # the kernel completes the handshake; the web may never accept

        def refused_to_accept() -> bool:
            return any("out of system resource" in str(e["event"]) for e in web.events())

        wait_until(refused_to_accept, 30, "the web to run out of open files")
        # A connection it accepted before running out is still served.
        flood[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        flood[0].settimeout(10)
        assert flood[0].recv(4096).startswith(b"HTTP/1.1 200")
        assert web.proc.poll() is None
    # Once the flood is gone, the web accepts again and reaches Redis again.
    wait_until(lambda: answers(web.url), 30, "the web to accept again")
    assert status_of(web.url, "/ready") == 200
    assert status_of(web.url, "/tasks", make_noise_image("PNG", size=64)) == 201
    events = web.events()  # every line JSON, asyncio's own included
    (refusal, *_) = [e for e in events if "out of system resource" in str(e["event"])]
    assert refusal["logger"] == "asyncio"
    assert "Too many open files" in refusal["exception"]
