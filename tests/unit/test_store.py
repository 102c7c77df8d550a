"""Every store and queue operation on fakeredis, including the atomic steps and the token check."""

from __future__ import annotations

import asyncio
import base64
import os

import attrs
import pytest

from resizer.models import Claim, ImageSize, TaskStatus
from resizer.store import Store
from resizer.store.keys import partition
from tests.helpers import INFO, upload

P0 = partition(0)
WAITING, PROCESSING, LEASES = P0.waiting, P0.processing, P0.leases
task_key, blob_key, content_key = P0.task, P0.blob, P0.content

IMAGES = {64: base64.b64encode(b"sixty-four"), 32: base64.b64encode(b"thirty-two")}


async def expire_lease(store: Store, task_id: str) -> None:
    """Move a lease deadline into the past, as if its worker stopped renewing long ago."""
    assert await store.redis.zadd(LEASES, {task_id: 0}, xx=True) == 0
    assert await store.redis.zscore(LEASES, task_id) == 0


async def take_and_claim(store: Store, worker: str = "w1") -> Claim:
    task_id = await store.take(0.01)
    assert task_id is not None
    claim = await store.claim(task_id, worker)
    assert claim is not None
    return claim


async def lists(store: Store) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """(waiting, processing, leased): the three queue structures, as raw ids."""
    waiting: list[bytes] = await store.redis.lrange(WAITING, 0, -1)  # type: ignore[assignment]
    processing: list[bytes] = await store.redis.lrange(PROCESSING, 0, -1)  # type: ignore[assignment]
    leased: list[bytes] = await store.redis.zrange(LEASES, 0, -1)  # type: ignore[assignment]
    return waiting, processing, leased


async def lease_deadline(store: Store, task_id: str) -> float:
    score = await store.redis.zscore(LEASES, task_id)
    assert score is not None
    return score


async def test_create_stores_task_and_original_atomically_and_queues_it(fake_store: Store) -> None:
    task = await fake_store.create_task(upload(b"\x89PNG raw bytes"))
    stored = await fake_store.get_task(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.WAITING
    assert stored.attempts == 0
    assert stored.original == INFO
    assert stored.created_at == stored.updated_at == task.created_at
    _, original = await fake_store.get_task_and_image(task.id, ImageSize.ORIGINAL)
    assert original == b"\x89PNG raw bytes"
    assert await lists(fake_store) == ([task.id.encode()], [], [])
    ttl_ms = fake_store.settings.ttl_seconds * 1000
    for key in (task_key(task.id), blob_key(stored.digest)):
        assert 0 < await fake_store.redis.pttl(key) <= ttl_ms


async def test_a_large_original_goes_beside_the_script_and_comes_back_whole(
    fake_store: Store,
) -> None:
    # Over 1 MiB: a plain SET in the create's MULTI, a plain GET after the claim.
    data = os.urandom(3 * 1024 * 1024)
    task = await fake_store.create_task(upload(data))
    again = await fake_store.create_task(upload(data))  # the same bytes: joins, stored once
    assert (task.status, again.status) == (TaskStatus.WAITING, TaskStatus.WAITING)
    _, original = await fake_store.get_task_and_image(again.id, ImageSize.ORIGINAL)
    assert original == data
    stored = await fake_store.get_task(task.id)
    assert stored is not None
    ttl_ms = fake_store.settings.ttl_seconds * 1000
    assert 0 < await fake_store.redis.pttl(blob_key(stored.digest)) <= ttl_ms
    claim = await take_and_claim(fake_store)
    assert (claim.task_id, claim.original) == (task.id, data)
    assert await fake_store.complete(claim, "png", IMAGES) is True
    joined = await fake_store.get_task(again.id)
    assert joined is not None
    assert joined.status is TaskStatus.DONE


async def test_unknown_task_is_none(fake_store: Store) -> None:
    assert await fake_store.get_task("nope") is None
    assert await fake_store.get_task_and_image("nope", ImageSize.S64) == (None, None)


async def test_queue_is_fifo(fake_store: Store) -> None:
    ids = [(await fake_store.create_task(upload())).id for _ in range(3)]
    assert [await fake_store.take(0.01) for _ in ids] == ids


async def test_take_times_out_on_an_empty_queue(fake_store: Store) -> None:
    assert await fake_store.take(0.05) is None


async def test_claim_sets_in_progress_counts_the_attempt_and_leases(fake_store: Store) -> None:
    task = await fake_store.create_task(upload())
    claim = await take_and_claim(fake_store)
    assert claim.task_id == task.id
    assert claim.attempt == 1
    stored = await fake_store.get_task(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.IN_PROGRESS
    assert stored.attempts == 1
    assert await fake_store.redis.hget(task_key(task.id), "token") == claim.token.encode()
    _, processing, leased = await lists(fake_store)
    assert processing == leased == [task.id.encode()]
    deadline = await lease_deadline(fake_store, task.id)
    created_ms = task.created_at.timestamp() * 1000
    lease_ms = fake_store.settings.lease_seconds * 1000
    assert created_ms + lease_ms <= deadline < created_ms + lease_ms + 5000


async def test_a_duplicate_delivery_is_not_claimed_twice(fake_store: Store) -> None:
    task = await fake_store.create_task(upload())
    await take_and_claim(fake_store)
    # A second copy of the id in `processing` (a worker took it in a race) must not be claimed.
    await fake_store.redis.lpush(PROCESSING, task.id)
    assert await fake_store.claim(task.id, "w2") is None
    assert await fake_store.redis.lrange(PROCESSING, 0, -1) == [task.id.encode()]


async def test_claim_of_an_expired_task_cleans_up(fake_store: Store) -> None:
    task = await fake_store.create_task(upload())
    await fake_store.redis.delete(task_key(task.id))
    assert await fake_store.take(0.01) == task.id
    assert await fake_store.claim(task.id, "w1") is None
    assert await lists(fake_store) == ([], [], [])


async def test_renew_extends_only_the_current_lease(fake_store: Store) -> None:
    await fake_store.create_task(upload())
    claim = await take_and_claim(fake_store)
    await fake_store.redis.zadd(LEASES, {claim.task_id: 1}, xx=True)
    assert await fake_store.renew(claim) is True
    assert await lease_deadline(fake_store, claim.task_id) > 1
    stale = attrs.evolve(claim, token="not-the-token")
    await fake_store.redis.zadd(LEASES, {claim.task_id: 1}, xx=True)
    assert await fake_store.renew(stale) is False
    assert await fake_store.redis.zscore(LEASES, claim.task_id) == 1


async def test_complete_writes_every_size_and_done_in_one_step(fake_store: Store) -> None:
    task = await fake_store.create_task(upload())
    claim = await take_and_claim(fake_store)
    assert await fake_store.complete(claim, "png", IMAGES) is True
    stored = await fake_store.get_task(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.DONE
    assert stored.result_format == "png"
    for size, data in IMAGES.items():
        _, image = await fake_store.get_task_and_image(task.id, ImageSize(str(size)))
        assert image == data
    # Results expire with their content, not later.
    result_ttl = await fake_store.redis.pttl(content_key(task.digest))
    assert 0 < result_ttl <= await fake_store.redis.pttl(blob_key(task.digest)) + 50
    assert await lists(fake_store) == ([], [], [])


async def test_complete_with_a_stale_token_writes_nothing(fake_store: Store) -> None:
    task = await fake_store.create_task(upload())
    claim = await take_and_claim(fake_store)
    stale = attrs.evolve(claim, token="old")
    assert await fake_store.complete(stale, "png", IMAGES) is False
    stored = await fake_store.get_task(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.IN_PROGRESS
    assert await fake_store.redis.hexists(content_key(task.digest), "format") == 0


async def test_a_presumed_dead_worker_cannot_overwrite_the_newer_attempt(fake_store: Store) -> None:
    task = await fake_store.create_task(upload())
    first = await take_and_claim(fake_store, "slow")
    await expire_lease(fake_store, task.id)
    report = await fake_store.recover()
    assert report.requeued == [task.id]
    second = await take_and_claim(fake_store, "fast")
    assert second.attempt == 2
    assert await fake_store.renew(first) is False
    assert await fake_store.complete(second, "png", IMAGES) is True
    late = {64: base64.b64encode(b"late"), 32: base64.b64encode(b"late")}
    assert await fake_store.complete(first, "jpeg", late) is False
    assert await fake_store.fail(first, "late failure") is False
    stored = await fake_store.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.result_format, stored.error) == (TaskStatus.DONE, "png", None)
    _, image = await fake_store.get_task_and_image(task.id, ImageSize.S64)
    assert image == IMAGES[64]


async def test_fail_is_permanent_with_the_reason(fake_store: Store) -> None:
    task = await fake_store.create_task(upload())
    claim = await take_and_claim(fake_store)
    assert await fake_store.fail(claim, "cannot decode: truncated") is True
    stored = await fake_store.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.error) == (TaskStatus.FAILED, "cannot decode: truncated")
    assert await lists(fake_store) == ([], [], [])


async def test_retry_requeues_until_the_attempt_cap_then_fails(fake_store: Store) -> None:
    task = await fake_store.create_task(upload())
    for attempt in range(1, fake_store.settings.max_attempts):
        claim = await take_and_claim(fake_store)
        assert claim.attempt == attempt
        assert await fake_store.retry(claim, "RuntimeError: boom") == "requeued"
        assert await lists(fake_store) == ([task.id.encode()], [], [])
    claim = await take_and_claim(fake_store)
    assert await fake_store.retry(claim, "RuntimeError: boom") == "failed"
    stored = await fake_store.get_task(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.FAILED
    assert stored.error is not None
    assert "gave up after 3 attempts" in stored.error
    assert "RuntimeError: boom" in stored.error
    assert await lists(fake_store) == ([], [], [])
    # The same release sent again (its reply was lost) answers what the first one did; any
    # other claim is stale.
    assert await fake_store.retry(claim, "again") == "failed"
    assert await fake_store.retry(attrs.evolve(claim, token="other"), "again") == "stale"


async def test_recover_leaves_live_leases_alone(fake_store: Store) -> None:
    await fake_store.create_task(upload())
    claim = await take_and_claim(fake_store)
    report = await fake_store.recover()
    assert report.requeued == report.failed == report.adopted == []
    assert await fake_store.renew(claim) is True


async def test_recover_requeues_expired_then_fails_at_the_cap(fake_store: Store) -> None:
    task = await fake_store.create_task(upload())
    for _ in range(fake_store.settings.max_attempts - 1):
        await take_and_claim(fake_store)
        await expire_lease(fake_store, task.id)
        assert (await fake_store.recover()).requeued == [task.id]
        stored = await fake_store.get_task(task.id)
        assert stored is not None
        assert stored.status is TaskStatus.WAITING
    await take_and_claim(fake_store)
    await expire_lease(fake_store, task.id)
    assert (await fake_store.recover()).failed == [task.id]
    stored = await fake_store.get_task(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.FAILED
    assert stored.error is not None
    assert "gave up after 3 attempts" in stored.error
    assert "lease" in stored.error
    assert await lists(fake_store) == ([], [], [])


async def test_recover_adopts_a_taken_but_unclaimed_id_then_requeues_it(fake_store: Store) -> None:
    task = await fake_store.create_task(upload())
    assert await fake_store.take(0.01) == task.id  # ... and the worker dies before claiming
    report = await fake_store.recover()
    assert report.adopted == [task.id]
    assert report.requeued == []
    assert (await fake_store.recover()).adopted == []  # adopting is done once
    await expire_lease(fake_store, task.id)
    assert (await fake_store.recover()).requeued == [task.id]
    stored = await fake_store.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (TaskStatus.WAITING, 0)
    assert await lists(fake_store) == ([task.id.encode()], [], [])


async def test_a_late_claim_after_adoption_still_works(fake_store: Store) -> None:
    task = await fake_store.create_task(upload())
    assert await fake_store.take(0.01) == task.id
    assert (await fake_store.recover()).adopted == [task.id]
    claim = await fake_store.claim(task.id, "slow-starter")
    assert claim is not None
    assert await fake_store.complete(claim, "png", IMAGES) is True
    assert await lists(fake_store) == ([], [], [])


async def test_concurrent_recoveries_requeue_each_task_once(fake_store: Store) -> None:
    ids = [(await fake_store.create_task(upload())).id for _ in range(20)]
    for _ in ids:
        await take_and_claim(fake_store)
    for task_id in ids:
        await expire_lease(fake_store, task_id)
    reports = await asyncio.gather(*(fake_store.recover(batch=3) for _ in range(4)))
    requeued = [task_id for report in reports for task_id in report.requeued]
    assert sorted(requeued) == sorted(ids)
    waiting, processing, leased = await lists(fake_store)
    assert sorted(waiting) == sorted(i.encode() for i in ids)
    assert processing == leased == []


async def test_recover_drops_ids_of_tasks_that_expired(fake_store: Store) -> None:
    task = await fake_store.create_task(upload())
    await take_and_claim(fake_store)
    await fake_store.redis.delete(task_key(task.id))
    await expire_lease(fake_store, task.id)
    report = await fake_store.recover()
    assert report.requeued == report.failed == []
    assert await lists(fake_store) == ([], [], [])


async def test_queue_lengths(fake_store: Store) -> None:
    for _ in range(3):
        await fake_store.create_task(upload())
    await take_and_claim(fake_store)
    stats = await fake_store.stats()
    assert (stats.waiting, stats.in_flight) == (2, 1)


@pytest.mark.parametrize("size", [ImageSize.ORIGINAL, ImageSize.S64])
async def test_task_and_image_come_from_one_round_trip(fake_store: Store, size: ImageSize) -> None:
    task = await fake_store.create_task(upload(b"orig"))
    claim = await take_and_claim(fake_store)
    await fake_store.complete(claim, "png", IMAGES)
    found, image = await fake_store.get_task_and_image(task.id, size)
    assert found is not None
    assert found.id == task.id
    assert image == (b"orig" if size is ImageSize.ORIGINAL else IMAGES[64])


# --- deduplication by content -------------------------------------------------------------------


async def test_same_bytes_in_flight_join_and_finish_together(fake_store: Store) -> None:
    first = await fake_store.create_task(upload(b"same"))
    second = await fake_store.create_task(upload(b"same"))
    assert second.status is TaskStatus.WAITING
    assert first.digest == second.digest
    assert await lists(fake_store) == ([first.id.encode()], [], [])  # queued once
    # Joining is one field on each side, whatever the number of tasks that join.
    assert await fake_store.redis.hget(task_key(second.id), "leader") == first.id.encode()
    assert await fake_store.redis.hget(task_key(first.id), "joined") == b"1"
    claim = await take_and_claim(fake_store)
    assert await fake_store.complete(claim, "png", IMAGES) is True
    for task_id in (first.id, second.id):
        task, image = await fake_store.get_task_and_image(task_id, ImageSize.S32)
        assert task is not None
        assert (task.status, task.result_format, image) == (TaskStatus.DONE, "png", IMAGES[32])
    stored_second = await fake_store.get_task(second.id)
    assert stored_second is not None
    assert stored_second.attempts == 0  # it never needed a worker
    assert await fake_store.redis.hget(content_key(first.digest), "leader") is None


async def test_same_bytes_after_done_are_done_at_once(fake_store: Store) -> None:
    first = await fake_store.create_task(upload(b"same"))
    await fake_store.complete(await take_and_claim(fake_store), "jpeg", IMAGES)
    again = await fake_store.create_task(upload(b"same"))
    assert again.status is TaskStatus.DONE
    assert await lists(fake_store) == ([], [], [])  # nothing queued, nothing to resize
    task, image = await fake_store.get_task_and_image(again.id, ImageSize.S64)
    assert task is not None
    assert (task.status, task.result_format, image) == (TaskStatus.DONE, "jpeg", IMAGES[64])
    _, original = await fake_store.get_task_and_image(again.id, ImageSize.ORIGINAL)
    assert original == b"same"
    assert first.id != again.id


async def test_failed_content_fails_its_joined_tasks_and_can_be_tried_again(
    fake_store: Store,
) -> None:
    first = await fake_store.create_task(upload(b"bad"))
    joined = await fake_store.create_task(upload(b"bad"))
    assert await fake_store.fail(await take_and_claim(fake_store), "cannot decode") is True
    for task_id in (first.id, joined.id):
        task = await fake_store.get_task(task_id)
        assert task is not None
        assert (task.status, task.error) == (TaskStatus.FAILED, "cannot decode")
    fresh = await fake_store.create_task(upload(b"bad"))
    assert fresh.status is TaskStatus.WAITING
    assert await lists(fake_store) == ([fresh.id.encode()], [], [])


async def test_joined_tasks_fail_with_the_attempt_cap_too(fake_store: Store) -> None:
    first = await fake_store.create_task(upload(b"poison"))
    joined = await fake_store.create_task(upload(b"poison"))
    for _ in range(fake_store.settings.max_attempts):
        await take_and_claim(fake_store)
        await expire_lease(fake_store, first.id)
        await fake_store.recover()
    task = await fake_store.get_task(joined.id)
    assert task is not None
    assert task.status is TaskStatus.FAILED
    assert task.error is not None
    assert "gave up after 3 attempts" in task.error


async def test_shared_content_lives_as_long_as_its_longest_lived_task(fake_store: Store) -> None:
    short = Store(fake_store.redis, attrs.evolve(fake_store.settings, ttl_seconds=100))
    long = Store(fake_store.redis, attrs.evolve(fake_store.settings, ttl_seconds=1000))
    first = await short.create_task(upload(b"shared"))
    assert await fake_store.redis.pttl(blob_key(first.digest)) <= 100_000
    await long.create_task(upload(b"shared"))
    assert await fake_store.redis.pttl(blob_key(first.digest)) > 900_000
    await short.create_task(upload(b"shared"))  # a shorter-lived task never shortens it
    assert await fake_store.redis.pttl(blob_key(first.digest)) > 900_000
    await long.complete(await take_and_claim(long), "png", IMAGES)
    assert await fake_store.redis.pttl(content_key(first.digest)) > 900_000


async def test_a_waiting_task_that_others_joined_lives_as_long_as_they_do(
    fake_store: Store,
) -> None:
    # Only the queued task reaches a worker, and it finishes the ones that joined it: if it
    # expired first (a backlog longer than the TTL), they would wait for nothing.
    short = Store(fake_store.redis, attrs.evolve(fake_store.settings, ttl_seconds=100))
    long = Store(fake_store.redis, attrs.evolve(fake_store.settings, ttl_seconds=1000))
    queued = await short.create_task(upload(b"shared"))
    assert await fake_store.redis.pttl(task_key(queued.id)) <= 100_000
    joined = await long.create_task(upload(b"shared"))
    assert joined.status is TaskStatus.WAITING
    assert await fake_store.redis.pttl(task_key(queued.id)) > 900_000
    await short.create_task(upload(b"shared"))  # a shorter-lived one never shortens it
    assert await fake_store.redis.pttl(task_key(queued.id)) > 900_000


async def test_the_scripts_count_what_happens_for_the_metrics(fake_store: Store) -> None:
    done = await fake_store.create_task(upload(b"a"))
    await fake_store.create_task(upload(b"a"))  # joins
    await fake_store.complete(await take_and_claim(fake_store), "png", IMAGES, seconds=0.2)
    await fake_store.create_task(upload(b"a"))  # done at once
    crashed = await fake_store.create_task(upload())
    for _ in range(fake_store.settings.max_attempts):
        await take_and_claim(fake_store)
        await expire_lease(fake_store, crashed.id)
        await fake_store.recover()
    flaky = await fake_store.create_task(upload())
    assert await fake_store.retry(await take_and_claim(fake_store), "boom") == "requeued"
    stats = await fake_store.stats()
    assert stats.counters == {
        "created": 5,
        "deduplicated": 2,
        "done": 3,
        "recovered": 2,
        "failed": 1,
        "attempt_cap_failures": 1,
        "retried": 1,
    }
    # Each observation in its own bucket (the exposition makes them cumulative).
    assert stats.durations == {"0.25": 1, "count": 1, "sum": 0.2}
    assert (stats.waiting, stats.in_flight) == (1, 0)
    assert done.id != flaky.id


# --- every script is safe to run twice (redis-py re-sends a command whose reply was lost) -------


async def test_create_sent_twice_creates_one_task(fake_store: Store) -> None:
    first = await fake_store.create_task(upload(b"once"), task_id="ab" * 15 + "00")
    again = await fake_store.create_task(upload(b"once"), task_id=first.id)
    assert (again.id, again.status, again.created_at) == (first.id, first.status, first.created_at)
    assert await lists(fake_store) == ([first.id.encode()], [], [])
    assert (await fake_store.stats()).counters == {"created": 1}
    assert await fake_store.redis.hget(content_key(first.digest), "refs") == b"1"


async def test_claim_sent_twice_counts_one_attempt(fake_store: Store) -> None:
    task = await fake_store.create_task(upload(b"original"))
    assert await fake_store.take(0.01) == task.id
    first = await fake_store.claim(task.id, "w1", token="t" * 32)
    again = await fake_store.claim(task.id, "w1", token="t" * 32)
    assert first is not None
    assert again == first
    assert again.original == b"original"
    stored = await fake_store.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (TaskStatus.IN_PROGRESS, 1)
    # Another worker's claim of the same id is still refused.
    assert await fake_store.claim(task.id, "w2", token="u" * 32) is None


async def test_complete_sent_twice_counts_once(fake_store: Store) -> None:
    await fake_store.create_task(upload())
    claim = await take_and_claim(fake_store)
    assert await fake_store.complete(claim, "png", IMAGES, seconds=0.2) is True
    assert await fake_store.complete(claim, "png", IMAGES, seconds=0.2) is True
    stats = await fake_store.stats()
    assert stats.counters["done"] == 1
    assert stats.durations["count"] == 1


async def test_a_retry_sent_twice_requeues_once(fake_store: Store) -> None:
    task = await fake_store.create_task(upload())
    claim = await take_and_claim(fake_store)
    assert await fake_store.retry(claim, "boom") == "requeued"
    assert await fake_store.retry(claim, "boom") == "requeued"
    assert await lists(fake_store) == ([task.id.encode()], [], [])
    assert (await fake_store.stats()).counters["retried"] == 1
    # The next claim is a new one; the old token stays stale for it.
    second = await take_and_claim(fake_store)
    assert second.attempt == 2
    assert await fake_store.retry(claim, "boom") == "requeued"  # answers as before ...
    assert await fake_store.renew(second) is True  # ... and takes nothing from the new claim
    stored = await fake_store.get_task(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.IN_PROGRESS


# --- joining is O(1) --------------------------------------------------------------------------


async def test_many_joined_tasks_finish_with_one_write(fake_store: Store) -> None:
    leader = await fake_store.create_task(upload(b"popular"))
    joined = [await fake_store.create_task(upload(b"popular")) for _ in range(50)]
    claim = await take_and_claim(fake_store)
    assert await fake_store.complete(claim, "png", IMAGES) is True
    # Nothing was written to the joined tasks' own records: they read the leader's status.
    for task in joined:
        assert await fake_store.redis.hget(task_key(task.id), "status") == b"WAITING"
        seen = await fake_store.get_task(task.id)
        assert seen is not None
        assert (seen.status, seen.result_format, seen.attempts) == (TaskStatus.DONE, "png", 0)
        assert seen.watch_id == leader.id
    assert (await fake_store.stats()).counters["done"] == 51


async def test_a_joined_task_shows_its_leaders_progress(fake_store: Store) -> None:
    await fake_store.create_task(upload(b"x"))
    joined = await fake_store.create_task(upload(b"x"))
    await take_and_claim(fake_store)
    seen = await fake_store.get_task(joined.id)
    assert seen is not None
    assert seen.status is TaskStatus.IN_PROGRESS


# --- retention of what failed ------------------------------------------------------------------


async def test_a_failed_tasks_bytes_expire_after_the_failed_ttl(fake_store: Store) -> None:
    store = Store(fake_store.redis, attrs.evolve(fake_store.settings, failed_ttl_seconds=60))
    task = await store.create_task(upload(b"garbage"))
    assert await store.redis.pttl(blob_key(task.digest)) > 3_000_000
    assert await store.fail(await take_and_claim(store), "cannot decode") is True
    for key in (blob_key(task.digest), content_key(task.digest)):
        assert 0 < await store.redis.pttl(key) <= 60_000
    # The task's own record (small) keeps the whole retention: its error stays readable.
    assert await store.redis.pttl(task_key(task.id)) > 3_000_000
    # A new task for the same bytes makes them worth keeping again.
    await store.create_task(upload(b"garbage"))
    assert await store.redis.pttl(blob_key(task.digest)) > 3_000_000


# --- deletion ---------------------------------------------------------------------------------


async def test_delete_releases_bytes_no_other_task_uses(fake_store: Store) -> None:
    first = await fake_store.create_task(upload(b"shared"))
    await fake_store.complete(await take_and_claim(fake_store), "png", IMAGES)
    second = await fake_store.create_task(upload(b"shared"))
    assert await fake_store.delete_task(first.id) is True
    assert await fake_store.get_task(first.id) is None
    assert await fake_store.delete_task(first.id) is False
    _, image = await fake_store.get_task_and_image(second.id, ImageSize.S64)
    assert image == IMAGES[64]  # still used by the second task
    assert await fake_store.delete_task(second.id) is True
    assert await fake_store.redis.exists(blob_key(first.digest), content_key(first.digest)) == 0


async def test_deleting_a_waiting_task_leaves_nothing_for_a_worker(fake_store: Store) -> None:
    task = await fake_store.create_task(upload())
    assert await fake_store.delete_task(task.id) is True
    assert await fake_store.take(0.01) == task.id
    assert await fake_store.claim(task.id, "w1") is None
    assert await lists(fake_store) == ([], [], [])
    # The statistics, and the partition count workers serve.
    assert await fake_store.redis.dbsize() == 2


async def test_deleting_a_task_others_joined_keeps_its_work_for_them(fake_store: Store) -> None:
    leader = await fake_store.create_task(upload(b"joined"))
    joined = await fake_store.create_task(upload(b"joined"))
    assert await fake_store.delete_task(leader.id) is True
    assert await fake_store.get_task(leader.id) is None
    await fake_store.complete(await take_and_claim(fake_store), "png", IMAGES)
    seen, image = await fake_store.get_task_and_image(joined.id, ImageSize.S32)
    assert seen is not None
    assert (seen.status, image) == (TaskStatus.DONE, IMAGES[32])


async def test_ids_that_are_not_ours_are_unknown_without_a_lookup(fake_store: Store) -> None:
    for task_id in ("nope", "x" * 32, "../../etc"):
        assert await fake_store.get_task(task_id) is None
        assert await fake_store.delete_task(task_id) is False
