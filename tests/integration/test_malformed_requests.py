"""Requests aiohttp cannot parse: answered 400 in the API's JSON error shape, logged by a real
``resizer serve`` as one line at info, never an error with a traceback (the client's doing, and
anyone can send it)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from resizer.embedded import free_port
from resizer.processes import resizer_command
from tests.helpers import answers, wait_until

pytestmark = pytest.mark.integration

MALFORMED = [
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc\x7f\r\n\r\n",  # a control character
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",  # too long
    b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",  # no such version
    b"POST /tasks?x=" + b"y" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # a line too long
]


def answer(port: int, request: bytes) -> tuple[bytes, dict[str, bytes], bytes]:
    """The status line, headers and body ``request`` gets; the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines)}
    return status, {k.decode(): v for k, v in headers.items()}, body


def test_malformed_requests_are_one_line_at_info(redis_server: Any, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            resizer_command("serve", "--host", "127.0.0.1", "--port", str(port)),
            env={**os.environ, "REDIS_URL": redis_server.url, "RESIZER_LOG_LEVEL": "INFO"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(url), 60, "resizer serve")
        for request in MALFORMED:
            status, headers, body = answer(port, request)
            assert status.split()[1] == b"400", status
            assert headers["content-type"].startswith(b"application/json"), headers
            assert headers["x-content-type-options"] == b"nosniff"
            error = json.loads(body)["error"]
            assert error["code"] == "bad_request"
            assert error["message"].startswith("malformed HTTP request: "), error
            assert len(error["message"]) < 250, error  # however long the line sent

        def logged() -> list[dict[str, Any]]:
            lines = log.read_text().splitlines()
            return [e for e in map(json.loads, lines) if e["event"] == "request.malformed"]

        wait_until(lambda: len(logged()) == len(MALFORMED), 10, "the malformed requests logged")
    finally:
        proc.terminate()
        proc.wait(30)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    malformed = [e for e in events if e["event"] == "request.malformed"]
    assert {e["level"] for e in malformed} == {"info"}
    assert all("exception" not in e and e["error"] for e in malformed), malformed
    assert not [e for e in events if e["level"] in ("error", "critical")], events
