"""The floor under the workers' share of the CPU-split ratios (section 2): what a worker process
of this design cannot skip around each task's kernel.

A task is moved off the queue into the worker's processing list (LMOVE: a crash then loses
nothing), its original read (one GET), its thumbnails made (``imaging.make_thumbnails``, the
kernel) and stored base64-encoded (as the design asks) together with the task's removal from
the processing list (one MULTI/EXEC). Synchronous redis-py; no event loop, lease, heartbeat,
attempt cap, status, log or metric. The queue is filled beforehand, so LMOVE never waits (and
costs what a BLMOVE that finds a task costs).

Usage: python -m bench.floor_worker REDIS_URL
Prints ``{"tasks": N, "cpu_s": S}`` once the queue is empty: this process's CPU over its tasks,
its start and a first warm-up task left out.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time

import redis

QUEUE = "floor:queue"
ORIGINAL = "floor:original"
"""Every task's original: one copy in Redis, read once a task (a GET costs the same whatever
key it reads)."""


def _bytes(reply: object) -> bytes:
    assert isinstance(reply, bytes), reply
    return reply


def main(argv: list[str]) -> int:
    from resizer import imaging, memory

    memory.keep_freed_memory()  # as `resizer work` does, and as the kernel was measured
    client = redis.Redis.from_url(argv[0])
    processing = f"floor:processing:{os.getpid()}"
    imaging.make_thumbnails(_bytes(client.get(ORIGINAL)))
    tasks = 0
    started = time.process_time()
    while (moved := client.lmove(QUEUE, processing, "RIGHT", "LEFT")) is not None:
        task = _bytes(moved).decode()
        thumbnails = imaging.make_thumbnails(_bytes(client.get(ORIGINAL)))
        with client.pipeline(transaction=True) as pipe:
            for thumbnail in thumbnails:
                pipe.set(f"floor:thumb:{task}:{thumbnail.size}", base64.b64encode(thumbnail.data))
            pipe.lrem(processing, 1, task)
            pipe.execute()
        tasks += 1
    print(json.dumps({"tasks": tasks, "cpu_s": time.process_time() - started}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
