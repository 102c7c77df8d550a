"""Every row of the API table, against a real Redis server process."""

from __future__ import annotations

import base64
import gzip
import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient
from PIL import Image

from resizer.api import COMPLETIONS, UPLOADS, make_app
from resizer.config import Settings
from resizer.embedded import free_port
from resizer.models import TaskStatus
from resizer.store import POOL_SIZE, Store, client_for
from resizer.worker import Worker
from tests.helpers import await_until, make_image, make_noise_image

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
Client = TestClient[Any, Any]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def assert_error(response: Any, status: int, code: str) -> str:
    assert response.status == status
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    assert message
    return message


async def post_image(client: Client, data: bytes) -> str:
    response = await client.post("/tasks", json={"data": b64(data)})
    assert response.status == 201, await response.text()
    task_id: str = (await response.json())["id"]
    return task_id


async def run_worker_until_idle(settings: Settings, count: int) -> None:
    """Process exactly ``count`` tasks in-process (the real worker class, burst mode)."""
    import asyncio

    async with asyncio.timeout(30):
        store = Store(client_for(settings.redis_url, socket_timeout=10), settings)
        try:
            await Worker(store, settings).run(asyncio.Event(), max_tasks=count)
        finally:
            await store.close()


# --- POST /tasks -------------------------------------------------------------------------------


@pytest.mark.topologies("single", "cluster", "sentinel")
async def test_post_creates_a_waiting_task_with_location(client: Client) -> None:
    response = await client.post("/tasks", json={"data": b64(make_image("PNG"))})
    assert response.status == 201
    body = await response.json()
    assert set(body) == {"id", "status"}
    assert body["status"] == "WAITING"
    assert response.headers["Location"] == f"/tasks/{body['id']}"


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda d: "data:image/jpeg;base64," + b64(d), id="data-url"),
        pytest.param(lambda d: base64.encodebytes(d).decode(), id="wrapped-76"),
        pytest.param(
            lambda d: "\r\n".join(b64(d)[i : i + 64] for i in range(0, len(b64(d)), 64)), id="crlf"
        ),
    ],
)
async def test_post_accepts_data_urls_and_line_breaks(
    client: Client, encode: Callable[[bytes], str]
) -> None:
    data = make_image("JPEG", size=200)
    response = await client.post("/tasks", json={"data": encode(data)})
    assert response.status == 201, await response.text()
    task_id = (await response.json())["id"]
    original = await (await client.get(f"/tasks/{task_id}/image?size=original")).json()
    assert base64.b64decode(original["data"]) == data


@pytest.mark.parametrize(
    ("body", "content"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"data"', "JSON object"),
        (b"{}", "data"),
        (b'{"data": 5}', "string"),
        (b'{"data": null}', "string"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_post_rejects_malformed_bodies_with_400(
    client: Client, body: bytes, content: str
) -> None:
    response = await client.post("/tasks", data=body, headers={"Content-Type": "application/json"})
    message = await assert_error(response, 400, "bad_request")
    assert content in message


async def test_post_rejects_a_body_over_the_limit_with_413(
    aiohttp_client: ClientFactory, real_settings: Settings
) -> None:
    small = Settings(redis_url=real_settings.redis_url, max_body_bytes=10_000)
    client = await aiohttp_client(make_app(small))
    data = make_noise_image("PNG", size=100)
    assert len(b64(data)) > 10_000
    response = await client.post("/tasks", json={"data": b64(data)})
    message = await assert_error(response, 413, "payload_too_large")
    assert "10000" in message


@pytest.mark.parametrize(
    ("data", "content"),
    [
        ("!!!not base64!!!", "base64"),
        ("abc", "base64"),  # bad padding
        ("", "empty"),
        ("   \n", "empty"),
        ("é", "base64"),
        (b64(b"hello, I am not an image"), "not an image"),
        (b64(make_image("PNG", size=40, height=30)), "square"),
        (b64(make_image("PNG", size=101)), "pixels"),  # over the limit set below
    ],
)
async def test_post_rejects_bad_images_with_422(
    aiohttp_client: ClientFactory, real_settings: Settings, data: str, content: str
) -> None:
    limited = Settings(redis_url=real_settings.redis_url, max_pixels=100 * 100)
    client = await aiohttp_client(make_app(limited))
    response = await client.post("/tasks", json={"data": data})
    message = await assert_error(response, 422, "invalid_image")
    assert content in message


async def test_post_checks_the_header_only_then_the_worker_fails_it(
    client: Client, real_settings: Settings
) -> None:
    """A PNG whose header is fine but whose pixel data is garbage: accepted, then FAILED."""
    png = make_image("PNG", size=64)
    broken = png[:60] + bytes(len(png) - 60)
    task_id = await post_image(client, broken)
    await run_worker_until_idle(real_settings, 1)
    body = await (await client.get(f"/tasks/{task_id}")).json()
    assert body["status"] == "FAILED"
    assert body["attempts"] == 1  # a decode failure is permanent: not retried
    assert "decode" in body["error"]


# --- GET /tasks/{id} ---------------------------------------------------------------------------


@pytest.mark.topologies("single", "cluster")
async def test_get_task_shows_the_record(client: Client) -> None:
    task_id = await post_image(client, make_image("PNG"))
    response = await client.get(f"/tasks/{task_id}")
    assert response.status == 200
    body = await response.json()
    assert set(body) == {"id", "status", "created_at", "updated_at", "attempts"}
    assert (body["id"], body["status"], body["attempts"]) == (task_id, "WAITING", 0)
    assert body["created_at"].endswith("Z")


async def test_get_unknown_task_is_404(client: Client) -> None:
    message = await assert_error(await client.get("/tasks/does-not-exist"), 404, "not_found")
    assert "'does-not-exist'" in message
    # An id as long as a URL takes is echoed by its start only.
    message = await assert_error(await client.get("/tasks/" + "a" * 8000), 404, "not_found")
    assert f"'{'a' * 64}'..." in message
    assert len(message) < 150, message


# --- GET /tasks/{id}/image ---------------------------------------------------------------------


@pytest.mark.topologies("single", "cluster", "sentinel")
async def test_full_cycle_original_64_and_32(client: Client, real_settings: Settings) -> None:
    data = make_image("JPEG", size=300)
    task_id = await post_image(client, data)
    await run_worker_until_idle(real_settings, 1)
    status = await (await client.get(f"/tasks/{task_id}")).json()
    assert status["status"] == TaskStatus.DONE
    assert status["attempts"] == 1
    original = await (await client.get(f"/tasks/{task_id}/image?size=original")).json()
    assert original == {
        "id": task_id,
        "size": "original",
        "width": 300,
        "height": 300,
        "format": "jpeg",
        "data": b64(data),
    }
    for size in (64, 32):
        response = await client.get(f"/tasks/{task_id}/image", params={"size": str(size)})
        assert response.status == 200
        body = await response.json()
        assert (body["id"], body["size"], body["width"], body["height"]) == (
            task_id,
            str(size),
            size,
            size,
        )
        assert body["format"] == "jpeg"
        with Image.open(io.BytesIO(base64.b64decode(body["data"]))) as img:
            assert img.size == (size, size)
            assert img.format == "JPEG"


@pytest.mark.parametrize("query", ["", "?size=", "?size=16", "?size=ORIGINAL", "?size=64x64"])
async def test_bad_or_missing_size_is_400(client: Client, query: str) -> None:
    task_id = await post_image(client, make_image("PNG"))
    message = await assert_error(
        await client.get(f"/tasks/{task_id}/image{query}"), 400, "bad_request"
    )
    assert "original, 64, 32" in message


async def test_image_of_unknown_task_is_404(client: Client) -> None:
    await assert_error(await client.get("/tasks/nope/image?size=64"), 404, "not_found")


@pytest.mark.topologies("single", "cluster")
async def test_resized_image_before_done_is_409_naming_the_status(client: Client) -> None:
    task_id = await post_image(client, make_image("PNG"))
    message = await assert_error(
        await client.get(f"/tasks/{task_id}/image?size=32"), 409, "not_ready"
    )
    assert "WAITING" in message
    original = await client.get(f"/tasks/{task_id}/image?size=original")
    assert original.status == 200


async def test_resized_image_of_a_failed_task_is_409(
    client: Client, real_settings: Settings
) -> None:
    png = make_image("PNG", size=64)
    task_id = await post_image(client, png[:60] + bytes(len(png) - 60))
    await run_worker_until_idle(real_settings, 1)
    message = await assert_error(
        await client.get(f"/tasks/{task_id}/image?size=64"), 409, "not_ready"
    )
    assert "FAILED" in message


# --- everything else is JSON too ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/", 404, "not_found"),
        ("GET", "/nope", 404, "not_found"),
        ("GET", "/tasks", 405, "method_not_allowed"),
        ("DELETE", "/tasks/abc", 404, "not_found"),
        ("PATCH", "/tasks/abc", 405, "method_not_allowed"),
        ("PUT", "/tasks", 405, "method_not_allowed"),
        ("POST", "/tasks/abc/image", 405, "method_not_allowed"),
    ],
)
async def test_unknown_routes_and_methods_get_json_errors(
    client: Client, method: str, path: str, status: int, code: str
) -> None:
    await assert_error(await client.request(method, path), status, code)


async def test_redis_down_is_503_json_not_a_hang(aiohttp_client: ClientFactory) -> None:
    dead = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client = await aiohttp_client(make_app(dead))
    for response in (
        await client.post("/tasks", json={"data": b64(make_image("PNG"))}),
        await client.get(f"/tasks/{'0' * 32}"),
        await client.get(f"/tasks/{'0' * 32}/image?size=64"),
    ):
        message = await assert_error(response, 503, "unavailable")
        assert response.headers["Retry-After"] == "5"
        assert "Redis" in message
    ready = await client.get("/ready")
    assert ready.status == 503
    assert ready.headers["Retry-After"] == "5"
    assert (await ready.json())["error"]["failing"] == ["redis"]
    assert (await client.get("/health")).status == 200


@pytest.mark.topologies("single", "cluster", "sentinel")
async def test_health_and_ready(client: Client) -> None:
    assert (await client.get("/health")).status == 200
    ready = await client.get("/ready")
    assert ready.status == 200
    assert json.loads(await ready.text())["checks"] == {"redis": "ok"}


# --- long-poll ---------------------------------------------------------------------------------


@pytest.mark.topologies("single", "cluster", "sentinel")
async def test_wait_answers_as_soon_as_the_task_finishes(
    client: Client, real_settings: Settings
) -> None:
    import asyncio

    task_id = await post_image(client, make_image("PNG", unique=True))
    waiter = asyncio.create_task(client.get(f"/tasks/{task_id}", params={"wait": "30"}))
    await asyncio.sleep(0)  # let the request start before the worker does
    await run_worker_until_idle(real_settings, 1)
    async with asyncio.timeout(10):  # far below the 30 s it would take without a wake-up
        response = await waiter
    assert response.status == 200
    assert (await response.json())["status"] == "DONE"


async def test_wait_on_a_task_that_joined_another_wakes_when_that_one_finishes(
    client: Client, real_settings: Settings
) -> None:
    import asyncio

    image = make_image("PNG", unique=True)
    await post_image(client, image)
    joined = await post_image(client, image)  # the same bytes in flight: it joins the first
    waiter = asyncio.create_task(client.get(f"/tasks/{joined}", params={"wait": "30"}))

    async def watching() -> bool:
        # Two watches: the task's own id, and the id of the task it joined.
        return client.app is not None and client.app[COMPLETIONS].waiting == 2

    await await_until(watching, 10, "the long-poll to watch before the worker starts")
    await run_worker_until_idle(real_settings, 1)
    async with asyncio.timeout(10):  # far below the 30 s it would take without a wake-up
        response = await waiter
    assert (await response.json())["status"] == "DONE"


async def test_wait_times_out_with_the_current_status(client: Client) -> None:
    import time

    task_id = await post_image(client, make_image("PNG", unique=True))
    started = time.monotonic()
    response = await client.get(f"/tasks/{task_id}", params={"wait": "0.3"})
    assert time.monotonic() - started >= 0.3
    assert (await response.json())["status"] == "WAITING"


async def test_many_concurrent_waiters_share_one_subscription(
    client: Client, real_settings: Settings
) -> None:
    import asyncio

    import aiohttp
    import redis

    ids = [await post_image(client, make_image("PNG", unique=True)) for _ in range(5)]
    admin = redis.Redis.from_url(real_settings.redis_url)
    connections_before = len(admin.client_list())
    # A session of its own: the test client's connection pool stops at 100.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        waiters = [
            asyncio.create_task(
                session.get(client.make_url(f"/tasks/{ids[i % 5]}"), params={"wait": "30"})
            )
            for i in range(300)
        ]

        async def all_registered() -> bool:
            waiting: int = client.app[COMPLETIONS].waiting
            return waiting == 300

        await await_until(all_registered, 20, "300 registered waiters")
        # Waiting holds no Redis connection per client: the bounded pool (plus the one
        # subscription) is all the process ever opens, whatever the number of waiters.
        assert len(admin.client_list()) <= connections_before + POOL_SIZE + 1
        admin.close()
        await run_worker_until_idle(real_settings, 5)
        async with asyncio.timeout(10):
            responses = await asyncio.gather(*waiters)
        bodies = [await r.json() for r in responses]
    assert [b["status"] for b in bodies] == ["DONE"] * 300
    assert client.app[COMPLETIONS].waiting == 0


@pytest.mark.parametrize("wait", ["-1", "31", "soon", "nan"])
async def test_bad_wait_is_400(client: Client, wait: str) -> None:
    task_id = await post_image(client, make_image("PNG"))
    message = await assert_error(
        await client.get(f"/tasks/{task_id}?wait={wait}"), 400, "bad_request"
    )
    assert "wait" in message


async def test_wait_on_an_unknown_task_is_404(client: Client) -> None:
    await assert_error(await client.get("/tasks/nope?wait=5"), 404, "not_found")


# --- deduplication -----------------------------------------------------------------------------


async def redis_bytes(url: str) -> int:
    """What resizer's keys occupy in Redis (every partition, every primary), by MEMORY USAGE."""
    admin = client_for(url)
    try:
        total = 0
        async for key in admin.scan_iter(match="{resizer*"):
            total += await admin.memory_usage(key) or 0
        return total
    finally:
        await admin.aclose()


@pytest.mark.topologies("single", "cluster")
async def test_the_same_image_twice_is_stored_once_and_resized_once(
    client: Client, real_settings: Settings
) -> None:
    data = make_noise_image("PNG", size=200)  # ~120 KB that do not compress
    first = await post_image(client, data)
    after_first = await redis_bytes(real_settings.redis_url)
    second = await post_image(client, data)
    after_second = await redis_bytes(real_settings.redis_url)
    assert after_first > len(data)
    saved = len(data) - (after_second - after_first)
    assert after_second - after_first < 2_000, "the second task must not copy the image"
    assert saved > 0.98 * len(data)

    await run_worker_until_idle(real_settings, 1)  # one resize serves both
    for task_id in (first, second):
        body = await (await client.get(f"/tasks/{task_id}")).json()
        assert body["status"] == "DONE"
    sizes = [
        (await (await client.get(f"/tasks/{t}/image?size=64")).json())["data"]
        for t in (first, second)
    ]
    assert sizes[0] == sizes[1]

    third = await client.post("/tasks", json={"data": b64(data)})
    assert third.status == 201
    assert (await third.json())["status"] == "DONE"  # no queueing at all


# --- raw images --------------------------------------------------------------------------------


@pytest.mark.topologies("single", "cluster")
async def test_raw_image_with_content_type_etag_and_304(
    client: Client, real_settings: Settings
) -> None:
    data = make_image("JPEG", size=128, unique=True)
    task_id = await post_image(client, data)
    await run_worker_until_idle(real_settings, 1)
    for request in (
        client.get(f"/tasks/{task_id}/image?size=64", headers={"Accept": "image/*"}),
        client.get(f"/tasks/{task_id}/image?size=64&raw=1"),
    ):
        response = await request
        assert response.status == 200
        assert response.content_type == "image/jpeg"
        assert "immutable" in response.headers["Cache-Control"]
        body = await response.read()
        with Image.open(io.BytesIO(body)) as img:
            assert (img.format, img.size) == ("JPEG", (64, 64))
        etag = response.headers["ETag"]
    again = await client.get(
        f"/tasks/{task_id}/image?size=64&raw=1", headers={"If-None-Match": etag}
    )
    assert again.status == 304
    assert await again.read() == b""
    original = await client.get(f"/tasks/{task_id}/image?size=original&raw=1")
    assert original.content_type == "image/jpeg"
    assert await original.read() == data
    other = await client.get(f"/tasks/{task_id}/image?size=32&raw=1")
    assert other.headers["ETag"] != etag
    json_default = await client.get(f"/tasks/{task_id}/image?size=64")
    assert json_default.content_type == "application/json"


async def test_raw_image_before_done_is_still_a_json_409(client: Client) -> None:
    task_id = await post_image(client, make_image("PNG", unique=True))
    response = await client.get(f"/tasks/{task_id}/image?size=64", headers={"Accept": "image/*"})
    await assert_error(response, 409, "not_ready")


# --- large bodies are decoded as they arrive, with the same answers -------------------------------


async def test_a_large_body_is_decoded_as_it_arrives_with_the_same_answers(
    client: Client,
) -> None:
    data = make_noise_image("PNG", size=700)  # ~1.5 MB: many network chunks
    assert len(b64(data)) > 1024 * 1024
    task_id = await post_image(client, data)
    original = await (await client.get(f"/tasks/{task_id}/image?size=original&raw=1")).read()
    assert original == data

    not_base64 = json.dumps({"data": "*" * (1100 * 1024)})
    as_json = {"Content-Type": "application/json"}
    response = await client.post("/tasks", data=not_base64, headers=as_json)
    assert "base64" in await assert_error(response, 422, "invalid_image")
    not_json = b"{" + b" " * (1100 * 1024)
    response = await client.post("/tasks", data=not_json, headers=as_json)
    assert "JSON" in await assert_error(response, 400, "bad_request")
    wide = make_noise_image("PNG", size=700)[:16] + bytes(1100 * 1024)  # a broken PNG
    response = await client.post("/tasks", json={"data": b64(wide)})
    await assert_error(response, 422, "invalid_image")


# --- raw uploads --------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream"])
async def test_a_raw_upload_is_the_same_task_as_the_json_one(
    client: Client, content_type: str
) -> None:
    data = make_image("PNG", unique=True)
    response = await client.post("/tasks", data=data, headers={"Content-Type": content_type})
    assert response.status == 201
    created = await response.json()
    assert created["status"] == "WAITING"
    # The same bytes as JSON join the raw upload's task: same content, same digest.
    again = await post_image(client, data)
    stored = await client.get(f"/tasks/{again}/image?size=original&raw=1")
    assert await stored.read() == data


async def test_a_raw_upload_gets_the_same_checks(client: Client) -> None:
    headers = {"Content-Type": "image/png"}
    wide = make_image("PNG", size=40, height=30)
    response = await client.post("/tasks", data=wide, headers=headers)
    assert "square" in await assert_error(response, 422, "invalid_image")
    response = await client.post("/tasks", data=b"", headers=headers)
    await assert_error(response, 422, "invalid_image")


@pytest.mark.parametrize("content_type", ["application/json", "image/png"])
async def test_a_compressed_body_is_415(client: Client, content_type: str) -> None:
    data = make_image("PNG", unique=True)
    body = json.dumps({"data": b64(data)}).encode() if "json" in content_type else data
    for encoding in ("gzip", "deflate", "GZIP", "identity, gzip"):
        headers = {"Content-Type": content_type, "Content-Encoding": encoding}
        response = await client.post("/tasks", data=gzip.compress(body), headers=headers)
        message = await assert_error(response, 415, "unsupported_encoding")
        assert "Content-Encoding" in message
    headers = {"Content-Type": content_type, "Content-Encoding": "identity"}
    response = await client.post("/tasks", data=body, headers=headers)
    assert response.status == 201, await response.text()


# --- DELETE /tasks/{id} ---------------------------------------------------------------------------


@pytest.mark.topologies("single", "cluster")
async def test_delete_answers_204_then_the_task_is_gone(
    client: Client, real_settings: Settings
) -> None:
    task_id = await post_image(client, make_image("PNG", unique=True))
    response = await client.delete(f"/tasks/{task_id}")
    assert response.status == 204
    await assert_error(await client.get(f"/tasks/{task_id}"), 404, "not_found")
    await assert_error(await client.delete(f"/tasks/{task_id}"), 404, "not_found")
    # The worker that takes its id drops it: no FAILED ghost, nothing left in Redis but counters.
    await run_worker_until_idle(real_settings, 0)


# --- optional access control --------------------------------------------------------------------


async def test_a_token_guards_every_route_but_the_probes(
    aiohttp_client: ClientFactory, real_settings: Settings
) -> None:
    guarded = Settings(redis_url=real_settings.redis_url, api_token="s3cret-token")
    client = await aiohttp_client(make_app(guarded))
    for path in ("/health", "/ready"):
        assert (await client.get(path)).status == 200
    image = {"data": b64(make_image("PNG", unique=True))}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
        for response in (
            await client.post("/tasks", json=image, headers=headers),
            await client.get(f"/tasks/{'0' * 32}", headers=headers),
            await client.get("/metrics", headers=headers),
        ):
            assert "RESIZER_API_TOKEN" in await assert_error(response, 401, "unauthorized")
            assert response.headers["WWW-Authenticate"] == "Bearer"
    good = {"Authorization": "Bearer s3cret-token"}
    response = await client.post("/tasks", json=image, headers=good)
    assert response.status == 201
    task_id = (await response.json())["id"]
    assert (await client.get(f"/tasks/{task_id}", headers=good)).status == 200


async def test_every_answer_forbids_content_sniffing(client: Client) -> None:
    task_id = await post_image(client, make_image("PNG", unique=True))
    for response in (
        await client.get(f"/tasks/{task_id}/image?size=original&raw=1"),
        await client.get(f"/tasks/{task_id}"),
        await client.get("/nope"),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"


# --- hostile bodies -----------------------------------------------------------------------------


async def test_deeply_nested_json_is_a_400(client: Client) -> None:
    for body in (b"[" * 100_000, b'{"a": ' + b"[" * 100_000):
        response = await client.post(
            "/tasks", data=body, headers={"Content-Type": "application/json"}
        )
        await assert_error(response, 400, "bad_request")


async def test_a_stalled_body_is_answered_408_and_its_connection_closed(
    aiohttp_server: Callable[[web.Application], Awaitable[Any]], real_settings: Settings
) -> None:
    import asyncio
    import time

    impatient = attrs.evolve(real_settings, body_timeout_seconds=0.5)
    server = await aiohttp_server(make_app(impatient))
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    await writer.drain()
    started = time.monotonic()
    async with asyncio.timeout(10):
        answer = await reader.read()  # until the server closes the connection
    held = time.monotonic() - started
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"RESIZER_BODY_TIMEOUT" in answer
    assert held < 5, f"the connection was held {held:.1f} s"


async def drip(writer: Any, data: bytes, size: int, every: float) -> None:
    """Send ``data`` ``size`` bytes at a time, one piece every ``every`` seconds."""
    import asyncio

    for i in range(0, len(data), size):
        writer.write(data[i : i + size])
        await asyncio.sleep(every)


@pytest.mark.parametrize(
    ("burst", "piece"),
    [(0, 10), (50_000, 1)],
    ids=["steady-50-bytes-a-second", "a-burst-then-a-trickle"],
)
async def test_a_body_slower_than_the_minimum_rate_is_a_408(
    aiohttp_server: Callable[[web.Application], Awaitable[Any]],
    real_settings: Settings,
    burst: int,
    piece: int,
) -> None:
    """Never stalled long enough for RESIZER_BODY_TIMEOUT, yet under RESIZER_BODY_MIN_RATE:
    a piece every 0.2 s. The rate holds over every RESIZER_BODY_TIMEOUT of the body, not on
    average: 50 KB at once do not buy 500 s of trickling at 100 bytes a second."""
    import asyncio
    import time

    slow = attrs.evolve(real_settings, body_timeout_seconds=0.5, body_min_rate=100)
    server = await aiohttp_server(make_app(slow))
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 100000\r\n\r\n" + b"\0" * burst
    )
    started = time.monotonic()
    sending = asyncio.create_task(drip(writer, b"\0" * (100_000 - burst), piece, 0.2))
    async with asyncio.timeout(10):
        answer = await reader.read()  # until the server closes the connection
    held = time.monotonic() - started
    sending.cancel()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b"RESIZER_BODY_MIN_RATE" in answer
    assert held < 5, f"the connection was held {held:.1f} s"


async def test_uploads_past_the_budget_are_503_and_it_is_given_back(
    aiohttp_server: Callable[[web.Application], Awaitable[Any]], real_settings: Settings
) -> None:
    """RESIZER_UPLOAD_BUDGET: one upload holds 60 KB of a 100 KB budget while it pauses; a
    second one of 60 KB is refused (503, Retry-After); once the first is stored, a third gets in,
    and nothing stays held."""
    import asyncio

    tight = attrs.evolve(real_settings, upload_budget_bytes=100_000, body_timeout_seconds=10)
    app = make_app(tight)
    server = await aiohttp_server(app)
    first, second, third = (make_noise_image("PNG", size=160) for _ in range(3))
    assert 60_000 < len(first) < 100_000
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {len(first)}\r\n\r\n".encode()
        + first[:60_000]
    )

    async def held() -> bool:
        return app[UPLOADS].held == 60_000

    await await_until(held, 10, "the first upload's 60 KB")
    async with ClientSession() as session:
        url = f"http://{server.host}:{server.port}/tasks"
        headers = {"Content-Type": "image/png"}
        async with session.post(url, data=second, headers=headers) as refused:
            assert await assert_error(refused, 503, "overloaded")
            assert refused.headers["Retry-After"] == "1"
        writer.write(first[60_000:])
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 201"), head
        async with session.post(url, data=third, headers=headers) as taken:
            assert taken.status == 201, await taken.text()
    writer.close()
    assert app[UPLOADS].held == 0


async def test_one_upload_over_the_budget_alone_gets_in(
    aiohttp_server: Callable[[web.Application], Awaitable[Any]], real_settings: Settings
) -> None:
    tight = attrs.evolve(real_settings, upload_budget_bytes=1_000)
    app = make_app(tight)
    client = await aiohttp_server(app)
    data = make_noise_image("PNG", size=60)
    assert len(data) > 1_000
    async with ClientSession() as session:
        url = f"http://{client.host}:{client.port}/tasks"
        async with session.post(url, data=data, headers={"Content-Type": "image/png"}) as taken:
            assert taken.status == 201, await taken.text()
    assert app[UPLOADS].held == 0


async def test_a_slow_body_over_the_minimum_rate_is_taken(
    aiohttp_server: Callable[[web.Application], Awaitable[Any]], real_settings: Settings
) -> None:
    import asyncio

    slow = attrs.evolve(real_settings, body_timeout_seconds=0.5, body_min_rate=100)
    server = await aiohttp_server(make_app(slow))
    body = json.dumps({"data": b64(make_image("PNG", size=8, unique=True))}).encode()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    await drip(writer, body, 30, 0.1)  # 300 bytes a second, for over a second
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 201"), head


@pytest.mark.parametrize(
    ("served_first", "sent"),
    [
        (False, b""),
        (True, b""),
        (False, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "),
        (True, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "),
    ],
    ids=["idle-new", "idle-after-a-request", "slow-headers-new", "slow-headers-after-a-request"],
)
async def test_a_connection_without_a_whole_request_is_closed(
    aiohttp_server: Callable[[web.Application], Awaitable[Any]],
    real_settings: Settings,
    served_first: bool,
    sent: bytes,
) -> None:
    """RESIZER_IDLE_TIMEOUT: a connection left idle, or sending its headers a byte at a time
    (slowloris), is closed unanswered, whether or not it was served a request before."""
    import asyncio
    import time

    impatient = attrs.evolve(real_settings, idle_timeout_seconds=0.5)
    server = await aiohttp_server(make_app(impatient))
    reader, writer = await asyncio.open_connection(server.host, server.port)
    if served_first:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
    writer.write(sent)
    started = time.monotonic()
    # A byte every 0.1 s: never a pause as long as the timeout.
    sending = asyncio.create_task(drip(writer, b"a" * 10_000, 1, 0.1) if sent else asyncio.sleep(0))
    async with asyncio.timeout(10):
        rest = await reader.read()  # until the server closes the connection
    held = time.monotonic() - started
    sending.cancel()
    writer.close()
    assert rest == b""
    assert held < 5, f"the connection was held {held:.1f} s"


async def test_a_client_that_stops_reading_an_original_is_dropped(
    aiohttp_server: Callable[[web.Application], Awaitable[Any]], real_settings: Settings
) -> None:
    import asyncio
    import socket
    import time

    impatient = attrs.evolve(real_settings, body_timeout_seconds=0.5)
    server = await aiohttp_server(make_app(impatient))
    data = make_noise_image("PNG", size=1600)  # ~7.7 MB: more than the sockets can buffer
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (server.host, server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201")
    body = await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
    task_id = json.loads(body)["id"]
    writer.write(f"GET /tasks/{task_id}/image?size=original HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(0)  # ... and never read the answer
    started = time.monotonic()
    while time.monotonic() - started < 10:
        # The server aborts the connection; the client sees it only once it reads.
        if server.handler.connections == []:
            break
        await asyncio.sleep(0.05)
    assert server.handler.connections == [], "the stalled reader still holds its connection"
    writer.close()


@pytest.mark.topologies("single", "cluster")
async def test_a_large_original_streams_as_json_and_raw(client: Client) -> None:
    data = make_noise_image("PNG", size=1200)  # ~4.3 MB: many pieces
    response = await client.post("/tasks", data=data, headers={"Content-Type": "image/png"})
    task_id = (await response.json())["id"]
    as_json = await client.get(f"/tasks/{task_id}/image?size=original")
    assert as_json.content_length == len(await as_json.read())
    assert base64.b64decode((await as_json.json())["data"]) == data
    raw = await client.get(f"/tasks/{task_id}/image?size=original&raw=1")
    assert raw.headers["X-Content-Type-Options"] == "nosniff"
    assert await raw.read() == data


async def expecting(server: Any, head: bytes) -> tuple[bytes, float, Any, Any]:
    """Send a request's head with ``Expect: 100-continue`` and read what comes first."""
    import asyncio
    import time

    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(head + b"Expect: 100-continue\r\n\r\n")
    started = time.monotonic()
    async with asyncio.timeout(10):
        first = await reader.readuntil(b"\r\n\r\n")
    return first, started, reader, writer


@pytest.mark.parametrize(
    ("head", "status", "code"),
    [
        (b"Content-Length: 100000000\r\n", 413, "payload_too_large"),
        (b"Content-Length: 1000\r\nContent-Encoding: gzip\r\n", 415, "unsupported_encoding"),
        (b"Content-Length: 1000\r\nAuthorization: Bearer wrong\r\n", 401, "unauthorized"),
    ],
    ids=["too-large", "compressed", "no-token"],
)
async def test_a_body_refused_from_its_headers_is_not_invited(
    aiohttp_server: Callable[[web.Application], Awaitable[Any]],
    real_settings: Settings,
    head: bytes,
    status: int,
    code: str,
) -> None:
    """``Expect: 100-continue`` with a body that will be refused: the error at once, no ``100
    Continue`` (the client would send 100 MB for nothing), and the connection closed."""
    import asyncio
    import time

    server = await aiohttp_server(make_app(attrs.evolve(real_settings, api_token="secret")))
    authorized = b"" if b"Authorization" in head else b"Authorization: Bearer secret\r\n"
    first, started, reader, writer = await expecting(
        server,
        b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n" + authorized + head,
    )
    assert first.startswith(b"HTTP/1.1 %d" % status), first
    assert b"Connection: close" in first
    async with asyncio.timeout(10):
        body = await reader.read()  # until the server closes the connection
    writer.close()
    assert json.loads(body)["error"]["code"] == code
    held = time.monotonic() - started
    assert held < 5, f"the connection was held {held:.1f} s"


async def test_a_body_that_will_be_read_is_invited(
    aiohttp_server: Callable[[web.Application], Awaitable[Any]], real_settings: Settings
) -> None:
    server = await aiohttp_server(make_app(real_settings))
    image = make_image("PNG", size=64, unique=True)
    first, _, reader, writer = await expecting(
        server,
        b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: %d\r\n" % len(image),
    )
    assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(image)
    import asyncio

    async with asyncio.timeout(10):
        answer = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert answer.startswith(b"HTTP/1.1 201"), answer


def chunked(data: bytes, size: int) -> bytes:
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


async def test_a_body_in_tiny_chunks_is_refused_and_its_connection_closed(
    aiohttp_server: Callable[[web.Application], Awaitable[Any]], real_settings: Settings
) -> None:
    """aiohttp takes each chunk of a chunked body in Python: 1-byte chunks cost the web 60 times
    the CPU of the same bytes sent plain. Past 1000 pieces, they must bring 64 bytes on average."""
    import asyncio

    server = await aiohttp_server(make_app(real_settings))
    head = (
        b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(server.host, server.port)
    # 1100 chunks (6.6 KB, read off the socket at once: the answer is not lost to a reset).
    writer.write(head + chunked(b"Q" * 1100, 1))
    async with asyncio.timeout(10):
        answer = await reader.read()  # until the server closes the connection
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"send it in chunks of 64 bytes or more" in answer
    # The same image in chunks of 100 bytes, or of 64 KiB, is stored.
    for size in (100, 65536):
        image = make_noise_image("PNG", size=200)
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(head + chunked(image, size))
        async with asyncio.timeout(30):
            answer = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        assert answer.startswith(b"HTTP/1.1 201"), (size, answer)
