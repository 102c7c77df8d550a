"""Sections 3 and 4a of `make bench`: the whole service through `resizer up`.

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
import struct
import threading
import time
import zlib

import aiohttp
from PIL import Image

from bench import procs
from bench.targets import OURS
from bench.timing import percentile
from resizer.embedded import RedisServer


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> str:
    async with session.post(
        f"{url}/tasks", data=body, headers={"Content-Type": "application/json"}
    ) as response:
        payload = await response.json()
        if response.status != 201:
            raise RuntimeError(f"POST /tasks: {response.status} {payload}")
        return str(payload["id"])


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
        with procs.resizer_up(OURS, workers, redis.url, "WARNING") as (url, _):
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
        with procs.bench_app("bench.bare_app", redis.url) as (bare_url, _, _):
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


# --- section 4a ---------------------------------------------------------------------------------


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
    with RedisServer() as redis, procs.resizer_up(OURS, 1, redis.url, "WARNING") as (url, proc):
        pid = procs.role_pids(proc.pid)["web"][0]

        def web_rss() -> float:
            # The web process and any helper it runs (large bodies may be decoded elsewhere), as
            # PSS: pages the helpers share with their parent are counted once, not per process.
            total = 0.0
            for each in [pid, *procs.descendants(pid)]:
                with contextlib.suppress(OSError):
                    total += procs.pss_mb(each)
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
        hwm = procs.status_mb(pid, "VmHWM")
        helpers = len(procs.descendants(pid))
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
