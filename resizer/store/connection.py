"""Connecting to Redis, and what its errors mean to the rest of the service."""

from __future__ import annotations

from typing import Final

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from resizer.errors import ServiceUnavailable

POOL_SIZE: Final = 32
"""Redis connections per process, at most (each pub/sub listener takes one more)."""

# Errors that mean "Redis is not there right now", as opposed to a bug in a command.
REDIS_DOWN: Final = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)

# Redis at its maxmemory (noeviction) refused a write: nothing was written; retry later. A plain
# command raises OutOfMemoryError; the store's scripts turn a refusal inside a script into one.
REDIS_FULL: Final = (redis.exceptions.OutOfMemoryError,)


def client_for(url: str, *, socket_timeout: float = 5.0) -> aioredis.Redis:
    """A client whose every call is bounded in time, so an outage is an error, not a hang.

    The pool is bounded too: a burst of requests queues for a connection (up to
    ``socket_timeout``) instead of opening hundreds of sockets to Redis at once. A command whose
    reply is lost is sent again (twice at most): every script is safe to run twice.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=socket_timeout,
        socket_connect_timeout=2.0,
        socket_timeout=socket_timeout,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def unavailable(exc: BaseException) -> ServiceUnavailable:
    """The one message clients see when Redis cannot be reached."""
    return ServiceUnavailable(f"the task store (Redis) is unavailable: {exc.__class__.__name__}")
