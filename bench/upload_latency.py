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
import subprocess
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
    session: aiohttp.ClientSession, url: str, body: bytes, stop: asyncio.Event, pace: float = 0
) -> int:
    """Post ``body`` again and again until ``stop``; with ``pace``, one upload every ``pace``
    seconds at most."""
    sent = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not stop.is_set():
        await asyncio.sleep(max(0.0, started + sent * pace - loop.time()))
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


async def _upload_until_stopped(base: str, body: bytes, pace: float) -> int:
    """Two uploads in flight until stdin closes (the uploading client's own process)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), stop.set)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        uploads = [
            asyncio.create_task(uploader(session, f"{base}/tasks", body, stop, pace))
            for _ in range(2)
        ]
        return sum(await asyncio.gather(*uploads))


async def _measure(base: str, uploading: subprocess.Popen[str]) -> tuple[list[float], list[float]]:
    assert uploading.stdin is not None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        small = base64.b64encode(_small_png()).decode()
        async with session.post(f"{base}/tasks", json={"data": small}) as r:
            task_id = (await r.json())["id"]
        status_url = f"{base}/tasks/{task_id}"
        await latencies(session, status_url, 1)  # warm up
        alone = await latencies(session, status_url, ALONE_SECONDS)
        uploading.stdin.write("go\n")
        uploading.stdin.flush()
        await asyncio.sleep(1.0)  # both uploads under way
        loaded = await latencies(session, status_url, LOADED_SECONDS)
    return alone, loaded


def measure(target: Target, pace: float = 0) -> tuple[list[float], list[float], int]:
    """Status latencies alone and under two uploads in flight, and how many uploads were made.

    The uploads come from a process of their own: sending 25 MB bodies would otherwise hold up
    the status client's event loop, and its delays would be counted as the server's."""
    with RedisServer() as redis, procs.resizer_up(target, 1, redis.url) as (url, _):
        uploading = subprocess.Popen(
            [sys.executable, "-m", "bench.upload_latency", "--upload-to", url, "--pace", str(pace)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert uploading.stdin is not None
        assert uploading.stdout is not None
        try:
            if uploading.stdout.readline().strip() != "ready":
                raise RuntimeError("the uploading client did not start")
            alone, loaded = asyncio.run(_measure(url, uploading))
        finally:
            uploading.stdin.close()
            sent = int(uploading.stdout.read().strip() or 0)
            uploading.wait(120)
    return alone, loaded, sent


PACE = 1.0
"""Seconds between a client's uploads in the paced run: the same upload rate for every target."""


def upload_latency(compared: Sequence[Target]) -> list[str]:
    body_mb = len(big_body()) / 1e6
    lines = [
        f"6. status latency with large uploads: `resizer up --workers 1` on its own Redis;"
        f" GET /tasks/{{id}} alone ({ALONE_SECONDS:g} s), then while 2 clients keep posting"
        f" {body_mb:.1f} MB bodies ({LOADED_SECONDS:g} s), from a process of their own: as fast"
        f" as the server takes them (the bar), then paced at one per client every {PACE:g} s"
        " (the same upload rate for every target: what each upload costs the others)"
    ]
    loaded_p99: dict[tuple[str, float], float] = {}
    for pace in (0.0, PACE):
        for target in compared:
            alone, loaded, sent = measure(target, pace)
            loaded_p99[(target.name, pace)] = p99(loaded)
            how = "as fast as taken" if not pace else f"one per {pace:g} s each"
            lines += [
                summary_line(f"{target.name}: GET /tasks/{{id}}, alone", alone),
                summary_line(f"{target.name}: GET /tasks/{{id}}, 2 uploads ({how})", loaded)
                + f"  ({sent} uploads)",
            ]
    for pace, name in ((0.0, "as fast as the server takes them"), (PACE, "paced")):
        ours = loaded_p99[(OURS.name, pace)]
        key = "upload_latency.loaded_p99_ms" + ("" if not pace else ".paced")
        base, said = baseline_figure(
            key, next((v for (k, p), v in loaded_p99.items() if k != OURS.name and p == pace), None)
        )
        lines.append(
            summary.judge(
                f"status p99 with two 25 MB uploads in flight ({name}) no worse than face751's",
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
    parser.add_argument("--upload-to", default=None, help=argparse.SUPPRESS)  # the uploader
    parser.add_argument("--pace", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.upload_to:
        body = big_body()
        print("ready", flush=True)
        sys.stdin.readline()  # go
        print(asyncio.run(_upload_until_stopped(args.upload_to, body, args.pace)), flush=True)
        return 0
    print("\n".join(upload_latency(targets(args.baseline))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
