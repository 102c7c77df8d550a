"""Does a large upload stall the web process for other requests?

Starts ``resizer up`` (embedded Redis, 1 worker), then measures ``GET /tasks/{id}`` latency
alone, and again while clients keep posting ~25 MB bodies (a 2500x2500 noise PNG, base64).
Prints p50/p99/max of both. Run: ``.venv/bin/python -m bench.upload_latency``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import statistics
import subprocess
import sys
import time

import aiohttp
from PIL import Image

from resizer.embedded import free_port


def big_body() -> bytes:
    img = Image.frombytes("RGB", (2500, 2500), os.urandom(2500 * 2500 * 3))
    out = io.BytesIO()
    img.save(out, "PNG", compress_level=1)
    return b'{"data": "' + base64.b64encode(out.getvalue()) + b'"}'


async def latencies(session: aiohttp.ClientSession, url: str, seconds: float) -> list[float]:
    found = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        async with session.get(url) as response:
            await response.read()
        found.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.005)
    return found


async def uploader(
    session: aiohttp.ClientSession, url: str, body: bytes, stop: asyncio.Event
) -> int:
    sent = 0
    while not stop.is_set():
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            await r.read()
            assert r.status == 201, r.status
        sent += 1
    return sent


def summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"{name:<34} n={len(values):<5} p50={statistics.median(values):7.1f} ms"
        f"  p99={p99:7.1f} ms  max={ordered[-1]:7.1f} ms"
    )


async def main(base: str) -> None:
    body = big_body()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        small = base64.b64encode(_small_png()).decode()
        async with session.post(f"{base}/tasks", json={"data": small}) as r:
            task_id = (await r.json())["id"]
        status_url = f"{base}/tasks/{task_id}"
        await latencies(session, status_url, 1)  # warm up
        alone = await latencies(session, status_url, 5)
        stop = asyncio.Event()
        uploads = [
            asyncio.create_task(uploader(session, f"{base}/tasks", body, stop)) for _ in range(2)
        ]
        await asyncio.sleep(0.5)
        loaded = await latencies(session, status_url, 8)
        stop.set()
        sent = sum(await asyncio.gather(*uploads))
    print(f"upload body: {len(body) / 1e6:.1f} MB; {sent} uploads during the loaded window")
    print(summary("GET /tasks/{id}, alone", alone))
    print(summary("GET /tasks/{id}, 2 uploads in flight", loaded))


def _small_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(out, "PNG")
    return out.getvalue()


if __name__ == "__main__":
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "resizer", "up", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                import urllib.request

                urllib.request.urlopen(f"{base}/health", timeout=1).close()  # noqa: S310
                break
            except OSError:
                time.sleep(0.1)
        asyncio.run(main(base))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
