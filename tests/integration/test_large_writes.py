"""A large value (an original of several MB) reaches Redis a slice at a time, so the web process
keeps serving other requests while it goes out."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable

import pytest

from resizer.embedded import RedisServer
from resizer.store.connection import WRITE_SLICE, client_for

pytestmark = pytest.mark.integration


async def test_a_large_value_goes_out_in_slices(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed: list[int] = []  # bytes given to the transport by each call
    write, writelines = asyncio.StreamWriter.write, asyncio.StreamWriter.writelines

    def spy_write(self: asyncio.StreamWriter, data: bytes | bytearray | memoryview) -> None:
        handed.append(len(data))
        write(self, data)

    def spy_writelines(self: asyncio.StreamWriter, data: Iterable[bytes]) -> None:
        chunks = list(data)
        handed.append(sum(len(c) for c in chunks))  # the transport joins them into one buffer
        writelines(self, chunks)

    monkeypatch.setattr(asyncio.StreamWriter, "write", spy_write)
    monkeypatch.setattr(asyncio.StreamWriter, "writelines", spy_writelines)
    value = os.urandom(8 * WRITE_SLICE + 123)
    client = client_for(redis_server.url)
    try:
        await client.set("test:large", value)
        assert await client.get("test:large") == value
        await client.delete("test:large")
    finally:
        await client.aclose()
    assert sum(handed) > len(value)
    assert max(handed) <= WRITE_SLICE
