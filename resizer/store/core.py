"""``Store``: the one Python face of Redis. Tasks, the reliable queue, and what they count.

State machine
=============
::

    create ──> WAITING ──claim──> IN_PROGRESS ──complete──> DONE
      │           ^                   │  │
      │           └──retry/recover────┘  └──fail / attempt cap──> FAILED
      ├──(same bytes already resized)──> DONE
      └──(same bytes in flight)──> joined: reads its status from the task it joined

Every arrow is one Lua script (``lua/*.lua``), so atomic: Redis runs a script to completion
before any other command. The first half of a claim is the ``BLMOVE`` that blocks until work
arrives (with several partitions, an ``LMOVE`` once a message says where); the claim script then
leases the task and hands back its original. Redis does not undo a script that fails halfway,
so each checks the types of the keys it touches before its first write (``wrong_type``, in
``lua/includes/prelude.lua``): a key of one of our names that another program wrote with
another type fails it with nothing written (``WrongType``, waited out like an outage).

With ``RESIZER_MIN_REPLICAS``, ``create_task`` and ``complete`` return only once that many
replicas hold what they wrote: a failover cannot take back a task the API acknowledged, nor a
result the worker counted.

Every script is safe to run twice: redis-py sends a command again when its reply was lost (a
socket timeout), so each script recognises its own repeat (the task id for ``create``, the
caller's token for ``claim``, ``complete`` and releases) and answers as its first run did.

What a crash at each step leaves behind, and who repairs it:

- during ``create``: nothing or everything: the client saw no 201, or the task exists and is
  queued.
- after ``BLMOVE``, before the claim: the id sits in ``processing`` with no lease. Recovery
  *adopts* it (one lease period from when it first saw it); if no claim arrives by then it goes
  back to ``waiting``. No attempt was counted.
- while IN_PROGRESS: the lease stops being renewed and expires; recovery re-queues the task, or
  FAILS it once ``attempts >= RESIZER_MAX_ATTEMPTS``.
- during ``complete``: nothing was written, or the task is DONE with every size.
- a worker presumed dead that wakes up: its token no longer matches, so its renewals, results
  and failures are refused; the newer attempt's results stand.

Scripts that find a key through another (a digest read from a task, a leader's id) build its
name from the partition's tag, passed in ARGV: it hashes to the same slot as their KEYS.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

import redis.exceptions
import structlog
from redis.typing import EncodableT, FieldT

from resizer.config import Settings
from resizer.errors import EvictingRedis
from resizer.models import (
    CLAIM_WAIT_BUCKETS,
    DURATION_BUCKETS,
    Claim,
    Failure,
    ImageInfo,
    ImageSize,
    InFlight,
    QueueInfo,
    QueueStats,
    RecoveryReport,
    Task,
    TaskStatus,
    Upload,
    WorkerRecord,
    WorkerView,
)
from resizer.store import keys
from resizer.store.completions import Signal
from resizer.store.connection import (
    REDIS_DOWN,
    REDIS_FULL,
    Client,
    WrongType,
    client_for,
    confirm_replicated,
    every_primary,
    is_cluster,
)
from resizer.store.keys import Partition
from resizer.store.scripts import Script

log = structlog.get_logger("resizer.store")

_LEADER_FIELDS = ("status", "updated_at", "error", "result_format")
_SET_BESIDE_BYTES = 1024 * 1024
"""Originals this large are written by a plain SET beside the create script, not through it."""
_CLAIM_WAIT_MS = [str(round(le * 1000)) for le in CLAIM_WAIT_BUCKETS]

RESCAN_SECONDS = 60.0
"""How often an idle worker looks into every partition although no message said there was
work: a wake-up can be lost without the subscription dropping (a cluster bus link that breaks).
Workers' recovery passes (every half lease) also note the partitions where ids wait, so this is
only the bound when they do not run; each re-scan costs one LMOVE per partition."""


class Store:
    """Typed operations on Redis. One instance per process; safe to share between tasks."""

    def __init__(self, client: Client, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self.partitions = [keys.partition(i) for i in range(settings.partitions)]
        self._cluster = is_cluster(client)
        # Sharded pub/sub is a cluster's, and needs Redis >= 7 on every primary: asked once.
        self._sharded: bool | None = None if self._cluster else False
        self._create = Script(client, "create")
        self._claim = Script(client, "claim")
        self._renew = Script(client, "renew")
        self._complete = Script(client, "complete")
        self._release = Script(client, "release")
        self._expired = Script(client, "expired")
        self._recover = Script(client, "recover")
        self._adopt = Script(client, "adopt")
        self._delete = Script(client, "delete")
        self._announce = Script(client, "announce")
        self._turn = 0
        self._work: Signal | None = None
        self._grown: list[Callable[[], None]] = []
        # Partitions that may hold waiting ids, as far as this process knows (``take``).
        self._dirty = set(range(len(self.partitions)))
        self._rescan_at = 0.0
        self._announce_at = 0.0

    @property
    def _scripts(self) -> list[Script]:
        return [
            self._create,
            self._claim,
            self._renew,
            self._complete,
            self._release,
            self._expired,
            self._recover,
            self._adopt,
            self._delete,
            self._announce,
        ]

    @property
    def finished_channels(self) -> list[str]:
        """The channels that announce finished tasks, one per partition."""
        return [part.finished for part in self.partitions]

    @property
    def work_channels(self) -> list[str]:
        """The channels that announce queued work: one, or one per partition (shard channels)."""
        return [part.work for part in self.partitions] if self._sharded else [keys.WORK_CHANNEL]

    def _wake_channel(self, part: Partition) -> str:
        # One partition needs no wake-up: workers block on its list.
        if len(self.partitions) == 1:
            return ""
        return part.work if self._sharded else keys.WORK_CHANNEL

    async def sharded_pubsub(self) -> bool:
        """Whether tasks are announced on shard channels (SPUBLISH, SSUBSCRIBE): on a Redis
        Cluster whose primaries all have them (Redis >= 7). Plain pub/sub would carry every
        message over the cluster bus to every node."""
        if self._sharded is None:
            infos = await every_primary(self.redis, "INFO", "server")
            sharded = all(_major_version(info) >= 7 for info in infos)
            if sharded:  # the scripts that announce
                self._create = Script(self.redis, "create", sharded=True)
                self._complete = Script(self.redis, "complete", sharded=True)
                self._release = Script(self.redis, "release", sharded=True)
                self._recover = Script(self.redis, "recover", sharded=True)
            self._sharded = sharded
        return self._sharded

    async def _serve_announced(self) -> None:
        """Announce this process's partition count, and serve the highest any process announced:
        a worker started with fewer partitions than the web still takes (and recovers) every
        task."""
        known = int(await self._announce(keys=[keys.PARTITIONS], args=[self.settings.partitions]))
        self._serve(known)
        self._announce_at = time.monotonic() + RESCAN_SECONDS

    def _serve(self, count: int) -> None:
        grown = False
        for index in range(len(self.partitions), min(count, keys.MAX_PARTITIONS)):
            self.partitions.append(keys.partition(index))
            self._dirty.add(index)
            grown = True
        if grown:
            if self._sharded and self._work is not None:
                self._work.resubscribe()  # the new partitions' work channels
            for callback in self._grown:
                callback()

    def on_partitions_grown(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever this process learns of more partitions (and so of more
        channels to listen to)."""
        self._grown.append(callback)

    @property
    def _original_ttl_ms(self) -> int:
        return min(self.settings.original_ttl_seconds, self.settings.ttl_seconds) * 1000

    async def _replicated(self, part: Partition) -> None:
        """With ``RESIZER_MIN_REPLICAS``, wait until that many replicas hold what was just
        written to ``part`` (else ``NotReplicated``: the caller retries, the write is safe to
        repeat)."""
        if self.settings.min_replicas > 0:
            await confirm_replicated(
                self.redis, part.stats, "replica_waits", self.settings.min_replicas
            )

    def _of_id(self, task_id: str) -> Partition | None:
        index = keys.partition_of_id(task_id)
        return None if index is None else keys.partition(index)

    def _of_digest(self, digest: str) -> Partition:
        # Placement follows this process's own setting, never what it learnt it must serve.
        return self.partitions[keys.partition_of_digest(digest, self.settings.partitions)]

    # --- tasks ----------------------------------------------------------------------------------

    async def create_task(self, upload: Upload, task_id: str | None = None) -> Task:
        """Store the original (once per content) and queue the task, atomically.

        A task for bytes that were already resized is DONE at once; one for bytes being
        resized right now joins that work. Creating the same ``task_id`` again changes nothing.
        """
        if time.monotonic() >= self._announce_at:
            await self._serve_announced()
        await self.sharded_pubsub()
        part = self._of_digest(upload.digest)
        task_id = task_id or keys.new_task_id(part.index)
        ttl_ms = self.settings.ttl_seconds * 1000
        # redis-py's cluster client runs no script inside MULTI/EXEC: there, the bytes go
        # through the script, as small ones always do.
        large = len(upload.data) >= _SET_BESIDE_BYTES and not self._cluster
        script_keys = [
            part.task(task_id),
            part.blob(upload.digest),
            part.content(upload.digest),
            part.waiting,
            part.stats,
        ]
        args = [
            task_id,
            ttl_ms,
            upload.info.format,
            upload.info.width,
            upload.info.height,
            b"" if large else upload.data,
            upload.digest,
            part.tag,
            self._wake_channel(part),
            self._original_ttl_ms,
        ]
        if large:
            blob = part.blob(upload.digest)
            reply = await self._create_beside(blob, upload.data, ttl_ms, script_keys, args)
        else:
            reply = await self._create(keys=script_keys, args=args)
        created_ms, outcome = reply
        await self._replicated(part)
        # Only `create` turns a task DONE without a worker: when these bytes were resized before.
        status = TaskStatus.DONE if _text(outcome) == "done" else TaskStatus.WAITING
        created = _ms_to_datetime(created_ms)
        return Task(task_id, status, created, created, 0, upload.info, upload.digest)

    async def _create_beside(
        self, blob: str, data: bytes, ttl_ms: int, script_keys: list[str], args: list[Any]
    ) -> Any:
        """The create script with the original written beside it, by a plain SET in the same
        MULTI/EXEC: Redis reads a large value over several turns of its event loop and stores
        the buffer it read into, where a script's argument is copied twice while Redis serves
        no one else. The script then finds the original there, as it finds one stored before."""
        for attempt in (1, 2):
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.set(blob, data, px=ttl_ms, nx=True)
                    pipe.evalsha(self._create.sha, len(script_keys), *script_keys, *args)
                    _, reply = await pipe.execute()
                    return reply
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                await self._create.load()  # Redis restarted: the SET ran, and runs again as a no-op
        raise AssertionError("unreachable")

    async def get_task(self, task_id: str) -> Task | None:
        """The task as clients see it: a task that joined another has that one's status."""
        part = self._of_id(task_id)
        if part is None:
            return None
        fields = await self.redis.hgetall(part.task(task_id))
        if not fields or b"deleted" in fields:
            return None
        leader = fields.get(b"leader")
        if leader is not None and fields[b"status"] not in (b"DONE", b"FAILED"):
            # The leader outlives every task that joined it (create keeps it alive).
            values = await self.redis.hmget(part.task(_text(leader)), _LEADER_FIELDS)
            if values[0] is not None:
                fields.update(
                    {f.encode(): v for f, v in zip(_LEADER_FIELDS, values, strict=True) if v}
                )
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
        part = self._part(task.id)
        image: bytes | str | None = None
        if size is ImageSize.ORIGINAL:
            image = await self.redis.get(part.blob(task.digest))
        elif task.status is TaskStatus.DONE:
            image = await self.redis.hget(part.content(task.digest), size.value)
        return task, image.encode() if isinstance(image, str) else image

    def _part(self, task_id: str) -> Partition:
        """The partition of an id already known to be ours (read from Redis, or claimed)."""
        part = self._of_id(task_id)
        assert part is not None, f"not a task id: {task_id!r}"
        return part

    async def original_length(self, task: Task) -> int:
        """The size of the task's original in bytes; 0 once its retention ran out."""
        return int(await self.redis.strlen(self._part(task.id).blob(task.digest)))

    async def read_original(self, task: Task, start: int, stop: int) -> bytes:
        """Bytes ``start`` to ``stop`` (excluded) of the original, so a large one is sent in
        pieces without being held whole; fewer if its retention ran out meanwhile."""
        data = await self.redis.getrange(self._part(task.id).blob(task.digest), start, stop - 1)
        return data.encode() if isinstance(data, str) else bytes(data)

    async def delete_task(self, task_id: str) -> bool:
        """Delete a task; its images go too unless another task was created for them.

        False when there was no such task.
        """
        part = self._of_id(task_id)
        if part is None:
            return False
        deleted = await self._delete(keys=[part.task(task_id)], args=[task_id, part.tag])
        return bool(deleted)

    # --- the queue ------------------------------------------------------------------------------

    async def take(self, timeout: float) -> str | None:
        """Block until a task id can be moved from ``waiting`` to ``processing`` (or time out)."""
        if time.monotonic() >= self._announce_at:
            await self._serve_announced()
        if len(self.partitions) == 1:
            part = self.partitions[0]
            with _naming(part.waiting, part.processing):
                moved = await self.redis.blmove(
                    part.waiting,
                    part.processing,
                    timeout,  # type: ignore[arg-type]  # BLMOVE takes fractions of a second
                    src="RIGHT",
                    dest="LEFT",
                )
            return None if moved is None else await self._id_or_drop(part.processing, moved)
        return await self._take_from_any(timeout)

    async def _id_or_drop(self, key: str, raw: bytes | str, *, scored: bool = False) -> str | None:
        """``raw``, read from the list ``key`` (the sorted set, if ``scored``), as a task id;
        None, and the entry dropped, for bytes that cannot be one (not UTF-8: another program's
        push). Left there, they would fail every take and recovery pass that read them."""
        if isinstance(raw, str):
            return raw
        try:
            return raw.decode()
        except UnicodeDecodeError:
            if scored:
                await self.redis.zrem(key, raw)
            else:
                await self.redis.lrem(key, 0, raw)  # type: ignore[arg-type]  # bytes too
            log.warning("queue.entry_dropped", key=key, entry=repr(raw)[:80])
            return None

    async def _take_from_any(self, timeout: float) -> str | None:
        # One blocking pop cannot watch several partitions (BLMOVE takes one source), so idle
        # workers wait on a pub/sub signal: `create` (and every re-queue) publishes the
        # partition it queued into. This process keeps the set of partitions that may hold
        # work: a message adds its partition, an LMOVE that finds nothing removes it. A take
        # looks at them from a different first partition each time, so none starves.
        if self._work is None:
            self._work = Signal(self.redis, lambda: self.work_channels, self.sharded_pubsub)
            await self._work.start()
        deadline = time.monotonic() + timeout
        self._turn += 1
        while True:
            self._note_signals()
            count = len(self.partitions)
            start = self._turn % count
            for index in sorted(self._dirty, key=lambda i: (i - start) % count):
                part = self.partitions[index]
                with _naming(part.waiting, part.processing):
                    moved = await self.redis.lmove(part.waiting, part.processing, "RIGHT", "LEFT")
                if moved is not None:
                    return await self._id_or_drop(part.processing, moved)
                self._dirty.discard(index)
                # A message read while that LMOVE was in flight may be about a task queued
                # after it ran: its partition is noted again, not lost.
                self._note_signals()
            if self._dirty:
                continue
            left = min(deadline, self._rescan_at) - time.monotonic()
            if left > 0 and await self._work.wait(left):
                continue
            if time.monotonic() >= deadline:
                return None

    def _note_signals(self) -> None:
        """Add the partitions named by the messages read since last time (all of them after a
        dropped subscription, or when the safety re-scan is due) to the ones to look into."""
        assert self._work is not None
        tags, gap = self._work.drain()
        now = time.monotonic()
        if gap or now >= self._rescan_at:
            self._dirty.update(range(len(self.partitions)))
            self._rescan_at = now + RESCAN_SECONDS
        else:
            found = [i for i in map(keys.partition_of_tag, tags) if i is not None]
            if found:
                self._serve(max(found) + 1)
            self._dirty.update(found)

    async def claim(self, task_id: str, worker: str, token: str | None = None) -> Claim | None:
        """Turn a taken id into a leased claim: IN_PROGRESS, attempt counted, token issued.

        The claim carries the original image (None if its retention expired). Claiming again
        with the same ``token`` returns the same claim, without counting another attempt.
        """
        part = self._of_id(task_id)
        if part is None:
            return None
        token = token or secrets.token_hex(16)
        claimed = await self._claim(
            keys=[part.task(task_id), part.processing, part.leases, part.claim_waits],
            args=[
                task_id,
                token,
                self.settings.lease_seconds * 1000,
                worker,
                part.tag,
                *_CLAIM_WAIT_MS,
            ],
        )
        if not claimed:
            return None
        attempt, digest, original, *large = claimed
        if large:  # too large to come through the script: read it as it is stored
            original = await self.redis.get(part.blob(_text(digest)))
        return Claim(
            task_id=task_id,
            token=token,
            attempt=int(attempt),
            digest=_text(digest),
            original=original or None,
        )

    async def renew(self, claim: Claim) -> bool:
        """Extend the lease. False means it was lost: another attempt owns the task now."""
        part = self._part(claim.task_id)
        renewed = await self._renew(
            keys=[part.task(claim.task_id), part.leases],
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

        Every task that joined this one (same bytes) is DONE with it. ``seconds`` (the
        processing time) goes into the shared duration histogram.
        """
        await self.sharded_pubsub()
        part = self._part(claim.task_id)
        sizes = sorted(images, reverse=True)
        bucket = next((str(le) for le in DURATION_BUCKETS if seconds <= le), "+Inf")
        done = await self._complete(
            keys=[
                part.task(claim.task_id),
                part.processing,
                part.leases,
                part.content(claim.digest),
                part.stats,
                part.durations,
                part.finished,
                part.blob(claim.digest),
            ],
            args=[
                claim.task_id,
                claim.token,
                result_format,
                bucket,
                repr(seconds),
                self._original_ttl_ms,
                *(item for s in sizes for item in (str(s), images[s])),
            ],
        )
        if done:
            await self._replicated(part)
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
        await self.sharded_pubsub()
        part = self._part(claim.task_id)
        outcome = await self._release(
            keys=[
                part.task(claim.task_id),
                part.processing,
                part.leases,
                part.waiting,
                part.content(claim.digest),
                part.blob(claim.digest),
                part.stats,
                part.failures,
                part.finished,
            ],
            args=[
                claim.task_id,
                claim.token,
                reason,
                int(fatal),
                self.settings.max_attempts,
                self.settings.failed_ttl_seconds * 1000,
                self._wake_channel(part),
                part.tag,
            ],
        )
        return _text(outcome)

    async def recover(self, batch: int = 500) -> RecoveryReport:
        """One recovery pass over every partition: adopt unleased ids, then re-queue or FAIL
        every expired lease."""
        report = RecoveryReport()
        await self._serve_announced()
        for part in self.partitions:
            await self._recover_partition(part, batch, report)
        return report

    async def _recover_partition(self, part: Partition, batch: int, report: RecoveryReport) -> None:
        await self.sharded_pubsub()
        lease_ms = self.settings.lease_seconds * 1000
        expired, unleased, waiting = await self._expired(
            keys=[part.leases, part.processing, part.waiting], args=[batch]
        )
        if int(waiting) > 0:
            # The pass doubles as this process's safety re-scan (``take``): ids wait here.
            self._dirty.add(part.index)
        for raw in unleased:
            task_id = await self._id_or_drop(part.processing, raw)
            if task_id is None:
                continue
            outcome = await self._adopt(
                keys=[part.task(task_id), part.processing, part.leases],
                args=[task_id, lease_ms],
            )
            if outcome == b"adopted":
                report.adopted.append(task_id)
        while True:
            for raw in expired:
                task_id = await self._id_or_drop(part.leases, raw, scored=True)
                if task_id is None:
                    continue
                try:
                    outcome = await self._recover_task(part, task_id)
                except redis.exceptions.ResponseError as exc:
                    if isinstance(exc, REDIS_DOWN + REDIS_FULL):
                        raise
                    # One task's record must not stop the pass (nor the worker running it):
                    # the others are recovered, and this one is reported, pass after pass.
                    report.unrecoverable[task_id] = str(exc)
                    continue
                if outcome == "requeued":
                    report.requeued.append(task_id)
                elif outcome == "failed":
                    report.failed.append(task_id)
            # A whole batch refused would come back as the next batch: the pass ends here.
            if len(expired) < batch or all(_text(raw) in report.unrecoverable for raw in expired):
                return
            expired, _, _ = await self._expired(
                keys=[part.leases, part.processing, part.waiting], args=[batch]
            )

    async def _recover_task(self, part: Partition, task_id: str) -> str:
        """Re-queue or FAIL one task whose lease expired: 'requeued', 'failed', 'dropped' or
        'skipped' (recover.lua)."""
        return _text(
            await self._recover(
                keys=[
                    part.task(task_id),
                    part.processing,
                    part.leases,
                    part.waiting,
                    part.stats,
                    part.failures,
                    part.finished,
                ],
                args=[
                    task_id,
                    self.settings.max_attempts,
                    self.settings.failed_ttl_seconds * 1000,
                    part.tag,
                    self._wake_channel(part),
                ],
            )
        )

    # --- introspection --------------------------------------------------------------------------

    async def stats(self) -> QueueStats:
        """Counters kept by the scripts (so every worker's work is counted), histograms, queue
        lengths, the oldest waiting task's age and the most overdue lease, over every
        partition."""
        counters: dict[str, int] = {}
        durations: dict[str, float] = {}
        claim_waits: dict[str, float] = {}
        waiting = in_flight = 0
        oldest: list[int] = []  # each partition's oldest waiting task's creation, ms
        due: list[int] = []  # each partition's first lease deadline, ms
        await self._serve_announced()
        for part in self.partitions:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(part.stats)
                pipe.hgetall(part.durations)
                pipe.hgetall(part.claim_waits)
                pipe.llen(part.waiting)
                pipe.zcard(part.leases)
                pipe.lindex(part.waiting, -1)  # the next one out: the oldest
                pipe.zrange(part.leases, 0, 0, withscores=True)  # the lease due first
                found = await pipe.execute()
            _add(counters, found[0], int)
            _add(durations, found[1], float)
            _add(claim_waits, {_claim_wait_label(k): v for k, v in found[2].items()}, float)
            waiting += int(found[3])
            in_flight += int(found[4])
            if found[5] is not None:
                created = await self.redis.hget(part.task(_text(found[5])), "created_at")
                if (created_ms := _digits(created)) is not None:  # unknown if edited by hand
                    oldest.append(created_ms)
            due.extend(int(deadline) for _, deadline in found[6])
        now = await self._now_ms() if oldest or due else 0
        return QueueStats(
            counters=counters,
            durations=durations,
            waiting=waiting,
            in_flight=in_flight,
            claim_waits=claim_waits,
            oldest_waiting_seconds=max(0.0, (now - min(oldest)) / 1000) if oldest else 0.0,
            lease_overdue_seconds=max(0.0, (now - min(due)) / 1000) if due else 0.0,
        )

    async def _now_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # --- workers and the operator's view ---------------------------------------------------------

    async def heartbeat_worker(self, record: WorkerRecord, ttl_seconds: float) -> None:
        """Keep ``record`` in the store for ``ttl_seconds`` more (a worker's heartbeat)."""
        key = keys.worker_key(record.name)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=_worker_fields(record))
            pipe.pexpire(key, int(ttl_seconds * 1000))
            pipe.zadd(keys.WORKERS, {record.name: int(record.seen_at.timestamp() * 1000)})
            await pipe.execute()

    async def info(self, failures: int = 10) -> QueueInfo:
        """The queue as an operator sees it: lengths, tasks in flight, workers, failures."""
        stats = await self.stats()
        now = _ms_to_datetime(await self._now_ms())
        in_flight: list[InFlight] = []
        taken = 0
        recent: list[Failure] = []
        for part in self.partitions:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.lrange(part.processing, 0, -1)
                pipe.zrange(part.leases, 0, -1)
                pipe.lrange(part.failures, 0, failures - 1)
                processing, leased, failed = await pipe.execute()
            taken += len(set(processing) - set(leased))
            async with self.redis.pipeline(transaction=False) as pipe:
                for raw in leased:
                    pipe.hmget(part.task(_text(raw)), "worker", "attempts", "updated_at")
                details = await pipe.execute()
            for raw, (worker, attempts, updated) in zip(leased, details, strict=True):
                if updated is None:
                    continue  # expired or deleted meanwhile
                # A record edited by hand is shown as far as it can be read: the operator's
                # view is most needed when something is wrong.
                since = _digits(updated)
                in_flight.append(
                    InFlight(
                        task_id=_text(raw),
                        worker=_text(worker or b"?"),
                        attempt=_digits(attempts) or 0,
                        since=now if since is None else _ms_to_datetime(since),
                    )
                )
            for entry in failed:
                fields = _text(entry).split("\t", 2)
                if len(fields) == 3 and (at := _digits(fields[1])) is not None:
                    recent.append(
                        Failure(task_id=fields[0], at=_ms_to_datetime(at), error=fields[2])
                    )
        recent.sort(key=lambda f: f.at, reverse=True)
        holding = {f.worker: f.task_id for f in in_flight}
        workers = [
            WorkerView(record=record, task_id=holding.get(record.name))
            for record in await self._workers(now)
        ]
        return QueueInfo(
            at=now,
            stats=stats,
            taken_unclaimed=taken,
            in_flight=sorted(in_flight, key=lambda f: f.since),
            workers=workers,
            failures=recent[:failures],
        )

    async def _workers(self, now: datetime) -> list[WorkerRecord]:
        found_names: list[bytes] = await self.redis.zrange(keys.WORKERS, 0, -1)  # type: ignore[assignment]
        names = [_text(n) for n in found_names]
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(keys.worker_key(name))
            found = await pipe.execute()
        gone = [name for name, fields in zip(names, found, strict=True) if not fields]
        if gone:
            await self.redis.zrem(keys.WORKERS, *gone)  # their records expired: they stopped
        return [record for fields in found if fields and (record := _worker_or_none(fields))]

    async def ping(self) -> None:
        await self.redis.ping()

    async def load_scripts(self) -> None:
        """Load every script into Redis, so no request pays for a script's first call."""
        await self.sharded_pubsub()
        for script in self._scripts:
            await script.load()

    async def check_memory_policy(self) -> None:
        """Refuse a Redis that may evict keys: queued tasks would vanish without a trace.

        Raises EvictingRedis; logs a warning where the server does not let us read its
        configuration (some managed services refuse CONFIG GET).
        """
        try:
            configs = await every_primary(self.redis, "CONFIG GET", "maxmemory-policy")
        except redis.exceptions.ResponseError as exc:
            log.warning("redis.policy_unchecked", error=str(exc), setting="maxmemory-policy")
            return
        for config in configs:  # one per primary: on a cluster, each one holds tasks
            policy = _text(next(iter(config.values()), None) or b"noeviction")
            if policy != "noeviction":
                raise EvictingRedis(
                    f"Redis has maxmemory-policy {policy}: under memory pressure it would drop "
                    "queued tasks; set maxmemory-policy noeviction"
                )

    async def close(self) -> None:
        if self._work is not None:
            await self._work.stop()
        await self.redis.aclose()


def _add(into: dict[str, Any], found: dict[Any, Any], kind: type) -> None:
    for name, value in found.items():
        label = _text(name)
        into[label] = into.get(label, kind(0)) + kind(value)


def _claim_wait_label(bucket: bytes | str) -> str:
    """The claim script names buckets by their bound in ms; histograms speak seconds."""
    label = _text(bucket)
    return label if not label.isdigit() else repr(int(label) / 1000)


def _worker_fields(record: WorkerRecord) -> dict[FieldT, EncodableT]:
    return {
        "name": record.name,
        "host": record.host,
        "pid": record.pid,
        "version": record.version,
        "started_at": int(record.started_at.timestamp() * 1000),
        "seen_at": int(record.seen_at.timestamp() * 1000),
        "done": record.done,
        "failed": record.failed,
    }


def _worker_or_none(fields: dict[Any, Any]) -> WorkerRecord | None:
    """A worker's record; None for one edited by hand (its next heartbeat writes it anew)."""
    try:
        return WorkerRecord(
            name=_text(fields[b"name"]),
            host=_text(fields[b"host"]),
            pid=int(fields[b"pid"]),
            version=_text(fields[b"version"]),
            started_at=_ms_to_datetime(fields[b"started_at"]),
            seen_at=_ms_to_datetime(fields[b"seen_at"]),
            done=int(fields[b"done"]),
            failed=int(fields[b"failed"]),
        )
    except (KeyError, ValueError, OverflowError):
        return None


@contextmanager
def _naming(*names: str) -> Iterator[None]:
    """A WRONGTYPE from a plain command says which key it is about (a script's says already)."""
    try:
        yield
    except WrongType as exc:
        raise WrongType.among(str(exc), names) from None


def _text(value: bytes | str) -> str:
    # The client is binary (images), so replies are bytes; the stubs also allow str. Bytes
    # that are not UTF-8 (another program's) read with replacement characters, not an error.
    return value if isinstance(value, str) else value.decode(errors="replace")


def _digits(value: bytes | str | None) -> int | None:
    """A whole number as a script stores it; None for one missing or edited into another
    shape."""
    if value is None or not value.isdigit():
        return None
    return int(value)


def _decode(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _ms_to_datetime(ms: bytes | int) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


def _task_from_hash(task_id: str, fields: dict[Any, Any]) -> Task:
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
        leader=_decode(fields.get(b"leader")),
    )


def _major_version(info: dict[str, Any]) -> int:
    version = str(info.get("redis_version", "0"))
    return int(version.partition(".")[0] or 0) if version[:1].isdigit() else 0


@asynccontextmanager
async def open_store(settings: Settings, *, socket_timeout: float = 5.0) -> AsyncIterator[Store]:
    store = Store(client_for(settings.redis_url, socket_timeout=socket_timeout), settings)
    try:
        yield store
    finally:
        await store.close()
