"""The black-box load client: HTTP only, in a process of its own, so its CPU is its own.

Submits every task of a set with a fixed number of POSTs in flight and follows each with a
long-poll (``GET /tasks/{id}?wait=30``), as a real client does. Every upload is unique (a JPEG
COM / PNG tEXt segment with a serial number) because the service shares the work of identical
uploads; a body is built per request from pieces encoded once, so a 2,000-task set of 3000 px
photos never sits in memory.

Protocol (``bench/service.py`` drives it): warms up, prints ``ready``, waits for a line on stdin,
runs the burst, prints one JSON line with the result, then waits for stdin to close (so its CPU
time can be read while it is still alive).

Usage: python -m bench.load URL FILE --mode json|raw --count N [--warmup W] [--serial S]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import struct
import sys
import time
import zlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

JSON = "json"
RAW = "raw"


def _png_chunk(text: bytes) -> bytes:
    body = b"Comment\x00" + text
    crc = struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF)
    return struct.pack(">I", len(body)) + b"tEXt" + body + crc


class Bodies:
    """Unique variants of one image, as JSON (base64) or raw bodies, cheap to make.

    The marker goes in right after the JPEG SOI / the PNG IHDR, padded so that everything
    before the rest of the file is a multiple of 3 bytes: the base64 of the rest is then the
    same for every variant and is encoded once.
    """

    def __init__(self, data: bytes, mode: str) -> None:
        if data.startswith(b"\xff\xd8"):
            self._cut = 2
            self._marker: Callable[[bytes], bytes] = lambda t: (
                b"\xff\xfe" + struct.pack(">H", len(t) + 2) + t
            )
        elif data.startswith(b"\x89PNG\r\n\x1a\n"):
            self._cut = 33
            self._marker = _png_chunk
        else:
            raise ValueError("bench bodies are made of JPEG or PNG files only")
        self.mode = mode
        self._data = data
        self._rest = data[self._cut :]
        self._rest64 = base64.b64encode(self._rest) if mode == JSON else b""

    def variant(self, index: int) -> bytes:
        """The image with a marker naming ``index``; its pixels and decode cost unchanged."""
        text = f"bench task {index}".encode()
        while (self._cut + len(self._marker(text))) % 3:
            text += b" "
        return self._data[: self._cut] + self._marker(text)

    def body(self, index: int) -> bytes:
        head = self.variant(index)
        if self.mode == RAW:
            return head + self._rest
        return b'{"data": "' + base64.b64encode(head) + self._rest64 + b'"}'

    @property
    def content_type(self) -> str:
        return "application/octet-stream" if self.mode == RAW else "application/json"


def _timestamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def post(session: aiohttp.ClientSession, url: str, bodies: Bodies, index: int) -> str:
    async with session.post(
        f"{url}/tasks", data=bodies.body(index), headers={"Content-Type": bodies.content_type}
    ) as response:
        payload = await response.json()
        if response.status != 201:
            raise RuntimeError(f"POST /tasks: {response.status} {payload}")
        return str(payload["id"])


async def wait_finished(session: aiohttp.ClientSession, url: str, task_id: str) -> dict[str, Any]:
    while True:
        async with session.get(f"{url}/tasks/{task_id}", params={"wait": "30"}) as response:
            payload: dict[str, Any] = await response.json()
        if payload.get("status") in ("DONE", "FAILED"):
            return payload


async def run_tasks(
    url: str, bodies: Bodies, first: int, count: int, in_flight: int = 8
) -> dict[str, Any]:
    """``count`` tasks, at most ``in_flight`` POSTs at once, each followed by a long-poll; timed
    by the service's own clocks (first ``created_at`` to last ``updated_at``)."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=900)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        posting = asyncio.Semaphore(in_flight)

        async def one(index: int) -> dict[str, Any]:
            async with posting:
                task_id = await post(session, url, bodies, index)
            return await wait_finished(session, url, task_id)

        records = await asyncio.gather(*(one(first + i) for i in range(count)))
    wall = time.perf_counter() - started
    created = [_timestamp(r["created_at"]) for r in records]
    finished = [_timestamp(r["updated_at"]) for r in records]
    return {
        "tasks": len(records),
        "failed": sum(1 for r in records if r["status"] != "DONE"),
        "seconds": max(finished) - min(created),
        "wall": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("file", type=Path)
    parser.add_argument("--mode", choices=(JSON, RAW), default=JSON)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--serial", type=int, default=0)
    parser.add_argument("--in-flight", type=int, default=8)
    args = parser.parse_args(argv)
    bodies = Bodies(args.file.read_bytes(), args.mode)
    asyncio.run(run_tasks(args.url, bodies, args.serial, args.warmup, args.in_flight))
    print("ready", flush=True)
    if not sys.stdin.readline():
        return 1
    result = asyncio.run(
        run_tasks(args.url, bodies, args.serial + args.warmup, args.count, args.in_flight)
    )
    print(json.dumps(result), flush=True)
    sys.stdin.read()  # until the parent has read this process's CPU time and closes stdin
    return 0


if __name__ == "__main__":
    sys.exit(main())
