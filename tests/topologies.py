"""Real Redis topologies for the tests, from the same ``redis-server`` binary as everything else:
a Redis Cluster (primaries with a replica each) and a Sentinel setup (a primary, a replica, three
sentinels). Each process has its own port and its own directory; no Docker, no redis-cli.

The cluster runs a second time from a Redis >= 7 where there is one (``redis7_binary``), for
sharded pub/sub: the embedded binary is Redis 6.2, which has none.
"""

from __future__ import annotations

import functools
import os
import random
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from resizer.embedded import RedisServer, server_binary
from resizer.processes import spawn, stop_process

SLOTS = 16384
CLUSTER_BUS_OFFSET = 10000
SENTINEL_SERVICE = "mymaster"


@functools.cache
def redis7_binary() -> str | None:
    """A ``redis-server`` of version 7 or later: ``RESIZER_TEST_REDIS7``, or the one on PATH
    (Debian's and Ubuntu's ``redis-server`` package; `.ci/run` installs it); None if neither."""
    found = os.environ.get("RESIZER_TEST_REDIS7") or shutil.which("redis-server")
    if not found:
        return None
    try:
        out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    version = re.search(r"v=(\d+)\.", out.stdout)
    return found if version is not None and int(version.group(1)) >= 7 else None


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ephemeral_floor() -> int:
    """The first port the kernel hands to outgoing connections (Linux: 32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, both below the ports the kernel
    picks for outgoing connections: one of those could take a port between this check and the
    node's start (it did, once: "bind: Address already in use")."""
    top = max(_ephemeral_floor() - CLUSTER_BUS_OFFSET, 11000)
    while True:
        port = random.randrange(10000, top)
        if _free(port) and _free(port + CLUSTER_BUS_OFFSET):
            return port


def wait_for(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class LocalCluster:
    """``primaries`` primaries owning equal slot ranges, each with one replica.

    ``node_timeout_ms`` is ``cluster-node-timeout``: how long a primary may be silent before its
    replica takes over. The cluster keeps serving the slots of the other primaries meanwhile
    (``cluster-require-full-coverage no``).
    """

    def __init__(
        self,
        directory: Path,
        primaries: int = 3,
        node_timeout_ms: int = 1000,
        binary: str | None = None,
    ) -> None:
        self.directory = directory
        self.node_timeout_ms = node_timeout_ms
        self.primaries: list[RedisServer] = []
        self.replicas: list[RedisServer] = []
        for role, servers in (("primary", self.primaries), ("replica", self.replicas)):
            for i in range(primaries):
                where = directory / f"{role}-{i}"
                where.mkdir(parents=True, exist_ok=True)
                servers.append(
                    RedisServer(
                        port=cluster_port(),
                        directory=where,
                        binary=binary,
                        extra_args=[
                            "--cluster-enabled", "yes",
                            "--cluster-config-file", "nodes.conf",
                            "--cluster-node-timeout", str(node_timeout_ms),
                            "--cluster-require-full-coverage", "no",
                            "--maxmemory-policy", "noeviction",
                        ],
                    )
                )  # fmt: skip

    @property
    def nodes(self) -> list[RedisServer]:
        return self.primaries + self.replicas

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{s.port}" for s in self.primaries)
        return f"redis+cluster://{seeds}/"

    def client(self, server: RedisServer) -> redis.Redis:
        return redis.Redis(port=server.port, socket_timeout=10, socket_connect_timeout=2)

    def start(self) -> LocalCluster:
        for server in self.nodes:
            server.start()
        ids = {}
        for epoch, server in enumerate(self.nodes, start=1):
            with self.client(server) as node:
                ids[server.port] = node.execute_command("CLUSTER", "MYID").decode()
                node.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        share = SLOTS // len(self.primaries)
        for i, server in enumerate(self.primaries):
            first = i * share
            last = SLOTS - 1 if i == len(self.primaries) - 1 else first + share - 1
            with self.client(server) as node:
                node.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
        with self.client(self.nodes[0]) as first_node:
            for server in self.nodes[1:]:
                first_node.execute_command("CLUSTER", "MEET", "127.0.0.1", server.port)

        def everyone_known() -> bool:
            return all(self._known(server) == len(self.nodes) for server in self.nodes)

        wait_for(everyone_known, 30, "every node to know every other")
        for primary, replica in zip(self.primaries, self.replicas, strict=True):
            with self.client(replica) as node:
                node.execute_command("CLUSTER", "REPLICATE", ids[primary.port])
        wait_for(self.healthy, 30, "the cluster to be ok with every replica in sync")
        return self

    def _known(self, server: RedisServer) -> int:
        with self.client(server) as node:
            lines = node.execute_command("CLUSTER", "NODES").decode().splitlines()
        return sum(1 for line in lines if "handshake" not in line and "noaddr" not in line)

    def healthy(self) -> bool:
        """Every node says the cluster is ok, and every replica's link to its primary is up."""
        for server in self.nodes:
            if server.proc is None:
                continue
            with self.client(server) as node:
                if b"cluster_state:ok" not in node.execute_command("CLUSTER", "INFO"):
                    return False
                info = node.info("replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
        return True

    def primary_of_slot(self, slot: int) -> RedisServer:
        """The node that serves ``slot`` now (after a failover, a former replica)."""
        for server in self.nodes:
            if server.proc is None:
                continue
            with self.client(server) as node:
                for first, last, owner, *_ in node.execute_command("CLUSTER", "SLOTS"):
                    if first <= slot <= last:
                        return next(s for s in self.nodes if s.port == int(owner[1]))
        raise AssertionError(f"no node serves slot {slot}")

    def replica_of(self, primary: RedisServer) -> RedisServer:
        with self.client(primary) as node:
            info = node.info("replication")
        port = int(info["slave0"]["port"])
        return next(s for s in self.nodes if s.port == port)

    def live_primaries(self) -> list[RedisServer]:
        found = []
        for server in self.nodes:
            if server.proc is None:
                continue
            with self.client(server) as node:
                if node.info("replication")["role"] == "master":
                    found.append(server)
        return found

    def flush(self) -> None:
        for server in self.live_primaries():
            with self.client(server) as node:
                node.flushall()
                node.config_resetstat()

    def stop(self) -> None:
        for server in self.nodes:
            server.stop()


def versioned_cluster(redis_version: str, directory: Path) -> LocalCluster:
    """A started ``LocalCluster`` of Redis 6.2 (the embedded binary) or of Redis >= 7 (skipping
    the test where there is none)."""
    binary = None
    if redis_version == "7":
        binary = redis7_binary()
        if binary is None:
            pytest.skip("no redis-server >= 7 (install Debian's redis-server)")
    return LocalCluster(directory, binary=binary).start()


class SlotMove:
    """One slot moved from the node that serves it to another primary, as ``redis-cli --cluster
    reshard`` moves it: both ends told (IMPORTING, MIGRATING), its keys migrated a batch at a
    time, then every primary told the new owner. ``run`` does it all; the tests that look inside
    the move call its steps."""

    def __init__(self, cluster: LocalCluster, slot: int, target: RedisServer | None = None):
        self.cluster, self.slot = cluster, slot
        self.source = cluster.primary_of_slot(slot)
        self.target = target or next(
            p for p in cluster.live_primaries() if p.port != self.source.port
        )
        self.finished = True

    def _id(self, server: RedisServer) -> str:
        with self.cluster.client(server) as node:
            return str(node.execute_command("CLUSTER", "MYID").decode())

    def begin(self) -> None:
        self.finished = False
        source_id, target_id = self._id(self.source), self._id(self.target)
        with self.cluster.client(self.target) as node:
            node.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", source_id)
        with self.cluster.client(self.source) as node:
            node.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", target_id)

    def migrate(self, *names: str | bytes) -> None:
        with self.cluster.client(self.source) as node:
            node.execute_command(
                "MIGRATE", "127.0.0.1", self.target.port, "", 0, 5000, "KEYS", *names
            )

    def step(self, batch: int) -> int:
        """Up to ``batch`` more keys migrated; how many."""
        with self.cluster.client(self.source) as node:
            names = node.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, batch)
        if names:
            self.migrate(*names)
        return len(names)

    def finish(self) -> int:
        """The keys left migrated and the new owner made known; how many keys that took."""
        moved = 0
        while count := self.step(1000):
            moved += count
        owner = self._id(self.target)
        for primary in self.cluster.live_primaries():
            with self.cluster.client(primary) as node:
                node.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", owner)
        self.finished = True
        return moved

    def run(self, batch: int = 10, pause: float = 0.0) -> int:
        """The whole move, ``batch`` keys a MIGRATE (redis-cli's default) and ``pause`` seconds
        between two (a slot of large values takes that long); the keys moved."""
        self.begin()
        moved = 0
        while count := self.step(batch):
            moved += count
            time.sleep(pause)
        return moved + self.finish()

    def back(self) -> None:
        """The slot to its first node again (finishing this move first if need be)."""
        if not self.finished:
            self.finish()
        self.source, self.target = self.target, self.source
        self.begin()
        self.finish()


class SentinelProcess:
    """One ``redis-server --sentinel`` watching ``primary``."""

    def __init__(self, directory: Path, primary_port: int, down_after_ms: int) -> None:
        self.port = cluster_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        # Sentinel rewrites its configuration file as it learns: it must be writable, its own.
        (directory / "sentinel.conf").write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {directory}\n"
            f"logfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SENTINEL_SERVICE} 10000\n"
            f"sentinel parallel-syncs {SENTINEL_SERVICE} 1\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelProcess:
        self.proc = spawn([server_binary(), str(self.directory / "sentinel.conf"), "--sentinel"])
        wait_for(lambda: redis.Redis(port=self.port).ping(), 10, f"sentinel on {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=5.0)
            self.proc = None


class LocalSentinel:
    """A primary, its replica, and three sentinels (quorum 2) that fail it over after
    ``down_after_ms`` of silence."""

    def __init__(self, directory: Path, down_after_ms: int = 1000) -> None:
        self.primary = RedisServer(
            directory=directory / "primary", extra_args=["--maxmemory-policy", "noeviction"]
        )
        self.replica = RedisServer(
            directory=directory / "replica",
            extra_args=[
                "--replicaof", "127.0.0.1", str(self.primary.port),
                "--maxmemory-policy", "noeviction",
            ],
        )  # fmt: skip
        self.sentinels = [
            SentinelProcess(directory / f"sentinel-{i}", self.primary.port, down_after_ms)
            for i in range(3)
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SENTINEL_SERVICE}/0"

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, self.replica]

    def start(self) -> LocalSentinel:
        for server in self.servers:
            server.directory.mkdir(parents=True, exist_ok=True)
            server.start()
        wait_for(self._replica_in_sync, 30, "the replica to sync")
        for sentinel in self.sentinels:
            sentinel.start()
        wait_for(self._sentinels_ready, 30, "the sentinels to know each other and the replica")
        return self

    def _replica_in_sync(self) -> bool:
        with redis.Redis(port=self.replica.port) as node:
            return bool(node.info("replication").get("master_link_status") == "up")

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            with redis.Redis(port=sentinel.port) as node:
                state = node.sentinel_master(SENTINEL_SERVICE)
                if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                    return False
        return True

    def current_primary(self) -> RedisServer:
        with redis.Redis(port=self.sentinels[0].port) as node:
            _, port = node.sentinel_get_master_addr_by_name(SENTINEL_SERVICE)
        return next(s for s in self.servers if s.port == int(port))

    def flush(self) -> None:
        with redis.Redis(port=self.current_primary().port) as node:
            node.flushall()

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()
