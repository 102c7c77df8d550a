"""The framework's own limit: a bare aiohttp handler doing one Redis round trip, nothing else.

Usage: python -m bench.bare_app PORT REDIS_URL
"""

from __future__ import annotations

import sys

import redis.asyncio as aioredis
from aiohttp import web

REDIS: web.AppKey[aioredis.Redis] = web.AppKey("redis", aioredis.Redis)


async def handler(request: web.Request) -> web.Response:
    value = await request.app[REDIS].get("bench:bare")
    return web.json_response({"id": "bare", "status": "DONE", "value": value})


def main(argv: list[str]) -> int:
    port, url = int(argv[0]), argv[1]
    app = web.Application()
    app[REDIS] = aioredis.Redis.from_url(url)
    app.router.add_get("/", handler)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
