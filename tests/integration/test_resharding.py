"""Scripts while their partition's slot moves between cluster nodes (resharding: adding a
primary, rebalancing): refused and waited out, nothing written, never a crash.

Keys move one at a time (``MIGRATE``), and Redis routes a script by the keys it names. A claim
reaches the original through its task's digest: with the task, queue and leases still on the
old node and the original already on the new one, Redis refused it ("attempted to access a non
local key"), a plain error, and the worker exited with a traceback, again and again until the
slot had moved. A create names a task key that does not exist yet, which Redis answers TRYAGAIN
while the slot moves; redis-py's retries ran out (ClusterError) and the API answered 500. Both
are now waited out as an outage is (503, a worker's back-off).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.crc import key_slot
from redis.exceptions import TryAgainError

from resizer.models import Task, TaskStatus
from resizer.store import REDIS_DOWN, Store, keys, outage_event, unavailable
from tests.integration.test_partitions import upload_in
from tests.topologies import LocalCluster, SlotMove

pytestmark = pytest.mark.integration


@pytest.fixture
def moving(topology_cluster: LocalCluster) -> Iterator[SlotMove]:
    move = SlotMove(topology_cluster, key_slot(keys.partition(3).tag.encode()))
    try:
        yield move
    finally:
        move.back()


async def create_in_3(store: Store, tag: str, task_id: str | None = None) -> Task:
    """A task of bytes ``tag`` names, in partition 3 (the one ``moving`` moves)."""
    upload = upload_in(3, store.settings.partitions, tag)
    return await store.create_task(upload, task_id or keys.new_task_id(3))


@pytest.mark.topologies("cluster")
async def test_a_claim_waits_for_an_original_moved_already(
    real_store: Store, moving: SlotMove
) -> None:
    part = keys.partition(3)
    # Two tasks in one partition, the first claimed: the queue, leases and claim histogram
    # exist, as on any busy partition (a key a script names that does not exist yet is itself
    # answered TRYAGAIN while its slot moves).
    first = await create_in_3(real_store, "first")
    second = await create_in_3(real_store, "second")
    for _ in range(2):  # taken, as a worker's BLMOVE does
        await real_store.redis.lmove(part.waiting, part.processing, "RIGHT", "LEFT")
    assert await real_store.claim(first.id, "worker-1") is not None
    moving.begin()
    moving.migrate(part.blob(second.digest))
    with pytest.raises(TryAgainError) as refused:
        await real_store.claim(second.id, "worker-2")
    assert outage_event(refused.value) == "redis.slots_moving"
    stored = await real_store.get_task(second.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (TaskStatus.WAITING, 0)
    moving.finish()
    claim = await real_store.claim(second.id, "worker-2")
    assert claim is not None
    assert claim.original == upload_in(3, real_store.settings.partitions, "second").data


@pytest.mark.topologies("cluster")
async def test_a_create_while_the_slot_moves_is_refused_then_taken(
    real_store: Store, moving: SlotMove
) -> None:
    part = keys.partition(3)
    await create_in_3(real_store, "first")
    moving.begin()
    moving.migrate(part.waiting)
    task_id = keys.new_task_id(3)
    with pytest.raises(REDIS_DOWN) as refused:  # the API's 503
        await create_in_3(real_store, "second", task_id)
    assert outage_event(refused.value) == "redis.slots_moving"
    assert "moving this task's keys" in unavailable(refused.value).message
    moving.finish()
    assert await real_store.get_task(task_id) is None
    created = await create_in_3(real_store, "second", task_id)
    assert created.status is TaskStatus.WAITING
