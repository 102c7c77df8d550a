"""All of resizer's Redis access: the key schema, the task records and the reliable queue.

Key schema
==========
Every key carries the hash tag ``{resizer}``, so on Redis Cluster they all live in one slot and
every multi-key script below stays legal. ``<id>`` is a task id (UUID4 hex); ``<sha>`` is the
SHA-256 of an original image's bytes: images are stored once per content, whatever the number
of tasks that submitted them.

===================================  ======  ===================================================
key                                  type    what
===================================  ======  ===================================================
``{resizer}:task:<id>``              hash    status, created_at/updated_at (ms, Redis clock),
                                             attempts, error, token (of the current claim),
                                             worker, digest (``<sha>``), format/width/height of
                                             the original, result_format
``{resizer}:blob:<sha>``             string  the original image, exactly the submitted bytes
``{resizer}:blob:<sha>:result``      hash    format, and ``64`` / ``32``: the resized images,
                                             base64 (as the task statement asks)
``{resizer}:blob:<sha>:tasks``       set     ids of the tasks waiting for the first processing
                                             of these bytes: one of them is queued, the others
                                             joined it and finish with it
``{resizer}:waiting``                list    ids waiting; LPUSH in, BLMOVE out from the right
``{resizer}:processing``             list    ids a worker has taken (the reliable-queue list)
``{resizer}:leases``                 zset    id -> lease deadline, ms on the Redis clock
``{resizer}:finished``               pubsub  channel: the id of every task that became DONE or
                                             FAILED (wakes long-polling clients)
===================================  ======  ===================================================

Retention: a task's hash expires ``RESIZER_TTL_SECONDS`` after its creation, or later if tasks
for the same bytes joined it while it waited: it lives as long as they do, because it is the one
in the queue and finishes them. A blob and its results live as long as the longest-lived task
that uses them: every new task for the same bytes extends them to its own expiry (never shortens
them). The three queue keys are shared and never
expire; an id whose task has expired is dropped when a worker or recovery meets it.

Deduplication: ``create`` finds the blob by digest. If its results exist, the new task is DONE at
once (nothing queued, nothing resized); if a task for the same bytes is in flight, the new task
joins it (``:tasks``) and is completed or failed together with it; otherwise it is queued.

State machine
=============
::

    create ──> WAITING ──claim──> IN_PROGRESS ──complete──> DONE
      │           ^                   │  │
      │           └──retry/recover────┘  └──fail / attempt cap──> FAILED
      └──(same bytes already resized)──> DONE

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
  and every task that joined it are DONE with every size. There is no half-DONE task.
- a worker presumed dead that wakes up: its token no longer matches, so its renewals, results
  and failures are refused; the newer attempt's results stand.

The scripts that complete or fail a task also reach the hashes of the tasks that joined it (their
ids are read from ``:tasks``, so those keys are not in KEYS). They share the hash tag, hence the
slot, so this is safe on Redis Cluster too.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import Any, Final

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from resizer.config import Settings
from resizer.errors import ServiceUnavailable
from resizer.models import (
    DURATION_BUCKETS,
    Claim,
    ImageInfo,
    ImageSize,
    QueueStats,
    RecoveryReport,
    Task,
    TaskStatus,
    Upload,
)

PREFIX: Final = "{resizer}"
WAITING: Final = f"{PREFIX}:waiting"
PROCESSING: Final = f"{PREFIX}:processing"
LEASES: Final = f"{PREFIX}:leases"
FINISHED: Final = f"{PREFIX}:finished"
STATS: Final = f"{PREFIX}:stats"
DURATIONS: Final = f"{PREFIX}:stats:duration"
POOL_SIZE: Final = 32
"""Redis connections per process, at most (the pub/sub listener takes one more)."""

# Errors that mean "Redis is not there right now", as opposed to a bug in a command.
REDIS_DOWN: Final = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)

# Redis at its maxmemory (noeviction) refused a write: nothing was written; retry later. A plain
# command raises OutOfMemoryError; a write refused inside a script comes back as a ResponseError
# naming the OOM, which the Store's scripts turn into an OutOfMemoryError too (_Script).
REDIS_FULL: Final = (redis.exceptions.OutOfMemoryError,)


def task_key(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}"


def blob_key(digest: str) -> str:
    return f"{PREFIX}:blob:{digest}"


def result_key(digest: str) -> str:
    return f"{PREFIX}:blob:{digest}:result"


def joined_key(digest: str) -> str:
    return f"{PREFIX}:blob:{digest}:tasks"


# --- Lua --------------------------------------------------------------------------------------
# Each script declares the keys it is given in KEYS (Redis Cluster routes by them). `now` is
# read from the server inside the script: Redis >= 5 replicates script effects, so TIME is fine.

_LUA_BUCKETS = ", ".join(f"'{b}'" for b in DURATION_BUCKETS)  # field names as Python writes them
_PRELUDE = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local TASK_PREFIX = '{PREFIX}:task:'
local FINISHED = '{FINISHED}'
local BUCKETS = {{{_LUA_BUCKETS}}}
local STATS = '{STATS}'
local function count(name, n) redis.call('HINCRBY', STATS, name, n or 1) end
-- Make `key` live at least `ttl` ms from now; never shorten it.
local function keep(key, ttl)
  local left = redis.call('PTTL', key)
  if left == -1 or (left >= 0 and left < ttl) then redis.call('PEXPIRE', key, ttl) end
end
-- Finish every task that joined this blob (and `id` itself), then forget the set.
-- Returns how many tasks it finished.
local function finish_all(joined, id, fields)
  local ids = redis.call('SMEMBERS', joined)
  table.insert(ids, id)
  local finished = 0
  for _, member in ipairs(ids) do
    local key = TASK_PREFIX .. member
    local status = redis.call('HGET', key, 'status')
    if status and status ~= 'DONE' and status ~= 'FAILED' then
      redis.call('HSET', key, unpack(fields))
      redis.call('HDEL', key, 'token')
      redis.call('PUBLISH', FINISHED, member)
      finished = finished + 1
    end
  end
  redis.call('DEL', joined)
  return finished
end
"""

# KEYS: task, blob, result, joined, waiting
# ARGV: id, ttl_ms, format, width, height, image bytes, digest
# Returns {now, outcome}: outcome is 'queued', 'joined' (a task for the same bytes is in
# flight) or 'done' (the same bytes were already resized: nothing to do).
_CREATE = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then
  keep(KEYS[2], ttl)
else
  redis.call('SET', KEYS[2], ARGV[6], 'PX', ttl)
end
redis.call('HSET', KEYS[1], 'status', 'WAITING', 'created_at', now, 'updated_at', now,
           'attempts', 0, 'format', ARGV[3], 'width', ARGV[4], 'height', ARGV[5],
           'digest', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ttl)
count('created')
local result_format = redis.call('HGET', KEYS[3], 'format')
if result_format then
  keep(KEYS[3], ttl)
  redis.call('HSET', KEYS[1], 'status', 'DONE', 'result_format', result_format)
  count('deduplicated')
  count('done')
  return {now, 'done'}
end
local in_flight = redis.call('SMEMBERS', KEYS[4])
redis.call('SADD', KEYS[4], ARGV[1])
keep(KEYS[4], ttl)
if #in_flight > 0 then
  -- Only the queued one of these will ever reach a worker, and it finishes the others: it must
  -- not expire while they wait, or they would wait until their own expiry for nothing. The set
  -- holds the unfinished tasks for these bytes, a few ids, so every one of them is kept.
  for _, member in ipairs(in_flight) do keep(TASK_PREFIX .. member, ttl) end
  count('deduplicated')
  return {now, 'joined'}
end
redis.call('LPUSH', KEYS[5], ARGV[1])
return {now, 'queued'}
"""
)

# KEYS: task, processing, leases   ARGV: id, token, lease_ms, worker
# Returns {attempt, digest}, or 0 when the id is not claimable (expired task, or a stale
# duplicate delivery); then one copy of the id is removed from `processing`.
_CLAIM = (
    _PRELUDE
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
return {attempt, redis.call('HGET', KEYS[1], 'digest')}
"""
)

# KEYS: task, leases   ARGV: id, token, lease_ms      Returns 1 if renewed, 0 if the lease is lost.
_RENEW = (
    _PRELUDE
    + """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

# KEYS: task, processing, leases, blob, result, joined, durations
# ARGV: id, token, result_format, seconds, size, image, size, image...
# Results and DONE (for the task and every task that joined it) in one step, only for the
# holder of the current token; the processing time goes into the shared histogram.
_COMPLETE = (
    _PRELUDE
    + """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[5], 'format', ARGV[3], unpack(ARGV, 5))
local ttl = redis.call('PTTL', KEYS[4])
if ttl > 0 then redis.call('PEXPIRE', KEYS[5], ttl) end
redis.call('LREM', KEYS[2], 1, ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local done = {'status', 'DONE', 'result_format', ARGV[3], 'updated_at', now}
count('done', finish_all(KEYS[6], ARGV[1], done))
local seconds = tonumber(ARGV[4])
for _, le in ipairs(BUCKETS) do
  if seconds <= tonumber(le) then redis.call('HINCRBY', KEYS[7], le, 1) end
end
redis.call('HINCRBY', KEYS[7], '+Inf', 1)
redis.call('HINCRBYFLOAT', KEYS[7], 'sum', seconds)
return 1
"""
)

# Shared tail of the scripts that take a task away from its worker: re-queue it, or FAIL it (and
# the tasks that joined it) when `fatal` or at the attempt cap. Expects KEYS: task, processing,
# leases, waiting, joined; locals id, reason, fatal, max_attempts. Returns 'requeued'/'failed'.
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
  local failed = {'status', 'FAILED', 'error', message, 'updated_at', now}
  count('failed', finish_all(KEYS[5], id, failed))
  if not fatal then count('attempt_cap_failures') end
  return 'failed'
end
count(requeue_counter)
redis.call('HSET', KEYS[1], 'status', 'WAITING', 'updated_at', now)
if not redis.call('LPOS', KEYS[4], id) then
  redis.call('LPUSH', KEYS[4], id)
end
return 'requeued'
"""

# KEYS: task, processing, leases, waiting, joined   ARGV: id, token, reason, fatal, max_attempts
# A worker gives a task back: a permanent failure (fatal) or a transient one (retry).
_RELEASE = (
    _PRELUDE
    + """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then return 'stale' end
local id, reason, fatal, max_attempts = ARGV[1], ARGV[3], ARGV[4] == '1', tonumber(ARGV[5])
local requeue_counter = 'retried'
"""
    + _RELEASE_TAIL
)

# KEYS: leases   ARGV: limit      The ids whose lease has expired, on the Redis clock.
_EXPIRED = (
    _PRELUDE
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
"""
)

# KEYS: task, processing, leases, waiting, joined   ARGV: id, max_attempts
# Re-checks expiry inside the script: a lease renewed, or a task recovered by a concurrent
# recovery, since the id was listed is left alone. So recoveries may race each other and live
# workers freely.
_RECOVER = (
    _PRELUDE
    + """
local deadline = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not deadline or tonumber(deadline) > now then return 'skipped' end
local id, fatal, max_attempts = ARGV[1], false, tonumber(ARGV[2])
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'DONE' or status == 'FAILED' then
  redis.call('ZREM', KEYS[3], id)
  redis.call('LREM', KEYS[2], 0, id)
  return 'dropped'
end
local reason = 'the worker stopped renewing its lease (crashed, killed or stalled)'
local requeue_counter = 'recovered'
"""
    + _RELEASE_TAIL
)

# KEYS: task, processing, leases   ARGV: id, lease_ms
# An id in `processing` without a lease: a worker took it with BLMOVE and has not (yet) run the
# claim script. Give it one lease period; the claim, if it comes, replaces this deadline.
_ADOPT = (
    _PRELUDE
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


def _ms_to_datetime(ms: bytes | int) -> datetime:
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
        digest=fields[b"digest"].decode(),
        error=_decode(fields.get(b"error")),
        result_format=_decode(fields.get(b"result_format")),
    )


def new_task_id() -> str:
    return uuid.uuid4().hex


class _Script:
    """A registered Lua script whose refusal for lack of memory raises OutOfMemoryError."""

    def __init__(self, script: Any) -> None:
        self._script = script

    async def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        try:
            return await self._script(keys=keys, args=args)
        except redis.exceptions.ResponseError as exc:
            if isinstance(exc, REDIS_FULL) or "-OOM " not in str(exc):
                raise
            raise redis.exceptions.OutOfMemoryError(str(exc)) from exc


class Store:
    """Typed operations on Redis. One instance per process; safe to share between tasks."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._create = _Script(client.register_script(_CREATE))
        self._claim = _Script(client.register_script(_CLAIM))
        self._renew = _Script(client.register_script(_RENEW))
        self._complete = _Script(client.register_script(_COMPLETE))
        self._release = _Script(client.register_script(_RELEASE))
        self._expired = _Script(client.register_script(_EXPIRED))
        self._recover = _Script(client.register_script(_RECOVER))
        self._adopt = _Script(client.register_script(_ADOPT))

    @staticmethod
    def client_for(url: str, *, socket_timeout: float = 5.0) -> aioredis.Redis:
        """A client whose every call is bounded in time, so an outage is an error, not a hang.

        The pool is bounded too: a burst of requests queues for a connection (up to
        ``socket_timeout``) instead of opening hundreds of sockets to Redis at once.
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

    # --- tasks ----------------------------------------------------------------------------------

    async def create_task(self, upload: Upload) -> Task:
        """Store the original (once per content) and queue the task, atomically.

        A task for bytes that were already resized is DONE at once; one for bytes being
        resized right now joins that work.
        """
        task_id = new_task_id()
        digest = upload.digest
        now_ms, outcome = await self._create(
            keys=[
                task_key(task_id),
                blob_key(digest),
                result_key(digest),
                joined_key(digest),
                WAITING,
            ],
            args=[
                task_id,
                self.settings.ttl_seconds * 1000,
                upload.info.format,
                upload.info.width,
                upload.info.height,
                upload.data,
                digest,
            ],
        )
        # Only `create` turns a task DONE without a worker: when these bytes were resized before.
        status = TaskStatus.DONE if _text(outcome) == "done" else TaskStatus.WAITING
        now = _ms_to_datetime(now_ms)
        return Task(task_id, status, now, now, 0, upload.info, digest)

    async def get_task(self, task_id: str) -> Task | None:
        fields = await self.redis.hgetall(task_key(task_id))
        return _task_from_hash(task_id, fields)

    async def get_task_and_image(
        self, task_id: str, size: ImageSize
    ) -> tuple[Task | None, bytes | None]:
        """The task and one of its images.

        ``original`` comes back as the raw bytes; resized sizes as base64 (as stored), and only
        once the task is DONE.
        """
        task = await self.get_task(task_id)
        if task is None:
            return None, None
        if size is ImageSize.ORIGINAL:
            image = await self.redis.get(blob_key(task.digest))
        elif task.status is TaskStatus.DONE:
            image = await self.redis.hget(result_key(task.digest), size.value)
        else:
            image = None
        return task, image.encode() if isinstance(image, str) else image

    async def get_original(self, claim: Claim) -> bytes | None:
        data = await self.redis.get(blob_key(claim.digest))
        return data.encode() if isinstance(data, str) else data

    # --- the queue ------------------------------------------------------------------------------

    async def take(self, timeout: float) -> str | None:
        """Block until a task id can be moved from ``waiting`` to ``processing`` (or time out)."""
        moved = await self.redis.blmove(WAITING, PROCESSING, timeout, src="RIGHT", dest="LEFT")  # type: ignore[arg-type]
        return None if moved is None else _text(moved)

    async def claim(self, task_id: str, worker: str) -> Claim | None:
        """Turn a taken id into a leased claim: IN_PROGRESS, attempt counted, token issued."""
        token = secrets.token_hex(16)
        claimed = await self._claim(
            keys=[task_key(task_id), PROCESSING, LEASES],
            args=[task_id, token, self.settings.lease_seconds * 1000, worker],
        )
        if not claimed:
            return None
        attempt, digest = claimed
        return Claim(task_id=task_id, token=token, attempt=int(attempt), digest=_text(digest))

    async def renew(self, claim: Claim) -> bool:
        """Extend the lease. False means it was lost: another attempt owns the task now."""
        renewed = await self._renew(
            keys=[task_key(claim.task_id), LEASES],
            args=[claim.task_id, claim.token, self.settings.lease_seconds * 1000],
        )
        return bool(renewed)

    async def complete(
        self,
        claim: Claim,
        result_format: str,
        images: dict[int, bytes],
        seconds: float = 0.0,
    ) -> bool:
        """Store every size (base64) and mark DONE, atomically, if the claim is current.

        Every task that joined this one (same bytes) becomes DONE in the same step.
        ``seconds`` (the processing time) goes into the shared duration histogram.
        """
        sizes = sorted(images, reverse=True)
        done = await self._complete(
            keys=[
                task_key(claim.task_id),
                PROCESSING,
                LEASES,
                blob_key(claim.digest),
                result_key(claim.digest),
                joined_key(claim.digest),
                DURATIONS,
            ],
            args=[
                claim.task_id,
                claim.token,
                result_format,
                repr(seconds),
                *(item for s in sizes for item in (str(s), images[s])),
            ],
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
        outcome = await self._release(
            keys=[task_key(claim.task_id), PROCESSING, LEASES, WAITING, joined_key(claim.digest)],
            args=[claim.task_id, claim.token, reason, int(fatal), self.settings.max_attempts],
        )
        return _text(outcome)

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
            for raw in expired:
                task_id = _text(raw)
                # The digest never changes once a task exists, so reading it first is safe.
                digest = await self.redis.hget(task_key(task_id), "digest")
                outcome = await self._recover(
                    keys=[
                        task_key(task_id),
                        PROCESSING,
                        LEASES,
                        WAITING,
                        joined_key(_text(digest or b"")),
                    ],
                    args=[task_id, self.settings.max_attempts],
                )
                if outcome == b"requeued":
                    report.requeued.append(task_id)
                elif outcome == b"failed":
                    report.failed.append(task_id)
            if len(expired) < batch:
                return report

    # --- introspection --------------------------------------------------------------------------

    async def stats(self) -> QueueStats:
        """Counters kept by the scripts (so every worker's work is counted), and queue lengths."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(STATS)
            pipe.hgetall(DURATIONS)
            pipe.llen(WAITING)
            pipe.zcard(LEASES)
            counters, durations, waiting, leased = await pipe.execute()
        return QueueStats(
            counters={_text(k): int(v) for k, v in counters.items()},
            durations={_text(k): float(v) for k, v in durations.items()},
            waiting=int(waiting),
            in_flight=int(leased),
        )

    async def ping(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()


class Completions:
    """One shared subscription per process to ``{resizer}:finished``; wakes local waiters.

    Long-polling requests register a future for their task id; the one listener resolves them.
    No Redis connection is held per waiter. If the subscription drops, waiters are woken so they
    re-read the task (they never miss a finish by more than their own timeout).
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._stopping = False
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="resizer-completions")

    async def stop(self) -> None:
        # Not cancel(): redis-py's pub/sub read does not always honour a cancellation (it can
        # hang in its cleanup). The listener checks this flag between short socket waits.
        self._stopping = True
        if self._listener is not None:
            await asyncio.wait({self._listener}, timeout=2.0)
            self._listener.cancel()

    @asynccontextmanager
    async def watch(self, task_id: str) -> AsyncIterator[asyncio.Future[None]]:
        """A future resolved when ``task_id`` finishes. Enter it *before* re-reading the task."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, set()).add(future)
        try:
            yield future
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[task_id]

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def _wake(self, task_id: str | None) -> None:
        targets = self._waiters.values() if task_id is None else [self._waiters.get(task_id, set())]
        for waiters in list(targets):
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    async def _listen(self) -> None:
        delay = 0.1
        while not self._stopping:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(FINISHED)
                self.subscribed.set()
                delay = 0.1
                while not self._stopping:
                    # A local wait on the socket (no command is sent): it only bounds how long
                    # a stop request waits.
                    message = await pubsub.get_message(timeout=0.25)
                    if message is not None and message["type"] == "message":
                        self._wake(_text(message["data"]))
            except REDIS_DOWN:
                self.subscribed.clear()
                self._wake(None)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
            finally:
                with suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)  # type: ignore[no-untyped-call]


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
