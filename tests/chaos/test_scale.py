"""Scenarios 12-13, the figures behind docs/scaling.md: what one task costs Redis (commands,
bytes, CPU) by image size, and what an idle worker costs it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis

from resizer.config import Settings
from resizer.store import Store, client_for
from tests.chaos.harness import Api, Cluster, Figures, open_session
from tests.helpers import await_until, make_noise_image, wait_until

MARKER = b"resizer-monitor-marker"
# Random pixels do not compress: a PNG of side s is about 3 s^2 bytes.
SIZES = {"10 KB": (58, 300), "100 KB": (183, 150), "1 MB": (591, 40)}
IDLE_SECONDS = 61.0  # four recovery passes (every 15 s) and one safety re-scan (60 s)
IDLE_PARTITIONS = 16


def server_counters(client: redis.Redis) -> dict[str, float]:
    info: dict[str, Any] = client.info("all")
    calls = sum(int(v["calls"]) for k, v in info.items() if k.startswith("cmdstat_"))
    return {
        "commands": calls,
        "in_bytes": int(info["total_net_input_bytes"]),
        "out_bytes": int(info["total_net_output_bytes"]),
        "cpu_s": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
    }


class Monitor(threading.Thread):
    """Counts the commands clients send (MONITOR), apart from those scripts run inside Redis:
    INFO commandstats counts both."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"MONITOR\r\n")
        self.sock.settimeout(0.2)
        self.sent: Counter[str] = Counter()
        self.in_scripts: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.caught_up = threading.Event()

    def run(self) -> None:
        pending = b""
        while not self.stopping.is_set():
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\r\n")
            for line in lines:
                if line == b"+OK":
                    self.ready.set()
                    continue
                if MARKER in line:
                    self.caught_up.set()
                    continue
                source, _, command = line.partition(b"] ")
                name = command.split(b" ", 1)[0].strip(b'"').decode().lower()
                (self.in_scripts if source.endswith(b"lua") else self.sent)[name] += 1

    def stop(self, client: redis.Redis) -> None:
        """Once every command sent before this call was read (MONITOR lags behind large ones)."""
        client.echo(MARKER.decode())
        wait_until(self.caught_up.is_set, 60, "MONITOR to catch up")
        self.stopping.set()
        self.join(5)
        self.sock.close()


async def test_cost_per_task(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """Cost per task: one Redis, ``resizer serve`` and 2 workers; each client POSTs an image,
    long-polls its status (``?wait=30``) and fetches the 64x64 image. Redis commands, bytes in
    and out, and Redis CPU per task, by original size (random pixels: 10 KB, 100 KB, 1 MB)."""
    cluster = cluster_factory(Settings(lease_seconds=30, max_attempts=3, ttl_seconds=3600))
    _, url = cluster.serve()
    for _ in range(2):
        cluster.start("work")
    client = cluster.redis()
    total = 0
    async with open_session(8, timeout=120) as session:
        api = Api(session, url)

        async def one(image: bytes) -> None:
            task_id = await api.submit(image)
            while True:
                code, body = await api.get(f"/tasks/{task_id}?wait=30")
                assert code == 200, body
                if body["status"] == "DONE":
                    break
            code, _ = await api.get(f"/tasks/{task_id}/image?size=64")
            assert code == 200

        gate = asyncio.Semaphore(8)

        async def gated(image: bytes) -> None:
            async with gate:
                await one(image)

        await one(make_noise_image("PNG", 40))  # warm: scripts loaded, connections open
        for label, (side, count) in SIZES.items():
            watched = max(10, count // 3)
            images = [make_noise_image("PNG", side) for _ in range(count + watched)]
            mean_bytes = sum(map(len, images)) / len(images)
            before = server_counters(client)
            started = time.perf_counter()
            await asyncio.gather(*(gated(i) for i in images[:count]))
            seconds = time.perf_counter() - started
            after = server_counters(client)
            # Again under MONITOR (which costs Redis CPU and bytes of its own): the commands.
            monitor = Monitor(cluster.redis_server.port)
            monitor.start()
            wait_until(monitor.ready.is_set, 10, "MONITOR to start")
            await asyncio.gather(*(gated(i) for i in images[count:]))
            monitor.stop(client)
            total += count + watched
            figures.notes[label] = {
                "original_bytes": round(mean_bytes),
                "commands_sent": round(sum(monitor.sent.values()) / watched, 1),
                "commands_in_scripts": round(sum(monitor.in_scripts.values()) / watched, 1),
                "sent": {k: round(v / watched, 2) for k, v in monitor.sent.most_common()},
                "bytes_in": round((after["in_bytes"] - before["in_bytes"]) / count),
                "bytes_out": round((after["out_bytes"] - before["out_bytes"]) / count),
                "redis_cpu_us": round((after["cpu_s"] - before["cpu_s"]) / count * 1e6),
                "tasks_per_s": round(count / seconds, 1),
            }
    figures.submitted = figures.done = total
    assert all(figures.notes[label]["commands_sent"] < 15 for label in SIZES), figures.notes


async def test_idle_workers(cluster_factory: Callable[..., Cluster], figures: Figures) -> None:
    """Idle workers: two ``resizer work`` with nothing to do, 16 partitions, the default lease
    (30 s): Redis commands per second per worker over 31 s."""
    cluster = cluster_factory(Settings())
    url = cluster.settings.redis_url
    announcer = Store(client_for(url), Settings(redis_url=url, partitions=IDLE_PARTITIONS))
    try:
        await announcer.recover()  # the web's 16 partitions, as it announces them
        workers = [cluster.start("work") for _ in range(2)]
        client = cluster.redis()

        async def subscribed() -> bool:
            return int(client.pubsub_numsub("resizer:work")[0][1]) == len(workers)

        await await_until(subscribed, 30, "both workers to wait on the wake-up channel")
        monitor = Monitor(cluster.redis_server.port)
        monitor.start()
        wait_until(monitor.ready.is_set, 10, "MONITOR to start")
        started = time.monotonic()
        await asyncio.sleep(IDLE_SECONDS)  # the observation window itself
        seconds = time.monotonic() - started
        monitor.stop(client)
        assert all(w.poll() is None for w in workers)
    finally:
        await announcer.close()
    sent = dict(monitor.sent)
    sent.pop("echo", None)  # ours
    per_worker_per_s = sum(sent.values()) / len(workers) / seconds
    figures.notes.update(
        seconds=round(seconds, 1),
        commands=sent,
        inside_scripts=dict(monitor.in_scripts),
        per_worker_per_second=round(per_worker_per_s, 2),
    )
    assert per_worker_per_s < 5, sent
