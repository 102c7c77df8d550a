"""The floor under the CPU-split ratios (section 2): a bare aiohttp app that does only what no
implementation of this API on Redis can skip, for the load client's two requests a task.

``POST /tasks``: read the body (JSON: ``json.loads`` and pybase64's SIMD decoding; raw: as is),
SHA-256 it, store it and the task in Redis (one MSET), answer the id. ``GET /tasks/{id}``: one
Redis GET of a small key, answer DONE. No validation, queue, worker, log or metric.

Usage: python -m bench.floor_app PORT REDIS_URL
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from datetime import UTC, datetime

import pybase64
import redis.asyncio as aioredis
from aiohttp import web

REDIS: web.AppKey[aioredis.Redis] = web.AppKey("redis", aioredis.Redis)


async def create(request: web.Request) -> web.Response:
    body = await request.read()
    if request.content_type == "application/json":
        body = pybase64.b64decode(json.loads(body)["data"], validate=True)
    digest = hashlib.sha256(body).hexdigest()
    task_id = uuid.uuid4().hex
    await request.app[REDIS].mset({f"floor:{digest}": body, f"floor:task:{task_id}": digest})
    return web.json_response({"id": task_id}, status=201)


async def status(request: web.Request) -> web.Response:
    await request.app[REDIS].get(f"floor:task:{request.match_info['id']}")
    now = datetime.now(UTC).isoformat()
    return web.json_response({"status": "DONE", "created_at": now, "updated_at": now})


def main(argv: list[str]) -> int:
    port, url = int(argv[0]), argv[1]
    app = web.Application(client_max_size=64 * 2**20)
    app[REDIS] = aioredis.Redis.from_url(url)
    app.router.add_post("/tasks", create)
    app.router.add_get("/tasks/{id}", status)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
