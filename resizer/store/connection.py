"""Connecting to Redis, and what its errors mean to the rest of the service.

``REDIS_URL`` names one of three kinds of Redis; the rest of the service never knows which:

- ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path``: one
  Redis (a primary, or a proxy in front of one).
- ``redis+cluster://[user:password@]host:port,host:port,.../`` (``rediss+cluster://`` for
  TLS): a Redis Cluster, found from any of the seed nodes given.
- ``redis+sentinel://[user:password@]host:port,host:port,.../service[/db]``
  (``rediss+sentinel://`` for TLS to the Redis and the sentinels): the primary that the
  sentinels name for ``service``, followed through failovers. ``?sentinel_password=`` (and
  ``sentinel_username``) when the sentinels have credentials of their own.

TLS takes redis-py's options as query parameters: ``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_cert_reqs`` (``required``, ``optional``, ``none``) and
``ssl_check_hostname``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis._parsers import BaseParser
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.driver_info import DriverInfo

from resizer.errors import ServiceUnavailable

Client: TypeAlias = aioredis.Redis | RedisCluster
"""What the store talks to: one Redis (alone or behind Sentinel), or a Redis Cluster."""

POOL_SIZE: Final = 32
"""Redis commands in flight per process, at most (each pub/sub listener takes one more
connection)."""

CONNECT_TIMEOUT: Final = 2.0

REPLICA_WAIT_MS: Final = 1000
"""How long a write waits for ``RESIZER_MIN_REPLICAS`` replicas to confirm it before the caller
is told to retry: replicas answer within milliseconds when they are there at all."""


class NotReplicated(redis.exceptions.RedisError):
    """A write reached the primary but not ``RESIZER_MIN_REPLICAS`` replicas in time."""


class WritesRefused(redis.exceptions.ResponseError):
    """Redis answers, but takes no writes for now: its last save to disk failed (MISCONF;
    it refuses PING then too), or fewer replicas than its ``min-replicas-to-write`` are in
    reach (NOREPLICAS)."""


class RedisBusy(redis.exceptions.ResponseError):
    """Redis is running a script past its time limit (BUSY): it answers nothing else until the
    script ends or is killed."""


class WrongType(redis.exceptions.ResponseError):
    """A key under one of resizer's names holds another type than resizer keeps there
    (WRONGTYPE): another program writes into resizer's database. A script meets it before its
    first write and refuses with nothing written, naming the key (``wrong_type`` in the Lua
    prelude); the key stays until an operator removes it."""

    @classmethod
    def among(cls, message: str, names: Iterable[object]) -> WrongType:
        """Redis's own WRONGTYPE, which names no key, with the keys it may be about."""
        return cls(f"{message} (one of {', '.join(map(str, names))})")


# redis-py raises these replies as plain ResponseErrors, like a bug in a command. Its parsers
# type an error reply by its first word through one table: listed there, they come typed from
# every command, pipeline and transaction, on every kind of client.
for _code, _kind in (
    ("MISCONF", WritesRefused),
    ("NOREPLICAS", WritesRefused),
    ("BUSY", RedisBusy),
    ("WRONGTYPE", WrongType),
):
    BaseParser.EXCEPTION_CLASSES.setdefault(_code, _kind)


# Errors that mean "Redis is not there right now", as opposed to a bug in a command. A write its
# replicas did not confirm counts too: a failover could still take it away. So does a Redis
# that takes no writes for now (a failed save, too few replicas, a replica where the primary
# was), or none at all while a script runs past its time limit, one that holds another
# program's key under one of resizer's names, and one whose ACL denies resizer's user a command,
# a key or a channel: waited out like an outage (an operator fixes them, often live), never a
# crash or a FAILED task.
REDIS_DOWN: Final = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    # A cluster's redirections or TRYAGAIN (a slot moving between nodes) past redis-py's retries.
    redis.exceptions.ClusterError,
    redis.exceptions.ReadOnlyError,
    WritesRefused,
    RedisBusy,
    WrongType,
    redis.exceptions.NoPermissionError,
    NotReplicated,
)

# Redis at its maxmemory (noeviction) refused a write: nothing was written; retry later. A plain
# command raises OutOfMemoryError; the store's scripts turn a refusal inside a script into one.
REDIS_FULL: Final = (redis.exceptions.OutOfMemoryError,)

# What every connection tells Redis it is (CLIENT SETINFO). Given, so that redis-py does not
# look its own version up in the installed metadata for each connection it opens: a scan of
# sys.path, 3 ms the first time, 0.5 ms after.
_DRIVER: Final = DriverInfo(lib_version=redis.__version__)

_TLS_OPTIONS: Final = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)
_SENTINEL_OPTIONS: Final = ("sentinel_username", "sentinel_password")


def _retry() -> Retry:
    # A command whose reply is lost is sent again (twice at most): every script is safe to run
    # twice.
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2)


WRITE_SLICE: Final = 1 << 20


class _SlicedWrites(AbstractConnection):
    """Sends a command's large arguments (an original of several MB) a slice at a time, letting
    the event loop run between slices. redis-py hands the whole command to the transport at
    once, which joins it into one buffer and copies what the socket did not take: for a 19 MB
    original, 5-20 ms in which the process serves nobody else."""

    async def _send_packed_command(self, command: Iterable[bytes]) -> None:
        writer = self._writer
        assert writer is not None
        for chunk in command:
            if len(chunk) <= WRITE_SLICE:
                writer.write(chunk)
                continue
            view = memoryview(chunk)
            for start in range(0, len(view), WRITE_SLICE):
                writer.write(view[start : start + WRITE_SLICE])
                await writer.drain()
        await writer.drain()


_SLICED: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _sliced(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """``connection_class`` (plain, TLS, Unix socket, Sentinel's) writing in slices."""
    found = _SLICED.get(connection_class)
    if found is None:
        name = f"Sliced{connection_class.__name__}"
        found = _SLICED[connection_class] = type(name, (_SlicedWrites, connection_class), {})
    return found


def client_for(url: str, *, socket_timeout: float = 5.0) -> Client:
    """A client whose every call is bounded in time, so an outage is an error, not a hang.

    The commands in flight are bounded too: a burst of requests queues for a connection (up to
    ``socket_timeout``) instead of opening hundreds of sockets to Redis at once.
    """
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis+cluster", "rediss+cluster"):
        return _cluster(url, socket_timeout)
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        return _sentinel(url, socket_timeout)
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=socket_timeout,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=socket_timeout,
        health_check_interval=15,
        retry=_retry(),
        driver_info=_DRIVER,
    )
    pool.connection_class = _sliced(pool.connection_class)
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


class _Url:
    """The parts of a multi-host URL (``scheme://user:password@h1:p1,h2:p2/path?query``)."""

    def __init__(self, url: str, allowed: tuple[str, ...]) -> None:
        parts = urlsplit(url)
        userinfo, _, hosts = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        self.username = unquote(user) or None
        self.password = unquote(password) or None
        self.hosts = [_host_port(h) for h in hosts.split(",") if h]
        if not self.hosts:
            raise ValueError(f"{parts.scheme}:// needs at least one host:port")
        self.path = [unquote(p) for p in parts.path.split("/") if p]
        self.tls = parts.scheme.lower().startswith("rediss")
        self.query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = sorted(set(self.query) - set(allowed))
        if unknown:
            raise ValueError(f"unknown parameter(s) in REDIS_URL: {', '.join(unknown)}")

    def tls_options(self) -> dict[str, Any]:
        if not self.tls:
            return {}
        options: dict[str, Any] = {"ssl": True}
        for name in _TLS_OPTIONS:
            if name in self.query:
                value: Any = self.query[name]
                if name == "ssl_check_hostname":
                    value = value.lower() in ("1", "true", "yes")
                options[name] = value
        return options


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port in REDIS_URL, got {text!r}")
    return host.strip("[]"), int(port)


class _GatedCluster(RedisCluster):
    """redis-py's cluster client with the single client's queueing: it opens a connection per
    command in flight and fails once a node has ``max_connections``, so commands wait here for
    one of ``POOL_SIZE`` places instead (a blocked wait is bounded like any other)."""

    def __init__(self, *args: Any, wait_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = asyncio.Semaphore(POOL_SIZE)
        self._wait_timeout = wait_timeout

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:
            # Learn the topology before any command opens a connection: commands that open
            # connections while redis-py initializes lose some of them (AttributeError).
            await self.initialize()
        try:
            async with asyncio.timeout(self._wait_timeout):
                await self._gate.acquire()
        except TimeoutError:
            raise redis.exceptions.ConnectionError("no free Redis connection in time") from None
        try:
            return await super().execute_command(*args, **kwargs)
        except (AttributeError, TypeError) as exc:
            if _torn_down(exc):
                raise redis.exceptions.ConnectionError(f"connection lost: {exc}") from exc
            raise
        finally:
            self._gate.release()


def _torn_down(exc: Exception) -> bool:
    """Whether ``exc`` is a connection torn down under a command (a node died, or reset the
    socket): redis-py's asyncio connections then fail with AttributeError or TypeError from the
    transport instead of ConnectionError (redis-py issue #4287). Any other AttributeError or
    TypeError is a bug and stays itself."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = "" if tb is None else tb.tb_frame.f_code.co_filename.replace("\\", "/")
    return where.endswith(_TRANSPORT_FILES)


_TRANSPORT_FILES: Final = (
    "redis/asyncio/connection.py",
    "asyncio/streams.py",
    "asyncio/selector_events.py",
)


def _cluster(url: str, socket_timeout: float) -> RedisCluster:
    parsed = _Url(url, _TLS_OPTIONS)
    if parsed.path and parsed.path != ["0"]:
        raise ValueError("a Redis Cluster has database 0 only: end the URL with / or /0")
    return _GatedCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.hosts],
        username=parsed.username,
        password=parsed.password,
        wait_timeout=socket_timeout,
        # The gate bounds commands; the pub/sub listeners borrow a node's connection on top.
        max_connections=POOL_SIZE + 4,
        socket_timeout=socket_timeout,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=15,
        retry=_retry(),
        driver_info=_DRIVER,
        # A primary being failed over must not stop the client from starting (or serving the
        # other primaries' slots).
        require_full_coverage=False,
        **parsed.tls_options(),
    )


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The primary's connections, found through the sentinels, bounded like a single Redis's."""


class _SentinelClient(aioredis.Redis):
    """Closes its connections to the sentinels with its own."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        pool = self.connection_pool
        await super().aclose(close_connection_pool)
        if isinstance(pool, SentinelConnectionPool):
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()


def _sentinel(url: str, socket_timeout: float) -> aioredis.Redis:
    parsed = _Url(url, _TLS_OPTIONS + _SENTINEL_OPTIONS)
    if not parsed.path or len(parsed.path) > 2:
        raise ValueError("redis+sentinel:// needs the service name: .../SERVICE[/DB]")
    service, db = parsed.path[0], int(parsed.path[1]) if len(parsed.path) > 1 else 0
    tls = parsed.tls_options()
    bounded = {"socket_timeout": socket_timeout, "socket_connect_timeout": CONNECT_TIMEOUT}
    sentinels = Sentinel(  # type: ignore[no-untyped-call]
        parsed.hosts,
        sentinel_kwargs={
            **bounded,
            **tls,
            "username": parsed.query.get("sentinel_username"),
            "password": parsed.query.get("sentinel_password"),
            "driver_info": _DRIVER,
        },
    )
    client: aioredis.Redis = sentinels.master_for(
        service,
        redis_class=_SentinelClient,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=POOL_SIZE,
        timeout=socket_timeout,
        db=db,
        username=parsed.username,
        password=parsed.password,
        health_check_interval=15,
        retry=_retry(),
        driver_info=_DRIVER,
        **bounded,
        **tls,
    )
    pool = client.connection_pool
    pool.connection_class = _sliced(pool.connection_class)
    return client


def is_cluster(client: Client) -> bool:
    return isinstance(client, RedisCluster)


async def every_primary(client: Client, *args: Any) -> list[Any]:
    """Run a command on every primary (one Redis is its own primary); one reply each."""
    if isinstance(client, RedisCluster):
        await client.initialize()  # learns the nodes on first use; a no-op afterwards
        return [
            await client.execute_command(*args, target_nodes=node)
            for node in client.get_primaries()
        ]
    return [await client.execute_command(*args)]  # type: ignore[no-untyped-call]


async def confirm_replicated(client: Client, key: str, counter: str, replicas: int) -> None:
    """Return once ``replicas`` replicas hold every write made so far to ``key``'s slot.

    ``WAIT`` counts the replicas that caught up with the last write *of its own connection*, so
    a write to ``key`` (a counter) goes first on the same connection: it comes after every
    earlier write to that slot, whichever connection made it (a script sent again after a lost
    reply changes nothing, and would otherwise leave WAIT nothing to wait for). On a cluster,
    both go to the primary that owns the slot. Raises ``NotReplicated`` when too few confirm in
    ``REPLICA_WAIT_MS``.
    """
    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(key)
        cluster_pipe = client.pipeline()
        cluster_pipe.hincrby(key, counter, 1)
        cluster_pipe.execute_command("WAIT", replicas, REPLICA_WAIT_MS, target_nodes=node)
        pending = cluster_pipe.execute()
    else:
        pipe = client.pipeline(transaction=False)
        pipe.hincrby(key, counter, 1)
        pipe.execute_command("WAIT", replicas, REPLICA_WAIT_MS)
        pending = pipe.execute()
    try:
        _, reached = await pending
    except redis.exceptions.ResponseError as exc:
        # A node that became a replica meanwhile refuses WAIT: the write's fate is unknown.
        raise NotReplicated(f"WAIT failed: {exc}") from exc
    except (AttributeError, TypeError) as exc:
        if _torn_down(exc):
            raise redis.exceptions.ConnectionError(f"connection lost: {exc}") from exc
        raise
    if int(reached) < replicas:
        raise NotReplicated(
            f"{reached} of RESIZER_MIN_REPLICAS={replicas} replicas confirmed the write "
            f"within {REPLICA_WAIT_MS} ms"
        )


def outage_event(exc: BaseException) -> str:
    """What a loop logs while it waits ``exc`` out (one of ``REDIS_DOWN`` or ``REDIS_FULL``)."""
    if isinstance(exc, REDIS_FULL):
        return "redis.full"
    if isinstance(exc, WritesRefused | redis.exceptions.ReadOnlyError):
        return "redis.refusing_writes"
    if isinstance(exc, RedisBusy):
        return "redis.busy"
    if isinstance(exc, WrongType):
        return "redis.wrong_type"
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return "redis.permission_denied"
    if _slots_moving(exc):
        return "redis.slots_moving"
    return "redis.unreachable"


def _slots_moving(exc: BaseException) -> bool:
    """A cluster that answers, with a slot moving between nodes (TRYAGAIN, or redirections past
    redis-py's retries), as opposed to one that is down."""
    return isinstance(exc, redis.exceptions.TryAgainError | redis.exceptions.ClusterError) and (
        not isinstance(exc, redis.exceptions.ClusterDownError)
    )


def unavailable(exc: BaseException) -> ServiceUnavailable:
    """The one message clients see when Redis cannot be reached."""
    if isinstance(exc, NotReplicated):
        return ServiceUnavailable(
            "the task store (Redis) did not confirm the write on its replicas in time; "
            "retrying is safe"
        )
    if isinstance(exc, WritesRefused | redis.exceptions.ReadOnlyError):
        reason = str(exc).partition(".")[0][:160]
        return ServiceUnavailable(f"the task store (Redis) takes no writes for now: {reason}")
    if isinstance(exc, RedisBusy):
        return ServiceUnavailable(
            "the task store (Redis) is busy running a script past its time limit"
        )
    if _slots_moving(exc):
        return ServiceUnavailable(
            "the task store (a Redis Cluster) is moving this task's keys between nodes; "
            "retrying is safe"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return ServiceUnavailable(
            "the task store (Redis) denies resizer's user a command, key or channel it needs "
            "(docs/deployment.md gives the ACL)"
        )
    if isinstance(exc, WrongType):
        return ServiceUnavailable(
            "the task store (Redis) holds another program's key under one of resizer's names; "
            "resizer needs a Redis database of its own"
        )
    return ServiceUnavailable(f"the task store (Redis) is unavailable: {exc.__class__.__name__}")
