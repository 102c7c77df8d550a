"""Section 6 of `make bench`: does a large upload stall the web process for other requests?

Starts ``resizer up`` (1 worker) on its own Redis, then measures ``GET /tasks/{id}`` latency
alone, and again while two clients keep posting ~25 MB bodies (a 2500x2500 noise PNG,
base64). Prints p50/p99/max of both, for ours and, with a baseline, for the baseline's code in
the same run. Run alone: ``.venv/bin/python -m bench.upload_latency [--baseline PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import statistics
import sys
import time
from collections.abc import Sequence

import aiohttp
from PIL import Image

from bench import procs, summary
from bench.targets import OURS, Target, baseline_figure, targets
from resizer.embedded import RedisServer

ALONE_SECONDS = 5.0
LOADED_SECONDS = 15.0
COMMAND = "python -m bench.run --sections 6"


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


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def summary_line(name: str, values: list[float]) -> str:
    return (
        f"{name:<44} n={len(values):<5} p50={statistics.median(values):7.1f} ms"
        f"  p99={p99(values):7.1f} ms  max={max(values):7.1f} ms"
    )


async def _measure(base: str, body: bytes) -> tuple[list[float], list[float], int]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        small = base64.b64encode(_small_png()).decode()
        async with session.post(f"{base}/tasks", json={"data": small}) as r:
            task_id = (await r.json())["id"]
        status_url = f"{base}/tasks/{task_id}"
        await latencies(session, status_url, 1)  # warm up
        alone = await latencies(session, status_url, ALONE_SECONDS)
        stop = asyncio.Event()
        uploads = [
            asyncio.create_task(uploader(session, f"{base}/tasks", body, stop)) for _ in range(2)
        ]
        await asyncio.sleep(0.5)
        loaded = await latencies(session, status_url, LOADED_SECONDS)
        stop.set()
        sent = sum(await asyncio.gather(*uploads))
    return alone, loaded, sent


def measure(target: Target, body: bytes) -> tuple[list[float], list[float], int]:
    with RedisServer() as redis, procs.resizer_up(target, 1, redis.url) as (url, _):
        return asyncio.run(_measure(url, body))


def upload_latency(compared: Sequence[Target]) -> list[str]:
    body = big_body()
    lines = [
        f"6. status latency with large uploads: `resizer up --workers 1` on its own Redis;"
        f" GET /tasks/{{id}} alone ({ALONE_SECONDS:g} s), then while 2 clients keep posting"
        f" {len(body) / 1e6:.1f} MB bodies ({LOADED_SECONDS:g} s)"
    ]
    loaded_p99: dict[str, float] = {}
    for target in compared:
        alone, loaded, sent = measure(target, body)
        loaded_p99[target.name] = p99(loaded)
        lines += [
            summary_line(f"{target.name}: GET /tasks/{{id}}, alone", alone),
            summary_line(f"{target.name}: GET /tasks/{{id}}, 2 uploads in flight", loaded)
            + f"  ({sent} uploads)",
        ]
    ours = loaded_p99[OURS.name]
    base, said = baseline_figure(
        "upload_latency.loaded_p99_ms",
        next((v for k, v in loaded_p99.items() if k != OURS.name), None),
    )
    lines.append(
        summary.judge(
            "status p99 with two 25 MB uploads in flight no worse than face751's",
            f"{ours:.1f} ms" + ("" if base is None else f"; baseline {base:.1f} ms ({said})"),
            None if base is None else ours <= base,
            COMMAND,
        )
    )
    return lines


def _small_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(out, "PNG")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default=None)
    args = parser.parse_args(argv)
    print("\n".join(upload_latency(targets(args.baseline))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
