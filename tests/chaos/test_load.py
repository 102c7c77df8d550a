"""Scenarios 8-9: load at concurrency 64, and Redis at its maxmemory."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Callable

import attrs
import redis

from resizer.config import Settings
from resizer.store.keys import PARTITIONS, WORKERS, partition, worker_key
from tests.chaos.harness import (
    Api,
    Cluster,
    Figures,
    audit,
    open_session,
    percentile,
    rss_peak_kib,
    statuses,
    task_hashes,
    wait_finished,
)
from tests.chaos.photos import uniquify
from tests.helpers import wait_until

LOAD_TASKS = 5000
CONCURRENCY = 64
TTL_TASKS = 300
TTL_SECONDS = 10


def key_names(client: redis.Redis) -> list[str]:
    return sorted(k.decode() if isinstance(k, bytes) else str(k) for k in client.keys("*"))


def per_task_keys(client: redis.Redis) -> list[str]:
    """Keys that exist because of some task. What may stay: the shared queue keys and the
    service's own counters (a handful of keys, whatever the number of tasks)."""
    p0 = partition(0)
    shared = (
        p0.waiting,
        p0.processing,
        p0.leases,
        p0.stats,
        p0.durations,
        p0.claim_waits,
        p0.failures,
        WORKERS,
        PARTITIONS,
    )
    # The workers' own records (expiring a few heartbeats after their worker stops).
    return [k for k in key_names(client) if k not in shared and not k.startswith(worker_key(""))]


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def held_memory(client: redis.Redis) -> int:
    """Redis's memory less its clients' buffers: what the keys hold, and Redis's own. A web's
    pool opens up to 32 connections under load (~20 KB each), however many tasks it keeps."""
    info = client.info("memory")
    return int(info["used_memory"]) - int(info["mem_clients_normal"])


async def test_load(
    cluster_factory: Callable[..., Cluster], small_photos: list[bytes], figures: Figures
) -> None:
    """Load: 5,000 small photos (32-64 px) POSTed by 64 concurrent clients to ``resizer serve``
    with 2 workers; each client reads the status right after its POST.

    Zero 5xx, zero lost; latencies, peak RSS and Redis memory per finished task recorded. Then
    300 more through a server with RESIZER_TTL_SECONDS=10: once they expire, Redis is empty.
    """
    cluster = cluster_factory(Settings(lease_seconds=10, max_attempts=3, ttl_seconds=3600))
    web, url = cluster.serve()
    workers = [cluster.start("work") for _ in range(2)]
    client = cluster.redis()
    baseline = used_memory(client)
    counter = itertools.count()
    ids: list[str] = []

    async def client_loop(api: Api, total: int, prefix: str) -> None:
        while (n := next(counter)) < total:
            status, body = await api.post(uniquify(small_photos[n % len(small_photos)], prefix))
            if status == 201:
                ids.append(body["id"])
                await api.status(body["id"])

    async def run(base: str, total: int, prefix: str) -> Api:
        async with open_session(CONCURRENCY) as session:
            api = Api(session, base)
            await asyncio.gather(
                *(client_loop(api, total, f"{prefix}-{c}") for c in range(CONCURRENCY))
            )
        return api

    submit_started = asyncio.get_running_loop().time()
    api = await run(url, LOAD_TASKS, "load")
    submit_seconds = asyncio.get_running_loop().time() - submit_started
    figures.submitted = len(ids)
    await wait_finished(client, ids, timeout=120)
    result = await audit(client, ids, url)
    per_task = (used_memory(client) - baseline) / max(1, len(ids))
    rss = {
        "web": rss_peak_kib(web.pid) // 1024,
        "workers": max(rss_peak_kib(w.pid) for w in workers) // 1024,
    }

    # Retention: a second server with a 10 s TTL, 300 tasks, then wait for Redis to empty.
    client.flushall()
    empty = held_memory(client)
    short_web, short_url = cluster.serve(attrs.evolve(cluster.settings, ttl_seconds=TTL_SECONDS))
    counter = itertools.count()
    ids_before = len(ids)
    await run(short_url, TTL_TASKS, "ttl")
    short_ids = ids[ids_before:]
    await wait_finished(client, short_ids, timeout=60)
    short_done = statuses(client, short_ids).count("DONE")
    full = held_memory(client)
    wait_until(lambda: per_task_keys(client) == [], TTL_SECONDS + 30, "every task's keys to expire")
    shared_keys = key_names(client)
    after_ttl = held_memory(client)
    short_web.terminate()

    figures.take(result)
    figures.notes.update(
        http=dict(api.answers),
        submit_rate_per_s=round(len(ids) / submit_seconds),
        post_p50_ms=percentile(api.post_ms, 50),
        post_p99_ms=percentile(api.post_ms, 99),
        status_p50_ms=percentile(api.get_ms, 50),
        status_p99_ms=percentile(api.get_ms, 99),
        peak_rss_mib=rss,
        redis_bytes_per_done_task=round(per_task),
        ttl_tasks_done=short_done,
        keys_left_after_ttl=shared_keys,
        ttl_redis_kib_full_then_expired=[
            round((full - empty) / 1024),
            round((after_ttl - empty) / 1024),
        ],
    )
    result.assert_clean()
    assert set(api.answers) == {200, 201}, api.answers
    assert result.status == {"DONE": LOAD_TASKS}
    assert short_done == TTL_TASKS
    # Back to (about) the empty server's footprint: under a tenth of what the tasks took.
    assert after_ttl - empty < (full - empty) / 10


MAXMEMORY = 8 * 1024 * 1024


async def test_memory_pressure(
    cluster_factory: Callable[..., Cluster], photos: list[bytes], figures: Figures
) -> None:
    """Memory pressure: Redis at its ``maxmemory`` (8 MiB, ``noeviction``) answers OOM; the API
    says so in JSON (507), writes nothing half-way, and service resumes once memory frees.

    A ballast key takes Redis near its limit; tasks are submitted until the API refuses
    several; then the ballast is deleted (memory frees) and more tasks go through.
    """
    cluster = cluster_factory(
        Settings(lease_seconds=2, max_attempts=3, ttl_seconds=3600),
        "--maxmemory",
        str(MAXMEMORY),
        "--maxmemory-policy",
        "noeviction",
    )
    _, url = cluster.serve()
    worker = cluster.start("work")
    client = cluster.redis()
    ballast = 0
    while used_memory(client) < MAXMEMORY - 800 * 1024:
        client.set(f"ballast:{ballast}", b"\0" * 128 * 1024)
        ballast += 1
    accepted: list[str] = []
    refused: list[tuple[int, str]] = []
    big = [p for p in photos if len(p) > 20_000]
    # The worker is paused while Redis fills up, so that tasks are waiting when it resumes
    # against a full Redis: it must wait for memory, not crash.
    worker.send_signal(signal.SIGSTOP)
    async with open_session(8) as session:
        api = Api(session, url)
        n = 0
        while len(refused) < 20:
            n += 1
            assert n < 2000, "Redis never ran out of memory"
            status, body = await api.post(uniquify(big[n % len(big)], f"full-{n}"))
            if status == 201:
                accepted.append(body["id"])
            else:
                refused.append((status, body.get("error", {}).get("code", body)))
        full_at = used_memory(client)
        stored = task_hashes(client)
        figures.submitted, figures.faults = len(accepted), len(refused)
        # Keep Redis over its limit until the worker has met it: the request buffers Redis
        # frees over the next seconds could otherwise bring it just under.
        client.config_set("maxmemory", used_memory(client) - 2**20)
        worker.send_signal(signal.SIGCONT)
        wait_until(
            lambda: worker.poll() is not None or cluster.log_of(worker).count("redis.full") >= 2,
            30,
            "the worker to meet the full Redis and back off (or die)",
        )
        # Memory frees: the ballast goes (and the limit is the configured one again).
        client.delete(*(f"ballast:{b}" for b in range(ballast)))
        client.config_set("maxmemory", MAXMEMORY)
        after = [await api.submit(uniquify(big[k % len(big)], f"after-{k}")) for k in range(30)]
    ids = accepted + after
    await wait_finished(client, ids, timeout=60)
    result = await audit(client, ids, url)

    figures.submitted, figures.faults = len(ids), len(refused)
    figures.take(result)
    figures.notes.update(
        refused=sorted({f"{s} {c}" for s, c in refused}),
        accepted_before_full=len(accepted),
        used_memory_at_refusal_mib=round(full_at / 2**20, 1),
        worker_alive=worker.poll() is None,
    )
    assert {s for s, _ in refused} <= {507, 503}
    assert {c for _, c in refused} <= {"storage_full", "unavailable"}
    assert stored == set(accepted), "a refused task left a record behind"
    result.assert_clean()
    assert result.status == {"DONE": len(ids)}
    assert worker.poll() is None, "the worker died of the full Redis"
