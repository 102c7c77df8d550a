"""Shared test helpers: images made on the fly, and waiting on a condition (never a blind sleep)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog.testing
from PIL import Image

from resizer import header
from resizer.models import ImageInfo, TaskStatus, Upload
from resizer.store import Store

INFO = ImageInfo(format="png", width=100, height=100)
"""What a test upload says it is, where no code looks at the pixels."""


def make_image(
    fmt: str = "PNG",
    size: int = 96,
    mode: str = "RGB",
    height: int | None = None,
    *,
    unique: bool = False,
) -> bytes:
    """A small image with real structure (a gradient), so resizing has something to do.

    ``unique`` paints a random corner, so the bytes differ from every other image
    (the service deduplicates identical uploads).
    """
    img = Image.linear_gradient("L").resize((size, height or size)).convert(mode)
    if unique:
        corner = Image.frombytes("L", (4, 4), os.urandom(16)).convert(mode)
        img.paste(corner, (0, 0))
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.02)


async def await_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


async def await_done(store: Store, task_id: str, timeout: float = 30.0, what: str = "") -> None:
    """Wait until the task is DONE."""

    async def finished() -> bool:
        found = await store.get_task(task_id)
        return found is not None and found.status is TaskStatus.DONE

    await await_until(finished, timeout, what or f"task {task_id} to be DONE")


def jpeg_scan_bomb(side: int, copies: int) -> bytes:
    """A progressive JPEG of a flat colour with its smallest scan of the luma repeated
    ``copies`` times: each repeat is 31 bytes (runs of empty blocks) and a pass over every block
    of the image's full-size plane. libjpeg warns of the bogus progression and decodes on."""
    import re

    out = io.BytesIO()
    Image.new("RGB", (side, side), (120, 130, 140)).save(out, "JPEG", progressive=True)
    data = out.getvalue()
    scans = []
    pos = 2
    while data[pos + 1] != 0xD9:  # walk the markers to the end of the image
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if data[pos + 1] == 0xDA:  # a scan: its coded data runs to the next marker
            found = re.compile(rb"\xff[^\x00\xd0-\xd7]").search(data, end)
            assert found is not None
            end = found.start()
            if data[pos + 4 : pos + 6] == b"\x01\x01":  # one component, the luma
                scans.append((pos, end))
        pos = end
    start, end = min(scans, key=lambda scan: scan[1] - scan[0])
    return data[:end] + data[start:end] * copies + data[end:]


def make_noise_image(fmt: str = "PNG", size: int = 96) -> bytes:
    """Random pixels: incompressible, for tests that need large files."""
    img = Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def upload(data: bytes | None = None, *, real: bool = False) -> Upload:
    """An upload of ``data``: by default unique bytes (so no two tasks share content) said to be
    a PNG; with ``real``, ``data`` is an image and its header is read as the API reads it."""
    data = os.urandom(16) if data is None else data
    info = header.inspect(data, 10**8) if real else INFO
    return Upload.of(info, data)


def accepted(port: int) -> int:
    """Connections to local ``port`` that a process has accepted: established, and owned by a
    socket (those still in the kernel's backlog have no inode yet). Linux, IPv4."""
    from pathlib import Path

    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01" and fields[9] != "0":
            count += 1
    return count


def answers(url: str, path: str = "/health", status: int = 200) -> bool:
    """True if ``url + path`` answers ``status`` now (False while nothing listens there)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=2) as response:  # noqa: S310
            return bool(response.status == status)
    except urllib.error.HTTPError as exc:
        return exc.code == status
    except OSError:
        return False


async def snapshot(redis: Any) -> dict[bytes, tuple[bytes, int]]:
    """Every key of ``redis`` (a client of one server), its serialized value and time to live
    (ms): what ``assert_untouched`` compares."""
    found = {}
    async for key in redis.scan_iter():
        value = await redis.dump(key)
        if value is not None:
            found[key] = (value, await redis.pttl(key))
    return found


def assert_untouched(
    before: dict[bytes, tuple[bytes, int]], after: dict[bytes, tuple[bytes, int]]
) -> None:
    """Two snapshots of one Redis with nothing written between them: the same keys and values,
    and every time to live only run on (neither extended nor cut)."""
    assert after.keys() == before.keys()
    for key, (value, ttl) in before.items():
        assert after[key][0] == value, key
        assert ttl == after[key][1] == -1 or 0 <= ttl - after[key][1] < 10_000, key


@contextlib.asynccontextmanager
async def backing_off(store: Store, event: str) -> AsyncIterator[None]:
    """A worker on ``store``, run until it has backed off twice logging ``event`` (a Redis state
    it waits out, never exits on); then the block, which mends that state; then it is stopped."""
    from resizer.worker import Worker

    stop = asyncio.Event()
    with structlog.testing.capture_logs() as events:
        worker = asyncio.create_task(Worker(store, store.settings).run(stop))

        async def waited_twice() -> bool:
            assert not worker.done(), worker.exception()
            return len([e for e in events if e["event"] == event]) >= 2

        await await_until(waited_twice, 10, f"the worker to back off twice ({event})")
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(worker, 10)
