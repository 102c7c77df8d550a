"""The web's accept loop on its own: a cap, and a pause when the process is out of files."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any

import pytest

from resizer import listener
from resizer.listener import Listener


class Made:
    """The connections handed to protocols, and a wait for the next one."""

    def __init__(self) -> None:
        self.transports: list[asyncio.BaseTransport] = []
        self.pauses: list[str] = []
        self._changed = asyncio.Event()

    def protocol(self) -> asyncio.Protocol:
        made = self

        class Counted(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                made.transports.append(transport)
                made._changed.set()

        return Counted()

    def paused(self, reason: str) -> None:
        self.pauses.append(reason)
        self._changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not done():
                self._changed.clear()
                await self._changed.wait()


class Starved:
    """A listening socket whose first ``refusals`` accepts fail as out of files."""

    def __init__(self, sock: socket.socket, refusals: int) -> None:
        self.sock, self.refusals, self.accepts = sock, refusals, 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> tuple[socket.socket, Any]:
        self.accepts += 1
        if self.refusals:
            self.refusals -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return self.sock.accept()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server_socket() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def connect(port: int, n: int) -> list[socket.socket]:
    clients = []
    for _ in range(n):
        client = socket.socket()
        client.setblocking(False)
        await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", port))
        clients.append(client)
    return clients


async def test_out_of_files_pauses_once_then_accepts(
    server_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncio's own loop retried once per waiting connection, and the retries multiplied: here
    one refusal is one pause, then every waiting connection is taken."""
    monkeypatch.setattr(listener, "RETRY_SECONDS", 0.05)
    made = Made()
    starved = Starved(server_socket, refusals=1)
    accept_loop = Listener(
        [starved],  # type: ignore[list-item]
        made.protocol,
        lambda: len(made.transports),
        cap=100,
        on_pause=made.paused,
    )
    accept_loop.start()
    clients = await connect(server_socket.getsockname()[1], 5)
    await made.until(lambda: len(made.transports) == 5)
    accept_loop.close()
    assert made.pauses == ["out_of_files"]
    # Each taken once, the refusal, and an empty backlog found once or twice.
    assert starved.accepts <= 5 + 1 + 2
    for client in clients:
        client.close()


async def test_at_the_cap_it_waits_for_a_connection_to_close(server_socket: socket.socket) -> None:
    made = Made()
    closed = 0
    accept_loop = Listener(
        [server_socket],
        made.protocol,
        lambda: len(made.transports) - closed,
        cap=3,
        on_pause=made.paused,
    )
    accept_loop.start()
    clients = await connect(server_socket.getsockname()[1], 5)
    await made.until(lambda: len(made.transports) == 3 and "at_cap" in made.pauses)
    assert len(made.transports) == 3  # the other two wait in the backlog
    closed = 2
    await made.until(lambda: len(made.transports) == 5)
    accept_loop.close()
    for client in clients:
        client.close()
