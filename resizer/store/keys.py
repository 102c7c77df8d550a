"""Every Redis key name resizer uses, in one place.

The keyspace is split into partitions (``RESIZER_PARTITIONS``, default 1). Each partition's keys
share one hash tag, so on Redis Cluster they live in one slot and every script touches one slot:

==================================  ======  =====================================================
key (``{T}`` is the partition tag)  type    what
==================================  ======  =====================================================
``{T}:task:<id>``                   hash    status, created_at/updated_at (ms, Redis clock),
                                            attempts, digest, format/width/height of the
                                            original; once claimed: token, worker; once finished:
                                            result_format or error; ``leader`` when the task
                                            joined another one for the same bytes, ``joined``
                                            (a count) on the task it joined; ``released`` (the
                                            token a release already handled: scripts run twice
                                            after a lost reply are recognised)
``{T}:blob:<sha>``                  string  the original image, exactly the submitted bytes
``{T}:content:<sha>``               hash    ``format``, ``64``, ``32``: the thumbnails, base64,
                                            once resized; ``leader``: the id of the task queued
                                            or in progress for these bytes; ``refs``: tasks
                                            created for these bytes (released by DELETE)
``{T}:waiting``                     list    ids waiting; LPUSH in, (B)LMOVE out from the right
``{T}:processing``                  list    ids a worker has taken (the reliable-queue list)
``{T}:leases``                      zset    id -> lease deadline, ms on the Redis clock
``{T}:stats``                       hash    counters kept by the scripts (created, done, ...);
                                            ``replica_waits``: writes followed by a WAIT
``{T}:durations``                   hash    processing-time histogram: count per bucket, sum
``{T}:claim_waits``                 hash    created -> first claim histogram: count per bucket
``{T}:failures``                    list    the latest failures: ``id<TAB>ms<TAB>error``
``{T}:finished``                    pubsub  the id of every queued task that became DONE or
                                            FAILED (tasks that joined it finish with it)
``resizer:work``                    pubsub  the tag of the partition of every task queued
                                            (wakes idle workers when there is more than one)
``{T}:work``                        pubsub  the same, per partition, on a Redis Cluster whose
                                            primaries have sharded pub/sub (Redis >= 7), where
                                            both channels are shard channels (SPUBLISH)
``resizer:partitions``              string  the highest partition count tasks were created
                                            with: workers and recovery serve that many
``{resizer}:workers``               zset    worker name -> last heartbeat (ms)
``{resizer}:worker:<name>``         hash    who that worker is and what it did (host, pid,
                                            version, started, tasks done and failed); expires
                                            unless its heartbeat renews it
==================================  ======  =====================================================

``<id>`` is a task id, ``<sha>`` the SHA-256 of an original's bytes: images are stored once per
content and per partition. A task's partition follows from its digest (so deduplication stays in
one slot) and is written into its id (so any process routes a read without a lookup).
"""

from __future__ import annotations

import functools
import secrets
from typing import Final

import attrs
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

NAMESPACE: Final = "resizer"
MAX_PARTITIONS: Final = 256
"""Partitions are numbered in two hex digits of the task id."""

WORK_CHANNEL: Final = f"{NAMESPACE}:work"
PARTITIONS: Final = f"{NAMESPACE}:partitions"
WORKERS: Final = "{" + NAMESPACE + "}:workers"


def worker_key(name: str) -> str:
    return "{" + NAMESPACE + "}" + f":worker:{name}"


@attrs.frozen
class Partition:
    """The key names of one partition: every key here hashes to the same cluster slot."""

    index: int
    tag: str

    def task(self, task_id: str) -> str:
        return f"{self.tag}:task:{task_id}"

    def blob(self, digest: str) -> str:
        return f"{self.tag}:blob:{digest}"

    def content(self, digest: str) -> str:
        return f"{self.tag}:content:{digest}"

    @property
    def waiting(self) -> str:
        return f"{self.tag}:waiting"

    @property
    def processing(self) -> str:
        return f"{self.tag}:processing"

    @property
    def leases(self) -> str:
        return f"{self.tag}:leases"

    @property
    def stats(self) -> str:
        return f"{self.tag}:stats"

    @property
    def durations(self) -> str:
        return f"{self.tag}:durations"

    @property
    def claim_waits(self) -> str:
        return f"{self.tag}:claim_waits"

    @property
    def failures(self) -> str:
        return f"{self.tag}:failures"

    @property
    def finished(self) -> str:
        return f"{self.tag}:finished"

    @property
    def work(self) -> str:
        return f"{self.tag}:work"


@functools.cache
def partition(index: int) -> Partition:
    """Partition ``index``'s keys. Its tag never changes, whatever the number of partitions.

    Partition 0 is ``{resizer}``, the one tag of a single Redis. The others' tags are picked so
    that their slots follow the van der Corput sequence from there (1/2, 1/4, 3/4, 1/8, ... of the
    slot ring): the first N partitions of any N spread evenly over the slot ranges of a cluster's
    primaries, where names picked at random would often crowd one primary.
    """
    if not 0 <= index < MAX_PARTITIONS:
        raise ValueError(f"a partition is 0..{MAX_PARTITIONS - 1}, got {index}")
    if index == 0:
        return Partition(0, "{" + NAMESPACE + "}")
    base = key_slot(NAMESPACE.encode())
    width = REDIS_CLUSTER_HASH_SLOTS // MAX_PARTITIONS
    target = (base + _van_der_corput(index) * REDIS_CLUSTER_HASH_SLOTS // MAX_PARTITIONS) % (
        REDIS_CLUSTER_HASH_SLOTS
    )
    suffix = 0
    while True:
        name = f"{NAMESPACE}:{index}:{suffix}"
        if (key_slot(name.encode()) - target) % REDIS_CLUSTER_HASH_SLOTS < width:
            return Partition(index, "{" + name + "}")
        suffix += 1


def _van_der_corput(index: int) -> int:
    """``index``'s 8 bits reversed: 1 -> 128, 2 -> 64, 3 -> 192, ..."""
    return int(f"{index:08b}"[::-1], 2)


def partition_of_tag(tag: str) -> int | None:
    """The partition a tag names (``{resizer}`` is 0, ``{resizer:I:S}`` is I), or None."""
    if tag == partition(0).tag:
        return 0
    parts = tag.strip("{}").split(":")
    if len(parts) != 3 or parts[0] != NAMESPACE or not parts[1].isdigit():
        return None
    index = int(parts[1])
    return index if 0 < index < MAX_PARTITIONS and partition(index).tag == tag else None


def partition_of_digest(digest: str, partitions: int) -> int:
    return int(digest[:8], 16) % partitions


def new_task_id(partition_index: int) -> str:
    """A random id that names its partition in its last two hex digits."""
    return f"{secrets.token_hex(15)}{partition_index:02x}"


def partition_of_id(task_id: str) -> int | None:
    """The partition a task id names, or None for a string that is not one of our ids."""
    if len(task_id) != 32:
        return None
    try:
        int(task_id, 16)
    except ValueError:
        return None
    return int(task_id[30:], 16)


def task_key(task_id: str) -> str:
    """The key of a task, in the partition its id names."""
    index = partition_of_id(task_id)
    if index is None:
        raise ValueError(f"not a task id: {task_id!r}")
    return partition(index).task(task_id)
