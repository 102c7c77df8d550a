"""All of resizer's Redis access: the key schema, the task records and the reliable queue.

Key schema
==========
Every key carries the hash tag ``{resizer}``, so on Redis Cluster they all live in one slot and
every multi-key script below stays legal. ``<id>`` is a task id (a UUID4 hex string).

==================================  ======  ====================================================
key                                 type    what
==================================  ======  ====================================================
``{resizer}:task:<id>``             hash    status, created_at/updated_at (ms, Redis clock),
                                            attempts, error, token (of the current claim),
                                            worker, format/width/height of the original,
                                            result_format
``{resizer}:task:<id>:original``    string  the submitted image, exactly its bytes
``{resizer}:task:<id>:64``          string  the 64x64 image, base64 (as the task asks)
``{resizer}:task:<id>:32``          string  the 32x32 image, base64
``{resizer}:waiting``               list    ids waiting; LPUSH in, BLMOVE out from the right
``{resizer}:processing``            list    ids a worker has taken (the reliable-queue list)
``{resizer}:leases``                zset    id -> lease deadline, ms on the Redis clock
==================================  ======  ====================================================

The task's keys expire ``RESIZER_TTL_SECONDS`` after creation (results inherit the remaining
TTL of the hash, so a task and its images vanish together). The three queue keys are shared and
never expire; an id whose task has expired is dropped when a worker or recovery meets it.

State machine
=============
::

    create ──> WAITING ──claim──> IN_PROGRESS ──complete──> DONE
                  ^                   │  │
                  └──retry/recover────┘  └──fail / attempt cap──> FAILED

Every arrow is one Lua script (atomic: Redis runs a script to completion before any other
command), except the first half of a claim, which is the ``BLMOVE`` that blocks until work
arrives. Times come from Redis' own clock (``TIME``), so hosts with skewed clocks agree on leases.

What a crash at each step leaves behind, and who repairs it:

- during ``create``: nothing or everything (one script): the client saw no 201, or the task
  exists and is queued.
- after ``BLMOVE``, before the claim script: the id sits in ``processing`` with no lease.
  Recovery *adopts* it (gives it a lease of one lease period, counting from when it first saw
  it); if no claim arrives by the deadline it goes back to ``waiting``. No attempt was counted.
- while IN_PROGRESS (decoding, resizing, between computing results and acknowledging): the lease
  stops being renewed and expires; recovery re-queues the task, or FAILS it once
  ``attempts >= RESIZER_MAX_ATTEMPTS``.
- during ``complete``: it is one script, so either nothing was written (as above) or the task
  is DONE with every size. There is no half-DONE task.
- a worker presumed dead that wakes up: its token no longer matches, so its renewals, results
  and failures are refused; the newer attempt's results stand.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Final

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from resizer.config import Settings
from resizer.errors import ServiceUnavailable
from resizer.models import Claim, ImageInfo, ImageSize, RecoveryReport, Task, TaskStatus

PREFIX: Final = "{resizer}"
WAITING: Final = f"{PREFIX}:waiting"
PROCESSING: Final = f"{PREFIX}:processing"
LEASES: Final = f"{PREFIX}:leases"

# Errors that mean "Redis is not there right now", as opposed to a bug in a command.
REDIS_DOWN: Final = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)


def task_key(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}"


def image_key(task_id: str, size: ImageSize | int) -> str:
    return f"{PREFIX}:task:{task_id}:{ImageSize(str(size)).value}"


# --- Lua --------------------------------------------------------------------------------------
# Each script declares every key it touches in KEYS (Redis Cluster routes by them). `now` is
# read from the server inside the script: Redis >= 5 replicates script effects, so TIME is fine.

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: task, original, waiting   ARGV: id, ttl_ms, format, width, height, image bytes
_CREATE = (
    _NOW
    + """
redis.call('HSET', KEYS[1], 'status', 'WAITING', 'created_at', now, 'updated_at', now,
           'attempts', 0, 'format', ARGV[3], 'width', ARGV[4], 'height', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[1])
return now
"""
)

# KEYS: task, processing, leases   ARGV: id, token, lease_ms, worker
# Returns the attempt number, or 0 when the id is not claimable (expired task, or a stale
# duplicate delivery); then one copy of the id is removed from `processing`.
_CLAIM = (
    _NOW
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'WAITING' then
  redis.call('LREM', KEYS[2], 1, ARGV[1])
  if not status then redis.call('ZREM', KEYS[3], ARGV[1]) end
  return 0
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'IN_PROGRESS', 'token', ARGV[2], 'worker', ARGV[4],
           'updated_at', now)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
return attempt
"""
)

# KEYS: task, leases   ARGV: id, token, lease_ms      Returns 1 if renewed, 0 if the lease is lost.
_RENEW = (
    _NOW
    + """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

# KEYS: task, processing, leases, image keys...   ARGV: id, token, result_format, images...
# Results and DONE in one step, only for the holder of the current token.
_COMPLETE = (
    _NOW
    + """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
for i = 4, #KEYS do
  if ttl > 0 then
    redis.call('SET', KEYS[i], ARGV[i], 'PX', ttl)
  else
    redis.call('SET', KEYS[i], ARGV[i])
  end
end
redis.call('HSET', KEYS[1], 'status', 'DONE', 'result_format', ARGV[3], 'updated_at', now)
redis.call('HDEL', KEYS[1], 'token', 'error')
redis.call('LREM', KEYS[2], 1, ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""
)

# Shared tail of the scripts that take a task away from its worker: re-queue it, or FAIL it when
# `fatal` or when the attempt cap is reached. Expects KEYS: task, processing, leases, waiting,
# and locals id, now, reason, fatal, max_attempts. Returns 'requeued' or 'failed'.
_RELEASE_TAIL = """
redis.call('LREM', KEYS[2], 0, id)
redis.call('ZREM', KEYS[3], id)
redis.call('HDEL', KEYS[1], 'token')
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if fatal or attempts >= max_attempts then
  local message = reason
  if not fatal then
    message = 'gave up after ' .. attempts .. ' attempts (RESIZER_MAX_ATTEMPTS=' ..
              max_attempts .. '); last: ' .. reason
  end
  redis.call('HSET', KEYS[1], 'status', 'FAILED', 'error', message, 'updated_at', now)
  return 'failed'
end
redis.call('HSET', KEYS[1], 'status', 'WAITING', 'updated_at', now)
if not redis.call('LPOS', KEYS[4], id) then
  redis.call('LPUSH', KEYS[4], id)
end
return 'requeued'
"""

# KEYS: task, processing, leases, waiting   ARGV: id, token, reason, fatal(0/1), max_attempts
# A worker gives a task back: a permanent failure (fatal) or a transient one (retry).
_RELEASE = (
    _NOW
    + """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then return 'stale' end
local id, reason, fatal, max_attempts = ARGV[1], ARGV[3], ARGV[4] == '1', tonumber(ARGV[5])
"""
    + _RELEASE_TAIL
)

# KEYS: leases   ARGV: limit      The ids whose lease has expired, on the Redis clock.
_EXPIRED = (
    _NOW
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
"""
)

# KEYS: task, processing, leases, waiting   ARGV: id, max_attempts
# Re-checks expiry inside the script: a lease renewed, or a task recovered by a concurrent
# recovery, since the id was listed is left alone. So recoveries may race each other and live
# workers freely.
_RECOVER = (
    _NOW
    + """
local deadline = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not deadline or tonumber(deadline) > now then return 'skipped' end
local id, fatal, max_attempts = ARGV[1], false, tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], id)
  redis.call('LREM', KEYS[2], 0, id)
  return 'dropped'
end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'DONE' or status == 'FAILED' then
  redis.call('ZREM', KEYS[3], id)
  redis.call('LREM', KEYS[2], 0, id)
  return 'dropped'
end
local reason = 'the worker stopped renewing its lease (crashed, killed or stalled)'
"""
    + _RELEASE_TAIL
)

# KEYS: task, processing, leases   ARGV: id, lease_ms
# An id in `processing` without a lease: a worker took it with BLMOVE and has not (yet) run the
# claim script. Give it one lease period; the claim, if it comes, replaces this deadline.
_ADOPT = (
    _NOW
    + """
if not redis.call('LPOS', KEYS[2], ARGV[1]) then return 'skipped' end
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 'skipped' end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('LREM', KEYS[2], 0, ARGV[1])
  return 'dropped'
end
redis.call('ZADD', KEYS[3], 'NX', now + tonumber(ARGV[2]), ARGV[1])
return 'adopted'
"""
)


def _decode(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _text(value: bytes | str) -> str:
    # The client is binary (images), so replies are bytes; the stubs also allow str.
    return value if isinstance(value, str) else value.decode()


def _ms_to_datetime(ms: bytes) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


def _task_from_hash(task_id: str, fields: dict[Any, Any]) -> Task | None:
    if not fields:
        return None
    return Task(
        id=task_id,
        status=TaskStatus(fields[b"status"].decode()),
        created_at=_ms_to_datetime(fields[b"created_at"]),
        updated_at=_ms_to_datetime(fields[b"updated_at"]),
        attempts=int(fields[b"attempts"]),
        original=ImageInfo(
            format=fields[b"format"].decode(),
            width=int(fields[b"width"]),
            height=int(fields[b"height"]),
        ),
        error=_decode(fields.get(b"error")),
        result_format=_decode(fields.get(b"result_format")),
    )


def new_task_id() -> str:
    return uuid.uuid4().hex


class Store:
    """Typed operations on Redis. One instance per process; safe to share between tasks."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._create = client.register_script(_CREATE)
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._complete = client.register_script(_COMPLETE)
        self._release = client.register_script(_RELEASE)
        self._expired = client.register_script(_EXPIRED)
        self._recover = client.register_script(_RECOVER)
        self._adopt = client.register_script(_ADOPT)

    @staticmethod
    def client_for(url: str, *, socket_timeout: float = 5.0) -> aioredis.Redis:
        """A client whose every call is bounded in time, so an outage is an error, not a hang."""
        return aioredis.Redis.from_url(
            url,
            socket_connect_timeout=2.0,
            socket_timeout=socket_timeout,
            health_check_interval=15,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        )

    # --- tasks ----------------------------------------------------------------------------------

    async def create_task(self, info: ImageInfo, data: bytes) -> Task:
        """Store the original and queue the task, atomically."""
        task_id = new_task_id()
        ttl_ms = self.settings.ttl_seconds * 1000
        now_ms = await self._create(
            keys=[task_key(task_id), image_key(task_id, ImageSize.ORIGINAL), WAITING],
            args=[task_id, ttl_ms, info.format, info.width, info.height, data],
        )
        now = _ms_to_datetime(str(now_ms).encode())
        return Task(
            id=task_id,
            status=TaskStatus.WAITING,
            created_at=now,
            updated_at=now,
            attempts=0,
            original=info,
        )

    async def get_task(self, task_id: str) -> Task | None:
        fields = await self.redis.hgetall(task_key(task_id))
        return _task_from_hash(task_id, fields)

    async def get_task_and_image(
        self, task_id: str, size: ImageSize
    ) -> tuple[Task | None, bytes | None]:
        """The task and one of its images in one round trip.

        ``original`` comes back as the raw bytes; resized sizes as base64 (as stored).
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(task_key(task_id))
            pipe.get(image_key(task_id, size))
            fields, image = await pipe.execute()
        return _task_from_hash(task_id, fields), image

    async def get_original(self, task_id: str) -> bytes | None:
        data = await self.redis.get(image_key(task_id, ImageSize.ORIGINAL))
        return data.encode() if isinstance(data, str) else data

    # --- the queue ------------------------------------------------------------------------------

    async def take(self, timeout: float) -> str | None:
        """Block until a task id can be moved from ``waiting`` to ``processing`` (or time out)."""
        moved = await self.redis.blmove(WAITING, PROCESSING, timeout, src="RIGHT", dest="LEFT")  # type: ignore[arg-type]
        return None if moved is None else _text(moved)

    async def claim(self, task_id: str, worker: str) -> Claim | None:
        """Turn a taken id into a leased claim: IN_PROGRESS, attempt counted, token issued."""
        token = secrets.token_hex(16)
        attempt = await self._claim(
            keys=[task_key(task_id), PROCESSING, LEASES],
            args=[task_id, token, self.settings.lease_seconds * 1000, worker],
        )
        if not attempt:
            return None
        return Claim(task_id=task_id, token=token, attempt=int(attempt))

    async def renew(self, claim: Claim) -> bool:
        """Extend the lease. False means it was lost: another attempt owns the task now."""
        renewed = await self._renew(
            keys=[task_key(claim.task_id), LEASES],
            args=[claim.task_id, claim.token, self.settings.lease_seconds * 1000],
        )
        return bool(renewed)

    async def complete(self, claim: Claim, result_format: str, images: dict[int, bytes]) -> bool:
        """Store every size base64-encoded and mark DONE, atomically, if the claim is current."""
        sizes = sorted(images, reverse=True)
        done = await self._complete(
            keys=[
                task_key(claim.task_id),
                PROCESSING,
                LEASES,
                *(image_key(claim.task_id, s) for s in sizes),
            ],
            args=[claim.task_id, claim.token, result_format, *(images[s] for s in sizes)],
        )
        return bool(done)

    async def fail(self, claim: Claim, reason: str) -> bool:
        """Permanent failure: FAILED now, with ``reason``, if the claim is current."""
        return await self._release_claim(claim, reason, fatal=True) == "failed"

    async def retry(self, claim: Claim, reason: str) -> str:
        """Transient failure: back to ``waiting``, or FAILED at the attempt cap.

        Returns ``requeued``, ``failed`` or ``stale`` (the claim was no longer current).
        """
        return await self._release_claim(claim, reason, fatal=False)

    async def _release_claim(self, claim: Claim, reason: str, *, fatal: bool) -> str:
        outcome: bytes = await self._release(
            keys=[task_key(claim.task_id), PROCESSING, LEASES, WAITING],
            args=[claim.task_id, claim.token, reason, int(fatal), self.settings.max_attempts],
        )
        return outcome.decode()

    async def recover(self, batch: int = 500) -> RecoveryReport:
        """One recovery pass: adopt unleased ids, then re-queue or FAIL every expired lease."""
        report = RecoveryReport()
        lease_ms = self.settings.lease_seconds * 1000
        for raw in await self.redis.lrange(PROCESSING, 0, -1):
            task_id = _text(raw)
            if await self.redis.zscore(LEASES, task_id) is None:
                outcome = await self._adopt(
                    keys=[task_key(task_id), PROCESSING, LEASES], args=[task_id, lease_ms]
                )
                if outcome == b"adopted":
                    report.adopted.append(task_id)
        while True:
            expired: list[bytes] = await self._expired(keys=[LEASES], args=[batch])
            if not expired:
                return report
            for raw in expired:
                task_id = raw.decode()
                outcome = await self._recover(
                    keys=[task_key(task_id), PROCESSING, LEASES, WAITING],
                    args=[task_id, self.settings.max_attempts],
                )
                if outcome == b"requeued":
                    report.requeued.append(task_id)
                elif outcome == b"failed":
                    report.failed.append(task_id)
            if len(expired) < batch:
                return report

    # --- introspection --------------------------------------------------------------------------

    async def queue_lengths(self) -> tuple[int, int]:
        """(waiting, in flight)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(WAITING)
            pipe.zcard(LEASES)
            waiting, leased = await pipe.execute()
        return int(waiting), int(leased)

    async def ping(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()


@asynccontextmanager
async def open_store(settings: Settings, *, socket_timeout: float = 5.0) -> AsyncIterator[Store]:
    store = Store(Store.client_for(settings.redis_url, socket_timeout=socket_timeout), settings)
    try:
        yield store
    finally:
        await store.close()


def unavailable(exc: BaseException) -> ServiceUnavailable:
    """The one message clients see when Redis cannot be reached."""
    return ServiceUnavailable(f"the task store (Redis) is unavailable: {exc.__class__.__name__}")


__all__ = [
    "LEASES",
    "PROCESSING",
    "REDIS_DOWN",
    "WAITING",
    "Store",
    "image_key",
    "open_store",
    "task_key",
]
