"""The web's listening sockets, and an accept loop of its own in place of asyncio's server.

A web process holds at most ``cap`` connections (``RESIZER_MAX_CONNECTIONS``, and fewer when
its limit on open files would not hold them beside ``RESERVE_FILES`` for its own use). At the
cap it stops accepting until one closes, as HAProxy's ``maxconn`` does: a client waits in the
kernel's backlog rather than being refused, and the web's memory and open files stay bounded
whatever number of connections a client opens.

asyncio's own loop has no cap, and past the limit on open files (EMFILE) CPython 3.11's goes on
after scheduling its retry, once per connection waiting, so the retries multiply (gh-151615):
a web held there logged 14,000 tracebacks and spent 0.9 s of CPU in 10 s, more each second.
Here running out of files (other processes' share of the system's) pauses accepting for a
second, and is logged once a minute at most, as the cap is.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import resource
import socket
import time
from collections.abc import Callable

import structlog

from resizer.errors import ResizerError

log = structlog.get_logger("resizer.listener")

BACKLOG = 128
"""Connections the kernel completes and queues before the web accepts them (aiohttp's)."""
RESERVE_FILES = 256
"""Open files kept from the cap for the web's own: its Redis pools (32 connections a node),
pub/sub, the metrics listener, DNS."""
RETRY_SECONDS = 1.0
"""How long accepting pauses when the process or the system is out of files (asyncio's)."""
RECHECK_SECONDS = 0.01
"""At the cap, how often the count of open connections is read again: a slot freed waits at
most this long for the next connection. aiohttp tells no one when a connection closes."""
LOG_EVERY_SECONDS = 60.0

PAUSE_REASONS = ("at_cap", "out_of_files")

_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class CannotListen(ResizerError):
    """The web's address cannot be bound: in use, not this host's, or a privileged port."""

    code = "cannot_listen"


def raise_open_files_limit() -> None:
    """Take the hard limit on open files rather than the soft one the process was started with.

    Every client connection is an open file, and so is every Redis connection the web opens to
    answer them. Shells, systemd and some container runtimes leave the soft limit at 1,024,
    which a thousand idle keep-alive connections reach; past it the web accepts no connection and
    opens none to Redis. The hard limit is the operator's to set (``ulimit -Hn``, compose's
    ``ulimits``); Go's runtime and nginx take it the same way.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard and hard != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("open_files.raised", soft=soft, to=hard)


def connection_cap(wanted: int) -> int:
    """``wanted``, or as many as the soft limit on open files holds beside ``RESERVE_FILES``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - RESERVE_FILES))


async def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to, as asyncio's server binds."""
    loop = asyncio.get_running_loop()
    try:
        found = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise CannotListen(f"cannot listen on {host}:{port}: {reason}") from None
    sockets: list[socket.socket] = []
    for family, kind, proto, _, address in dict.fromkeys(found):
        sock = socket.socket(family, kind, proto)
        sockets.append(sock)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            for each in sockets:
                each.close()
            reason = (exc.strerror or str(exc)).lower()
            raise CannotListen(f"cannot listen on {host}:{port}: {reason}") from None
    return sockets


class Listener:
    """Accepts connections for ``protocol_factory`` while fewer than ``cap`` are open.

    ``open_connections`` counts those the protocols hold (aiohttp's ``Server.connections``);
    the ones accepted and not yet handed to their protocol are counted here. ``on_pause`` is
    told each time accepting stops, with why (``at_cap``, ``out_of_files``).
    """

    def __init__(
        self,
        sockets: list[socket.socket],
        protocol_factory: Callable[[], asyncio.Protocol],
        open_connections: Callable[[], int],
        cap: int,
        on_pause: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = sockets
        self._factory = protocol_factory
        self._open = open_connections
        self.cap = cap
        self._on_pause = on_pause
        self._starting: set[asyncio.Task[object]] = set()
        # Connections open at most: the last count, plus those accepted since. Counting builds
        # a list of every connection, so it is done only once this comes near the cap.
        self._at_most = 0
        self._resume: asyncio.TimerHandle | None = None
        self._logged_at = -LOG_EVERY_SECONDS
        self._pauses = 0

    def start(self) -> None:
        for sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop accepting and close the sockets; connections already open are the server's."""
        if self._resume is not None:
            self._resume.cancel()
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def _room(self) -> int:
        if self.cap - self._at_most > BACKLOG:
            return self.cap - self._at_most  # room for a whole batch, whatever closed since
        self._at_most = self._open() + len(self._starting)
        return self.cap - self._at_most

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(min(self._room(), BACKLOG)):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                self._pause(RETRY_SECONDS, "out_of_files", error=exc.strerror)
                return
            self._connect(conn)
        if self._room() <= 0:
            self._pause(RECHECK_SECONDS, "at_cap", cap=self.cap)

    def _connect(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        self._at_most += 1
        task: asyncio.Task[object] = self._loop.create_task(
            self._loop.connect_accepted_socket(self._factory, conn)
        )
        self._starting.add(task)
        task.add_done_callback(functools.partial(self._connected, conn))

    def _connected(self, conn: socket.socket, task: asyncio.Task[object]) -> None:
        self._starting.discard(task)
        if task.cancelled():
            conn.close()
        elif (exc := task.exception()) is not None:
            log.warning("connection.dropped", error=repr(exc))
            conn.close()

    def _pause(self, seconds: float, reason: str, **details: object) -> None:
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
        self._pauses += 1
        self._on_pause(reason)
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_SECONDS:
            log.warning("accepting.paused", reason=reason, pauses=self._pauses, **details)
            self._logged_at, self._pauses = now, 0
        self._resume = self._loop.call_later(seconds, self._resumed, reason == "at_cap")

    def _resumed(self, at_cap: bool) -> None:
        self._resume = None
        if at_cap and self._room() <= 0:
            self._resume = self._loop.call_later(RECHECK_SECONDS, self._resumed, True)
            return
        self.start()
