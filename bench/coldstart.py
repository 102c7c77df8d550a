"""Section 5 of `make bench`: no cold start. POST latency right after `resizer serve` starts.

The load client (this process, warmed up before the server starts) polls ``/ready`` every
10 ms; from its first 200 it keeps ``IN_FLIGHT`` POSTs of unique 3000 px photos (JSON) going
for ``SECONDS`` and deletes each task once created (not timed), so Redis does not fill up.
POST p99 over the first 5 s after /ready answered, against the p99 of a later window of the
same run: anything the web process needs for a request must be ready before /ready says so,
but for Pillow, which the first upload loads (~20 ms once, docs/imaging.md): the very first
POST's latency is printed beside the p99s.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from bench import procs, summary
from bench.load import JSON, Bodies
from bench.targets import OURS, Target, baseline_figure
from bench.timing import percentile
from resizer.embedded import RedisServer, free_port

FILE = "phone-3000.jpg"
IN_FLIGHT = 2
SECONDS = 20.0
FIRST = (0.0, 5.0)
LATER = (10.0, 20.0)
SLACK_MS = 50.0
COMMAND = "python -m bench.run --sections 5"


async def _load(
    url: str, bodies: Bodies, proc: subprocess.Popen[bytes]
) -> list[tuple[float, float]]:
    """(seconds after /ready first answered 200, POST latency ms) of every POST."""
    found: list[tuple[float, float]] = []
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:  # the client's own first request is made before the server exists
            if proc.poll() is not None:
                raise RuntimeError(f"`resizer serve` exited with {proc.returncode}")
            try:
                async with session.get(f"{url}/ready") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.01)
        ready = time.perf_counter()
        serial = 0

        async def poster() -> None:
            nonlocal serial
            while time.perf_counter() - ready < SECONDS:
                serial += 1
                body = bodies.body(serial)
                started = time.perf_counter()
                async with session.post(
                    f"{url}/tasks", data=body, headers={"Content-Type": bodies.content_type}
                ) as response:
                    payload = await response.json()
                    if response.status != 201:
                        raise RuntimeError(f"POST /tasks: {response.status} {payload}")
                found.append((started - ready, (time.perf_counter() - started) * 1000))
                async with session.delete(f"{url}/tasks/{payload['id']}") as response:
                    await response.read()

        await asyncio.gather(*(poster() for _ in range(IN_FLIGHT)))
    return found


def _window(found: list[tuple[float, float]], window: tuple[float, float]) -> list[float]:
    return [ms for at, ms in found if window[0] <= at < window[1]]


def measure(target: Target, corpus: Path) -> tuple[list[float], list[float], float]:
    """(first-window latencies, later-window latencies, the very first POST's) for ``target``."""
    bodies = Bodies((corpus / FILE).read_bytes(), JSON)
    bodies.body(0)
    with RedisServer() as redis:
        port = free_port()
        proc = subprocess.Popen(
            target.command("serve", "--host", "127.0.0.1", "--port", str(port)),
            cwd=target.root,
            env=target.env(REDIS_URL=redis.url, RESIZER_LOG_LEVEL="INFO"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            found = asyncio.run(_load(f"http://127.0.0.1:{port}", bodies, proc))
        finally:
            procs.stop(proc)
    return _window(found, FIRST), _window(found, LATER), min(found)[1]


def cold_start(corpus: Path, targets: Sequence[Target]) -> list[str]:
    lines = [
        f"5. cold start: `resizer serve` on its own Redis; from /ready's first 200, {IN_FLIGHT}"
        f" POSTs in flight of unique {FILE} (JSON) for {SECONDS:g} s; POST p99 over"
        f" {FIRST[0]:g}-{FIRST[1]:g} s against {LATER[0]:g}-{LATER[1]:g} s",
        f"{'target':8} {'first POST ms':>13} {'first n':>7} {'first p50':>9} {'first p99':>9}"
        f" {'later n':>7} {'later p50':>9} {'later p99':>9}",
    ]
    excess: dict[str, float] = {}
    for target in targets:
        first, later, very_first = measure(target, corpus)
        excess[target.name] = percentile(first, 99) - percentile(later, 99)
        lines.append(
            f"{target.name:8} {very_first:13.1f} {len(first):7d} {percentile(first, 50):9.1f}"
            f" {percentile(first, 99):9.1f} {len(later):7d} {percentile(later, 50):9.1f}"
            f" {percentile(later, 99):9.1f}"
        )
    ours = excess[OURS.name]
    base, said = baseline_figure(
        "coldstart.excess_p99_ms", next((v for k, v in excess.items() if k != OURS.name), None)
    )
    lines.append(
        summary.judge(
            f"no cold start: POST p99 of {FILE} in the first 5 s after /ready <= later p99 +"
            f" {SLACK_MS:g} ms",
            f"first - later p99 = {ours:+.1f} ms"
            + ("" if base is None else f"; baseline {base:+.1f} ms ({said})"),
            ours <= SLACK_MS,
            COMMAND,
        )
    )
    return lines
