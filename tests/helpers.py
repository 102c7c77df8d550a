"""Shared test helpers: images made on the fly, and waiting on a condition (never a blind sleep)."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Awaitable, Callable

from PIL import Image


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


def make_noise_image(fmt: str = "PNG", size: int = 96) -> bytes:
    """Random pixels: incompressible, for tests that need large files."""
    img = Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()
