"""The hostile section: what an attacker or an unlucky operator does, one row per attack.

Each row says what the service answered, the figure that bounds its cost (memory, seconds a
connection is held, script milliseconds, time to heal), that the service still serves, and that
no accepted task was lost.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

import attrs
import pytest
from PIL import Image

from resizer import memory
from resizer.config import Settings
from resizer.embedded import free_port
from resizer.models import ImageInfo, Upload
from resizer.processes import resizer_command
from resizer.store import Store, client_for
from resizer.store.keys import partition, task_key
from tests.chaos.harness import Cluster, Figures, http_get, percentile
from tests.helpers import accepted, jpeg_scan_bomb, make_noise_image, wait_until

MiB = 2**20


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def established(port: int) -> int:
    """TCP connections to ``port`` that the server side holds open (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if int(local.split(":")[1], 16) == port and state == "01":
            count += 1
    return count


def post_raw(
    url: str, data: bytes, content_type: str = "image/png"
) -> tuple[int, dict[str, object]]:
    import http.client

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", "/tasks", body=data, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def alive(url: str) -> bool:
    return http_get(url, "/health")[0] == 200 and http_get(url, "/ready")[0] == 200


def hostile(figures: Figures, answer: str, figure: str, *, alive: bool, lost: int = 0) -> None:
    figures.kind = "hostile"
    figures.answer = answer
    figures.figure = figure
    figures.alive = alive
    figures.lost = lost


def test_slow_readers(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """Slow readers of a large original: 8 clients ask for a 17 MB original as JSON and never
    read the answer."""
    settings = Settings(body_timeout_seconds=3.0)
    cluster = cluster_factory(settings)
    web, url = cluster.serve()
    port = int(url.rpartition(":")[2])
    original = make_noise_image("PNG", size=2400)
    assert len(original) > 16 * MiB
    status, body = post_raw(url, original)
    assert status == 201, body
    task_id = body["id"]
    before = rss_kib(web.pid)
    readers = []
    for _ in range(8):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(
            f"GET /tasks/{task_id}/image?size=original HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        readers.append(sock)
    started = time.monotonic()
    wait_until(lambda: established(port) >= 8, 10, "the 8 connections")
    peak = 0
    while established(port) > 0 and time.monotonic() - started < 60:
        peak = max(peak, rss_kib(web.pid))
        time.sleep(0.05)  # sampling the RSS while the readers stall
    held = time.monotonic() - started
    for sock in readers:
        sock.close()
    growth = (max(peak, rss_kib(web.pid)) - before) / 1024
    assert established(port) == 0, "a stalled reader still holds its connection"
    assert growth < 64, f"the web process grew by {growth:.0f} MiB"
    hostile(
        figures,
        "each piece written with a deadline; stalled readers dropped",
        f"web RSS +{growth:.1f} MiB (was +525); connections held {held:.1f} s "
        f"(RESIZER_BODY_TIMEOUT=3)",
        alive=alive(url),
    )


def bomb(fmt: str, side: int, mode: str = "RGB", **params: object) -> bytes:
    out = io.BytesIO()
    Image.new(mode, (side, side)).save(out, fmt, **params)
    return out.getvalue()


def test_decompression_bombs(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """Decompression bombs: tiny files declaring huge images, in the formats that decode big."""
    cluster = cluster_factory(Settings())
    _, url = cluster.serve()
    worker = cluster.start("work")
    files = {
        "lossless WebP 7000 px": bomb("WEBP", 7000, lossless=True),
        "AVIF 6000 px": bomb("AVIF", 6000, quality=10, speed=10),
        "16-bit TIFF 7000 px": bomb("TIFF", 7000, "I;16", compression="tiff_adobe_deflate"),
        "lossless WebP 3000 px": bomb("WEBP", 3000, lossless=True),
    }
    answers, sizes = [], []
    accepted = []
    wait_until(lambda: rss_kib(worker.pid) > 0, 10, "the worker")
    for name, data in files.items():
        status, body = post_raw(url, data, "application/octet-stream")
        answers.append(f"{name} ({len(data) // 1024 or 1} KB): {status}")
        sizes.append(len(data))
        if status == 201:
            accepted.append(str(body["id"]))
        else:
            assert status == 422, body
            assert "RESIZER_MAX_DECODE_BYTES" in json.dumps(body), body
    client = cluster.redis()
    wait_until(
        lambda: all(client.hget(task_key(t), "status") == b"DONE" for t in accepted),
        120,
        "the accepted ones to be resized",
    )
    peak = rss_kib(worker.pid, "VmHWM") / 1024
    budget = Settings().max_decode_bytes / MiB
    # The fixed margin: an idle worker (~80 MiB) and the freed heap its allocator keeps for the
    # next task (memory.TRIM_ABOVE), which a decode after a large one adds to.
    margin = 96 + memory.TRIM_ABOVE / MiB
    assert peak < budget + margin, f"worker peak {peak:.0f} MiB, over {budget:.0f} + {margin:.0f}"
    hostile(
        figures,
        "422 over RESIZER_MAX_DECODE_BYTES, else resized within it",
        "; ".join(answers) + f"; worker peak RSS {peak:.0f} MiB (budget {budget:.0f} MiB "
        f"+ a fixed {margin:.0f} MiB)",
        alive=alive(url),
    )


def test_escaped_json(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """Escapes: a 32 MB JSON body whose data string is \\/ over and over (valid JSON, and
    valid base64 once decoded), while another client reads a status."""
    cluster = cluster_factory(Settings())
    _, url = cluster.serve()
    body = b'{"data": "' + b"\\/" * (16 * MiB - 16) + b'"}'
    started = time.monotonic()
    status, answer = post_raw(url, body, "application/json")
    answered = time.monotonic() - started
    assert status == 422, answer  # 24 MB of 0xFF bytes: not an image
    hostile(
        figures,
        "escapes decoded by C's JSON string scanner a chunk at a time; 422 (not an image)",
        f"{len(body) // MiB} MB of escapes answered in {answered:.2f} s "
        "(was: 21 s of the web's event loop)",
        alive=alive(url),
    )


def test_tiny_chunks(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """Tiny chunks: an upload of a million 1-byte chunks (5.9 MB on the wire), each a step of
    aiohttp's chunk handling in Python."""
    cluster = cluster_factory(Settings())
    web, url = cluster.serve()
    port = int(url.rpartition(":")[2])
    body = b"1\r\nQ\r\n" * 1_000_000 + b"0\r\n\r\n"
    before = cpu_seconds(web.pid)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        with suppress(OSError):  # refused, and closed while it still sends
            sock.sendall(
                b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + body
            )
        with suppress(OSError):
            sock.recv(4096)
    wait_until(lambda: any(e.get("status") == 400 for e in cluster.events(web)), 30, "the refusal")
    spent = cpu_seconds(web.pid) - before
    hostile(
        figures,
        "400 past 1000 pieces under 64 bytes on average; the connection closed",
        f"web CPU {spent:.2f} s for 5.9 MB of 1-byte chunks (was 0.56 s, read to the end)",
        alive=alive(url),
    )


def test_header_bombs(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """Header bombs: a 32 MB JPEG of 8 million empty APP5 markers before its scan, and one of
    32 MB of fill bytes, each a step of Pillow's header loop in Python."""
    cluster = cluster_factory(Settings())
    web, url = cluster.serve()
    small = io.BytesIO()
    Image.new("RGB", (64, 64)).save(small, "JPEG")
    head, rest = small.getvalue()[:2], small.getvalue()[2:]
    files = {
        "APP5 markers": head + b"\xff\xe5\x00\x02" * (8 * MiB - 1024) + rest,
        "fill bytes": head + b"\xff" * (32 * MiB - 4096) + rest,
    }
    idle = rss_kib(web.pid)
    answers = []
    for name, data in files.items():
        started = time.monotonic()
        status, body = post_raw(url, data, "image/jpeg")
        answered = time.monotonic() - started
        assert status == 422, body
        assert "JPEG markers before its pixels" in json.dumps(body), body
        answers.append(f"{name} ({len(data) // MiB} MB): 422 in {answered * 1000:.0f} ms")
    growth = (rss_kib(web.pid, "VmHWM") - idle) / 1024
    hostile(
        figures,
        "422 before Pillow reads the header: over 1000 segments before the pixels",
        "; ".join(answers) + f"; web peak RSS +{growth:.0f} MiB (the bodies' own) "
        "(was: 10.3 s of the web's event loop and +1,060 MiB; 11.3 s)",
        alive=alive(url),
    )


async def test_a_scan_bomb(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """A scan bomb: a 0.7 MB progressive JPEG of 4000 px whose 20,000 scans are each a pass over
    the whole image, sent to the API, and queued past it (as an older API would have)."""
    cluster = cluster_factory(Settings())
    _, url = cluster.serve()
    data = jpeg_scan_bomb(4000, 20_000)
    started = time.monotonic()
    status, body = post_raw(url, data, "image/jpeg")
    answered = time.monotonic() - started
    assert status == 422, body
    assert "scans, over the limit" in json.dumps(body), body
    store = Store(client_for(cluster.settings.redis_url), cluster.settings)
    try:
        task = await store.create_task(Upload.of(ImageInfo("jpeg", 4000, 4000), data))
    finally:
        await store.close()
    worker = cluster.start("work")
    client = cluster.redis()

    def finished() -> bool:
        return client.hget(task_key(task.id), "status") in (b"DONE", b"FAILED")

    wait_until(finished, 60, "the queued bomb to be taken")
    assert client.hget(task_key(task.id), "status") == b"FAILED"
    raw = client.hget(task_key(task.id), "error")
    error = raw.decode() if isinstance(raw, bytes) else str(raw)
    assert "scans" in error, error
    seconds = cpu_seconds(worker.pid)
    hostile(
        figures,
        "422 at upload; FAILED by a worker before decoding (more than 100 scans)",
        f"{len(data) // 1024} KB: answered in {answered * 1000:.0f} ms; the queued one FAILED, "
        f"the worker's CPU {seconds:.2f} s since it started (was: 18.9 s to resize it)",
        alive=alive(url),
    )


def test_large_uploads_and_status(
    cluster_factory: Callable[..., Cluster], figures: Figures
) -> None:
    """No decode helper to kill: two 25 MB JSON uploads in flight while clients read statuses."""
    import base64
    import threading
    from concurrent.futures import ThreadPoolExecutor

    cluster = cluster_factory(Settings())
    web, url = cluster.serve()
    _, body = post_raw(url, make_noise_image("PNG", 64))
    task_id = body["id"]
    big = make_noise_image("PNG", size=2600)  # ~20 MB
    payload = json.dumps({"data": base64.b64encode(big).decode()}).encode()
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            code, _ = http_get(url, f"/tasks/{task_id}")
            assert code == 200
            latencies.append((time.perf_counter() - started) * 1000)
            stop.wait(0.01)

    with ThreadPoolExecutor(3) as pool:
        polling = pool.submit(poll)
        uploads = list(pool.map(lambda _: post_raw(url, payload, "application/json"), range(2)))
        stop.set()
        polling.result()
    assert [code for code, _ in uploads] == [201, 201]
    children = Path(f"/proc/{web.pid}/task/{web.pid}/children").read_text().split()
    assert children == [], f"the web process has children: {children}"
    hostile(
        figures,
        "no helper process: uploads decoded as they arrive, in slices",
        f"status p99 {percentile(latencies, 99)} ms during two {len(payload) // MiB} MB uploads "
        f"({len(latencies)} reads)",
        alive=alive(url),
    )


def test_deep_json(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """Deeply nested JSON: a body of 100,000 ``[``."""
    cluster = cluster_factory(Settings())
    _, url = cluster.serve()
    answers = []
    for body in (b"[" * 100_000, b'{"x": ' + b"[" * 100_000):
        started = time.perf_counter()
        code, answer = post_raw(url, body, "application/json")
        answers.append(f"{code} in {(time.perf_counter() - started) * 1000:.1f} ms")
        assert code == 400, answer
    hostile(figures, "400 bad_request", "; ".join(answers), alive=alive(url))


def test_stalled_body(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """A stalled body: 1 of 1,000 announced bytes, then silence."""
    cluster = cluster_factory(Settings(body_timeout_seconds=5.0))
    _, url = cluster.serve()
    port = int(url.rpartition(":")[2])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        started = time.monotonic()
        sock.settimeout(60)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        held = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    hostile(
        figures,
        "408, then the connection is closed",
        f"held {held:.1f} s (RESIZER_BODY_TIMEOUT=5; was over 200 s)",
        alive=alive(url),
    )


def test_slow_clients(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """Slow clients: 20 connections opened and left idle, 20 sending their headers a byte at a
    time (slowloris), 20 sending a body a byte at a time."""
    cluster = cluster_factory(Settings(idle_timeout_seconds=5.0, body_timeout_seconds=5.0))
    _, url = cluster.serve()
    port = int(url.rpartition(":")[2])
    starts = {
        "idle": b"",
        "headers": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        "body": b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n",
    }
    socks = {
        kind: [socket.create_connection(("127.0.0.1", port)) for _ in range(20)] for kind in starts
    }
    started = time.monotonic()
    closed: dict[str, float] = {}
    answers = dict.fromkeys(starts, b"")
    gone: set[socket.socket] = set()
    for kind, each in socks.items():
        for sock in each:
            sock.sendall(starts[kind])
            sock.setblocking(False)
    while len(closed) < len(starts) and time.monotonic() - started < 120:
        for kind, each in socks.items():
            for sock in each:
                if sock in gone:
                    continue
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    data = None
                except OSError:
                    data = b""
                if data == b"":
                    gone.add(sock)
                elif data:
                    answers[kind] += data  # answered: it sends no more
                elif kind != "idle":
                    with suppress(OSError):
                        sock.send(b" ")
            if kind not in closed and gone.issuperset(each):
                closed[kind] = time.monotonic() - started
        time.sleep(1)  # a byte a second from each slow client
    for each in socks.values():
        for sock in each:
            sock.close()
    assert set(closed) == set(starts), f"still held after 120 s: {set(starts) - set(closed)}"
    assert answers["body"].count(b"HTTP/1.1 408") == 20, answers["body"][:200]
    assert b"RESIZER_BODY_MIN_RATE" in answers["body"]
    assert answers["idle"] == answers["headers"] == b""
    hostile(
        figures,
        "idle and slow-header connections closed unanswered (RESIZER_IDLE_TIMEOUT); slow bodies "
        "408 under RESIZER_BODY_MIN_RATE",
        "; ".join(f"{kind} held {seconds:.1f} s" for kind, seconds in closed.items())
        + " (RESIZER_IDLE_TIMEOUT=5, RESIZER_BODY_TIMEOUT=5, RESIZER_BODY_MIN_RATE=1024)",
        alive=alive(url),
    )


def test_upload_flood(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """An upload flood: 16 photos of 9 MB at once, against a budget of 48 MiB of uploads."""
    budget = 48 * MiB
    cluster = cluster_factory(Settings(upload_budget_bytes=budget))
    web, url = cluster.serve()
    photos = [make_noise_image("PNG", size=1750 + i) for i in range(16)]
    assert all(8 * MiB < len(photo) < 10 * MiB for photo in photos)
    idle = rss_kib(web.pid) / 1024
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda photo: post_raw(url, photo), photos))
    peak = rss_kib(web.pid, "VmHWM") / 1024
    codes = Counter(status for status, _ in answers)
    assert set(codes) <= {201, 503}, codes
    assert codes[201] >= 1, codes
    refusals = [json.dumps(body) for status, body in answers if status == 503]
    assert all('"code": "overloaded"' in refusal for refusal in refusals), refusals
    assert codes[503] >= 1, "16 uploads of 9 MB fit in 48 MiB?"
    # Each upload held is joined once before it goes to Redis (twice the budget), and the
    # allocator keeps up to WEB_TRIM_ABOVE of freed heap for the next uploads.
    bound = (2 * budget + memory.WEB_TRIM_ABOVE) / MiB + 32
    assert peak - idle < bound, f"the web grew by {peak - idle:.0f} MiB, over {bound:.0f}"
    hostile(
        figures,
        "503 overloaded past RESIZER_UPLOAD_BUDGET (Retry-After: 1); the others stored",
        f"{codes[201]} stored, {codes[503]} refused; web peak RSS +{peak - idle:.0f} MiB "
        f"(budget {budget // MiB} MiB)",
        alive=alive(url),
    )


def test_connection_flood(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """A connection flood: 2,000 connections opened at once, each sending 8 KB of headers and
    never finishing them, against RESIZER_MAX_CONNECTIONS=500."""
    cap = 500
    cluster = cluster_factory(Settings(max_connections=cap))
    web, url = cluster.serve()
    port = int(url.rpartition(":")[2])
    idle_rss = rss_kib(web.pid)
    flood = []
    for _ in range(2000):
        sock = socket.socket()
        sock.setblocking(False)
        with suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        flood.append(sock)
    try:
        wait_until(lambda: accepted(port) >= cap, 60, f"{cap} connections accepted")
        for sock in flood:
            with suppress(OSError):
                sock.send(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 8000)
        wait_until(
            lambda: any(e["event"] == "accepting.paused" for e in cluster.events(web)),
            30,
            "the web to stop accepting",
        )
        held = accepted(port)
        growth = (rss_kib(web.pid) - idle_rss) / 1024
        assert held <= cap, f"the web holds {held} connections, over its cap of {cap}"
    finally:
        for sock in flood:
            sock.close()
    wait_until(lambda: alive(url), 60, "the web to serve again")
    paused = [e for e in cluster.events(web) if e["event"] == "accepting.paused"]
    assert paused[0]["cap"] == cap
    hostile(
        figures,
        "the web holds its cap and stops accepting; the rest wait in the kernel's backlog; "
        "served again once they close",
        f"held {held} connections (RESIZER_MAX_CONNECTIONS={cap}); web RSS +{growth:.1f} MiB",
        alive=alive(url),
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has spent so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gzip_bomb(gib: int) -> bytes:
    """``gib`` GiB of zeros, gzip-compressed: about a megabyte a GiB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MiB)
    return b"".join(packer.compress(zeros) for _ in range(1024 * gib)) + packer.flush()


def read_reply(stream: io.BufferedReader) -> tuple[int, Any]:
    """One HTTP answer with a Content-Length from ``stream``: its status and its JSON."""
    status = int(stream.readline().split()[1])
    length = 0
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, json.loads(stream.read(length))


def test_compressed_bodies(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """Compressed bodies: a GiB of zeros in a megabyte of gzip, as JSON and as an image, the
    connection kept for a next request."""
    cluster = cluster_factory(Settings())
    web, url = cluster.serve()
    port = int(url.rpartition(":")[2])
    body = gzip_bomb(1)
    before = cpu_seconds(web.pid)
    answers = []
    for content_type in ("application/json", "image/png"):
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(
                f"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            # The next request's answer comes once the server has read past the whole body:
            # whatever reading it cost is spent by then.
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            stream = sock.makefile("rb")
            (status, error), (health, _) = read_reply(stream), read_reply(stream)
        assert status == 415, error
        assert error["error"]["code"] == "unsupported_encoding", error
        assert health == 200
        answers.append(f"{content_type}: {status}")
    spent = cpu_seconds(web.pid) - before
    # Inflating the two GiB alone costs seconds of CPU (aiohttp did, answer or not).
    assert spent < 1.0, f"the web spent {spent:.2f} s of CPU on {len(body) // 1024} KB bodies"
    hostile(
        figures,
        "415 unsupported_encoding; bodies are read as sent, never inflated",
        "; ".join(answers) + f"; web CPU {spent:.2f} s for 2 x 1 GiB of zeros in "
        f"{len(body) / MiB:.1f} MB of gzip",
        alive=alive(url),
    )


async def test_lost_replies(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """Lost replies: Redis stalled past the client's timeout during every claim, so each claim
    script runs twice."""
    from tests.integration.test_lost_replies import evalsha_calls, stalled

    cluster = cluster_factory(Settings(max_attempts=1))
    url = cluster.settings.redis_url
    store = Store(client_for(url, socket_timeout=0.3), cluster.settings)
    await store.load_scripts()
    runs = 0
    try:
        ids = []
        for n in range(10):
            data = os.urandom(32) + bytes([n])
            upload = Upload.of(ImageInfo("png", 64, 64), data)
            task = await store.create_task(upload)
            assert await store.take(1) == task.id
            before = evalsha_calls(url)
            claim = await stalled(url, lambda t=task.id: store.claim(t, "w"))  # type: ignore[misc]
            runs += evalsha_calls(url) - before
            assert claim is not None
            assert await store.complete(claim, "png", {64: b"AA==", 32: b"AA=="})
            ids.append(task.id)
        attempts = [(await store.get_task(t)).attempts for t in ids]  # type: ignore[union-attr]
    finally:
        await store.close()
    assert attempts == [1] * 10
    hostile(
        figures,
        "every script recognises its own repeat",
        f"10 claims, {runs} script runs, attempts counted {sum(attempts)} "
        "(RESIZER_MAX_ATTEMPTS=1: none FAILED)",
        alive=True,
    )


async def test_many_joined(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """100,000 tasks joined to one queued image: the create and the completion scripts."""
    cluster = cluster_factory(Settings())
    client = cluster.redis()
    store = Store(client_for(cluster.settings.redis_url), cluster.settings)
    upload = Upload.of(ImageInfo("png", 64, 64), b"one popular image")
    joined = 100_000
    try:
        leader = await store.create_task(upload)
        gate = asyncio.Semaphore(64)

        async def join() -> None:
            async with gate:
                await store.create_task(upload)

        await asyncio.gather(*(join() for _ in range(joined - 1)))
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 1000)
        client.slowlog_reset()
        for _ in range(20):
            await store.create_task(upload)
        creates = [e["duration"] for e in client.slowlog_get(1000) if b"EVALSHA" in e["command"]]
        client.slowlog_reset()
        assert await store.take(1) == leader.id
        claim = await store.claim(leader.id, "w")
        assert claim is not None
        assert await store.complete(claim, "png", {64: b"AA==", 32: b"AA=="})
        completes = [e["duration"] for e in client.slowlog_get(1000) if b"EVALSHA" in e["command"]]
        last = await store.get_task(leader.id)
        done = (await store.stats()).counters["done"]
    finally:
        client.config_set("slowlog-log-slower-than", 10000)
        await store.close()
    assert last is not None
    assert done == joined + 20
    slowest = max(creates + completes) / 1000
    assert slowest < 5, f"a script took {slowest} ms"
    hostile(
        figures,
        "joining is O(1); the joined tasks read their status from the one they joined",
        f"create {max(creates) / 1000:.2f} ms, completion {max(completes) / 1000:.2f} ms "
        f"with {joined + 20:,} joined (was 430 ms and 1.04 s at 50,000)",
        alive=True,
    )


def junk_profile_jpeg(n: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (n, 0, 0)).save(out, "JPEG", icc_profile=os.urandom(8 * MiB))
    return out.getvalue()


def test_junk_profiles(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """Junk colour profiles: ten JPEGs carrying 8 MB of random bytes as their ICC profile."""
    cluster = cluster_factory(Settings())
    _, url = cluster.serve()
    worker = cluster.start("work")
    warm = junk_profile_jpeg(255)
    status, body = post_raw(url, warm, "image/jpeg")
    client = cluster.redis()
    wait_until(lambda: client.hget(task_key(str(body["id"])), "status") == b"DONE", 60, "warm-up")
    before = rss_kib(worker.pid)
    ids = []
    for n in range(10):
        status, body = post_raw(url, junk_profile_jpeg(n), "image/jpeg")
        assert status == 201, body
        ids.append(str(body["id"]))
    wait_until(
        lambda: all(client.hget(task_key(t), "status") == b"DONE" for t in ids), 120, "all DONE"
    )
    growth = (rss_kib(worker.pid) - before) / 1024
    assert growth < 40, f"the worker holds {growth:.0f} MiB more"
    hostile(
        figures,
        "profiles cached by digest, never invalid or large ones",
        f"worker RSS {growth:+.1f} MiB after 10 x 8 MB junk profiles (was +80 MB held)",
        alive=alive(url),
    )


def test_garbage_uploads(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """Garbage uploads: images whose header is fine and whose pixels are not, kept how long?"""
    settings = Settings()
    cluster = cluster_factory(settings)
    _, url = cluster.serve()
    cluster.start("work")
    client = cluster.redis()
    png = make_noise_image("PNG", 256)
    ids = []
    for n in range(20):
        broken = png[:100] + os.urandom(len(png) - 100 - n)
        status, body = post_raw(url, broken)
        assert status == 201, body
        ids.append(str(body["id"]))
    wait_until(
        lambda: all(client.hget(task_key(t), "status") == b"FAILED" for t in ids), 60, "FAILED"
    )
    kept = []
    for task_id in ids:
        digest = client.hget(task_key(task_id), "digest")
        assert isinstance(digest, bytes)
        kept.append(client.pttl(partition(0).blob(digest.decode())))
    longest = max(kept) / 1000
    assert 0 < longest <= settings.failed_ttl_seconds
    hostile(
        figures,
        "a FAILED task's bytes expire after RESIZER_FAILED_TTL_SECONDS",
        f"bytes kept {longest:.0f} s at most (the task's record: {settings.ttl_seconds} s)",
        alive=alive(url),
    )


@attrs.define
class Up:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def pid_of(self, child: str) -> int:
        pid = 0
        for line in self.log.read_text().splitlines():
            if '"child.started"' in line and f'"child": "{child}"' in line:
                pid = int(json.loads(line)["pid"])
        return pid


def start_up(tmp_path: Path, data: Path, n: int) -> Up:
    port = free_port()
    log = tmp_path / f"up-{n}.log"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    argv = resizer_command("up", "--port", str(port), "--workers", "1", "--data-dir", str(data))
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    up = Up(f"http://127.0.0.1:{port}", proc, log)
    wait_until(lambda: alive(up.url), 60, "resizer up")
    return up


def stop_up(up: Up) -> None:
    if up.proc.poll() is None:
        up.proc.send_signal(signal.SIGTERM)
        up.proc.wait(60)


def done(url: str, ids: list[str]) -> int:
    return sum(http_get(url, f"/tasks/{t}")[1].get("status") == "DONE" for t in ids)


@pytest.mark.parametrize("victim", ["redis", "up"])
def test_killed_up(tmp_path: Path, figures: Figures, victim: str) -> None:
    """Killed under resizer up: kill -9 of its Redis, or of up itself, then started again."""
    figures.scenario = f"kill -9 of {'the Redis of up' if victim == 'redis' else 'resizer up'}"
    data = tmp_path / "data"
    up = start_up(tmp_path, data, 0)
    ups = [up]
    try:
        ids = [str(post_raw(up.url, make_noise_image("PNG", 96))[1]["id"]) for _ in range(40)]
        time.sleep(1.2)  # the promise covers tasks acknowledged a second before the kill
        started = time.monotonic()
        if victim == "redis":
            old = up.pid_of("redis")
            os.kill(old, signal.SIGKILL)
            wait_until(lambda: up.pid_of("redis") != old, 30, "Redis restarted")
        else:
            up.proc.send_signal(signal.SIGKILL)
            up.proc.wait(10)
            wait_until(lambda: http_get(up.url, "/health")[0] == 0, 30, "its web to go")
            up = start_up(tmp_path, data, 1)
            ups.append(up)
        wait_until(lambda: alive(up.url), 60, "the service to heal")
        healed = time.monotonic() - started
        wait_until(lambda: done(up.url, ids) == len(ids), 120, "every task DONE")
        lost = len(ids) - done(up.url, ids)
        figures.submitted, figures.done = len(ids), len(ids) - lost
        hostile(
            figures,
            "Redis restarted by up (append-only file, everysec)"
            if victim == "redis"
            else "up started again on its data directory",
            f"ready again {healed:.1f} s after the kill; {len(ids)} acknowledged tasks all DONE",
            alive=alive(up.url),
            lost=lost,
        )
    finally:
        for each in ups:
            stop_up(each)


def test_secrets_and_sniffing(
    cluster_factory: Callable[..., Cluster], figures: Figures, tmp_path: Path
) -> None:
    """Secrets and sniffing: a password in REDIS_URL, and an original served raw."""
    cluster = cluster_factory(Settings())
    cluster.redis().config_set("requirepass", "hunter2-secret")
    redis_url = cluster.settings.redis_url.replace("redis://", "redis://:hunter2-secret@")
    port = free_port()
    log = tmp_path / "up.log"
    env = {**os.environ, "REDIS_URL": redis_url}
    argv = resizer_command("up", "--port", str(port), "--workers", "1")
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: alive(api), 60, "resizer up")
        status, body = post_raw(api, make_noise_image("PNG", 64))
        assert status == 201
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/tasks/{body['id']}/image?size=original&raw=1")
        sniff = conn.getresponse().getheader("X-Content-Type-Options")
        conn.close()
        serving = alive(api)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    printed = log.read_text()
    assert "redis://" in printed  # it does print where Redis is ...
    assert "hunter2-secret" not in printed  # ... without the password
    assert sniff == "nosniff"
    hostile(
        figures,
        "credentials masked wherever a URL is printed; raw images sent with nosniff",
        f"password in up's output: {'hunter2-secret' in printed}; X-Content-Type-Options: {sniff}",
        alive=serving,
    )


def test_a_hostile_server_answering_fetch(figures: Figures, tmp_path: Path) -> None:
    """A hostile server answering fetch: a format naming a path, and a dangling symlink at the
    file fetch writes."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64)).save(jpeg, "JPEG")
    answers = {"type": "image/sh/../../victim"}

    class Hostile(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", answers["type"])
            self.send_header("Content-Length", str(len(jpeg.getvalue())))
            self.end_headers()
            self.wfile.write(jpeg.getvalue())

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    task = "ab" * 16

    def fetch(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = resizer_command("fetch", task, "--size", "64", "-o", f"{out}/", "--url", url)
        return subprocess.run(
            [*argv, *extra], capture_output=True, text=True, timeout=60, check=False
        )

    try:
        refused_format = fetch()
        answers["type"] = "image/jpeg"
        target = out / f"{task}_64.jpg"
        target.symlink_to(outside / "victim.jpg")  # dangling, pointing out of the directory
        refused_link = fetch()
        forced = fetch("--force")
    finally:
        server.shutdown()
    written_outside = sorted(p.name for p in outside.iterdir())
    assert refused_format.returncode == 1
    assert refused_link.returncode == 1
    assert forced.returncode == 0
    assert written_outside == []
    assert not target.is_symlink()
    hostile(
        figures,
        "file names from the ids typed and a fixed list of extensions; exclusive create, "
        "no symlink followed; --force replaces atomically",
        f"format naming a path: exit {refused_format.returncode}; dangling symlink: exit "
        f"{refused_link.returncode}, with --force replaced, not followed; files written "
        f"outside the directory: {len(written_outside)}",
        alive=True,
    )
