"""The web layer: the aiohttp app factory, the routes, and the one middleware that turns every
error into the JSON error shape ``{"error": {"code": ..., "message": ...}}``.

The web process never decodes pixels: it validates base64 and reads the image header only.
"""

from __future__ import annotations

import asyncio
import binascii
import hmac
import json
import mimetypes
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack, suppress
from multiprocessing import get_context
from typing import Any

import cattrs
import structlog
from aiohttp import web

from resizer import imaging, openapi
from resizer.config import Settings
from resizer.errors import (
    BadRequest,
    InvalidImage,
    ResizerError,
    StorageFull,
    TaskNotFound,
    TaskNotReady,
    Unauthorized,
)
from resizer.metrics import CONTENT_TYPE, Metrics
from resizer.models import (
    MAX_WAIT_SECONDS,
    CreateTaskRequest,
    ErrorBody,
    ErrorDetail,
    ImageSize,
    ImageView,
    Task,
    TaskCreated,
    TaskStatus,
    TaskView,
    Upload,
    converter,
)
from resizer.store import REDIS_DOWN, REDIS_FULL, Completions, Store, open_store, unavailable

log = structlog.get_logger("resizer.api")

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
COMPLETIONS = web.AppKey("completions", Completions)
METRICS = web.AppKey("metrics", Metrics)
DECODER = web.AppKey("decoder", ProcessPoolExecutor)

# Parsing JSON and base64 holds the GIL (about 10 ms per MB here), so a thread would still
# stall every other request: bodies this large are decoded in a child process instead
# (measured by bench/upload_latency.py).
_OFFLOAD_BYTES = 1024 * 1024
_DATA_URL = re.compile(rb"^\s*data:[\w.+/-]*(?:;[\w=.+-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = b" \t\r\n\x0b\x0c"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(payload: object, status: int = 200, **kwargs: Any) -> web.Response:
    return web.json_response(converter.unstructure(payload), status=status, **kwargs)


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response(ErrorBody(ErrorDetail(code=code, message=message)), status=status)


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def _as_resizer_error(exc: Exception) -> ResizerError | None:
    """Our own errors as they are; Redis' state as the error clients see; anything else None."""
    if isinstance(exc, ResizerError):
        return exc
    if isinstance(exc, REDIS_DOWN):
        return unavailable(exc)
    if isinstance(exc, REDIS_FULL):
        return StorageFull("the task store is full; nothing was stored, retry later")
    return None


def _http_error_response(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own 404/405/413 in our JSON shape instead of its text pages."""
    message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else ""
    if exc.status == 413:
        limit = request.app[SETTINGS].max_body_bytes
        message = f"the request body is over the limit of {limit} bytes"
    return error_response(
        exc.status, _HTTP_CODES.get(exc.status, "http_error"), message or exc.reason
    )


_PROBE_ROUTES = frozenset({"/health", "/ready", "/metrics"})


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place where errors become HTTP responses, and where each request is logged."""
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    started = time.perf_counter()
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _http_error_response(request, exc)
        except Exception as exc:
            error = _as_resizer_error(exc)
            if error is None:
                log.exception("request.crashed", method=request.method, path=request.path)
                error = ResizerError("internal error; it has been logged")
            response = error_response(error.status, error.code, error.message)
        response.headers["X-Request-Id"] = request_id
        # Originals are served as their owner uploaded them: a browser must not guess their type.
        response.headers["X-Content-Type-Options"] = "nosniff"
        if response.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"

        resource = request.match_info.route.resource
        # The route template, never the raw path: metric labels must stay few.
        route = resource.canonical if resource is not None else "<unmatched>"
        seconds = time.perf_counter() - started
        request.app[METRICS].observe(request.method, route, response.status, seconds)
        # Probes and scrapes come every few seconds: at info they would drown the real traffic.
        emit = log.debug if route in _PROBE_ROUTES else log.info
        emit(
            "request.handled",
            method=request.method,
            route=route,
            status=response.status,
            duration_ms=round(seconds * 1000, 2),
        )
        return response


# What an orchestrator probes: never behind the token.
_PUBLIC_ROUTES = frozenset({"/health", "/ready"})


@web.middleware
async def token_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With ``RESIZER_API_TOKEN`` set, every route but the probes needs ``Bearer <token>``."""
    expected = request.app[SETTINGS].api_token
    if expected and request.path not in _PUBLIC_ROUTES:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # Compared in constant time, so the answer's timing does not leak the token.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), expected.encode()
        ):
            raise Unauthorized("this server needs Authorization: Bearer <RESIZER_API_TOKEN>")
    return await handler(request)


def decode_upload(body: bytes, max_pixels: int) -> Upload:
    """Parse the JSON body, decode the base64 image, read its header, hash it.

    Pure, and CPU-bound for large bodies: runs in a thread then (hashlib and binascii release
    the GIL on large buffers).
    """
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest('the body must be a JSON object like {"data": "<base64>"}')
    try:
        request = converter.structure(payload, CreateTaskRequest)
    except cattrs.ClassValidationError as exc:
        problems = "; ".join(cattrs.transform_error(exc))
        raise BadRequest(f'"data" must be a string of base64: {problems}') from None
    data = decode_base64(request.data)
    info = imaging.inspect(data, max_pixels)
    return Upload.of(info, data)


def decode_base64(text: str) -> bytes:
    """Strict base64, tolerating a ``data:`` URL prefix and line breaks (as ``base64`` wraps)."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise InvalidImage('"data" is not base64: it has non-ASCII characters') from None
    # bytes.translate deletes in one C pass; a regex substitution takes 30x longer on 25 MB.
    raw = _DATA_URL.sub(b"", raw, count=1).translate(None, _WHITESPACE)
    if not raw:
        raise InvalidImage('"data" is empty')
    try:
        return binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error as exc:
        raise InvalidImage(f'"data" is not valid base64: {exc}') from None


def is_raw_upload(request: web.Request) -> bool:
    """A body that is the image itself rather than JSON (only when the client says so)."""
    if "Content-Type" not in request.headers:
        return False
    content_type = request.content_type
    return content_type.startswith("image/") or content_type == "application/octet-stream"


async def create_task(request: web.Request) -> web.Response:
    body = await request.read()
    max_pixels = request.app[SETTINGS].max_pixels
    if is_raw_upload(request):
        upload = Upload.of(imaging.inspect(body, max_pixels), body)
    elif len(body) > _OFFLOAD_BYTES:
        loop = asyncio.get_running_loop()
        upload = await loop.run_in_executor(request.app[DECODER], decode_upload, body, max_pixels)
    else:
        upload = decode_upload(body, max_pixels)
    task = await request.app[STORE].create_task(upload)
    log.info(
        "task.created",
        task_id=task.id,
        status=task.status,
        format=upload.info.format,
        size=upload.info.width,
    )
    return json_response(
        TaskCreated(id=task.id, status=task.status),
        status=201,
        headers={"Location": f"/tasks/{task.id}"},
    )


def _wait_seconds(request: web.Request) -> float:
    raw = request.query.get("wait")
    if raw is None:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT_SECONDS or seconds != seconds:  # NaN fails both
        raise BadRequest(
            f"wait must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}; got {raw!r}"
        )
    return seconds


async def _find_task(store: Store, task_id: str) -> Task:
    task = await store.get_task(task_id)
    if task is None:
        raise TaskNotFound(f"no task {task_id!r} (unknown, or its retention expired)")
    return task


async def get_task(request: web.Request) -> web.Response:
    """The task's status; with ``?wait=S``, answers as soon as it is DONE or FAILED (long-poll).

    Woken by the process's one subscription to the finished channel: no polling, no Redis
    connection per waiting client.
    """
    task_id = request.match_info["task_id"]
    wait = _wait_seconds(request)
    store = request.app[STORE]
    task = await _find_task(store, task_id)
    if wait and not task.status.finished:
        async with request.app[COMPLETIONS].watch(task.watch_id) as finished:
            # Re-read after registering: a finish between the two reads is not missed.
            task = await _find_task(store, task_id)
            if not task.status.finished:
                with suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(finished), wait)
                task = await _find_task(store, task_id)
    return json_response(TaskView.of(task))


async def delete_task(request: web.Request) -> web.Response:
    """Delete a task; its stored images go too unless another task shares them."""
    task_id = request.match_info["task_id"]
    if not await request.app[STORE].delete_task(task_id):
        raise TaskNotFound(f"no task {task_id!r} (unknown, or its retention expired)")
    log.info("task.deleted", task_id=task_id)
    return web.Response(status=204)


async def get_image(request: web.Request) -> web.Response:
    task_id = request.match_info["task_id"]
    raw_size = request.query.get("size")
    if raw_size is None:
        raise BadRequest("the query parameter size is required: one of original, 64, 32")
    try:
        size = ImageSize(raw_size)
    except ValueError:
        raise BadRequest(f"size must be one of original, 64, 32; got {raw_size!r}") from None
    task, image = await request.app[STORE].get_task_and_image(task_id, size)
    if task is None:
        raise TaskNotFound(f"no task {task_id!r} (unknown, or its retention expired)")
    raw = _wants_raw(request)
    if size is ImageSize.ORIGINAL:
        if image is None:
            raise TaskNotFound(f"the original image of task {task_id!r} has expired")
        if raw:
            return _raw_image(request, task, size, image)
        encoded = await asyncio.to_thread(binascii.b2a_base64, image, newline=False)
        view = ImageView(
            id=task.id,
            size=size,
            width=task.original.width,
            height=task.original.height,
            format=task.original.format,
            data=encoded.decode(),
        )
        return json_response(view)
    if task.status is not TaskStatus.DONE or image is None or task.result_format is None:
        raise TaskNotReady(
            f"task {task_id!r} is {task.status.value}; the {size.value}x{size.value} image "
            "exists once it is DONE"
        )
    if raw:
        return _raw_image(request, task, size, binascii.a2b_base64(image))
    pixels = int(size.value)
    view = ImageView(
        id=task.id,
        size=size,
        width=pixels,
        height=pixels,
        format=task.result_format,
        data=image.decode(),
    )
    return json_response(view)


def _wants_raw(request: web.Request) -> bool:
    """``?raw=1``, or an ``Accept`` that asks for an image rather than JSON."""
    if request.query.get("raw") in ("1", "true", "yes"):
        return True
    accept = request.headers.get("Accept", "")
    return "image/" in accept and "application/json" not in accept


def _raw_image(request: web.Request, task: Task, size: ImageSize, data: bytes) -> web.Response:
    fmt = task.original.format if size is ImageSize.ORIGINAL else task.result_format or "png"
    # The content of a task's image never changes: its digest and size name it for good.
    etag = f'"{task.digest[:32]}-{size.value}"'
    headers = {"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable"}
    if size is ImageSize.ORIGINAL:
        headers["Cache-Control"] = "private, max-age=3600"
    if etag in {t.strip() for t in request.headers.get("If-None-Match", "").split(",")}:
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, content_type=_content_type(fmt), headers=headers)


def _content_type(fmt: str) -> str:
    known = imaging.content_type(fmt)
    if known != "application/octet-stream":
        return known
    guessed, _ = mimetypes.guess_type(f"image.{fmt}")
    return guessed or known


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    try:
        await request.app[STORE].ping()
    except REDIS_DOWN as exc:
        err = unavailable(exc)
        return web.json_response(
            {"error": {"code": err.code, "message": err.message, "failing": ["redis"]}},
            status=503,
        )
    return web.json_response({"status": "ready", "checks": {"redis": "ok"}})


async def metrics(request: web.Request) -> web.Response:
    try:
        stats = await request.app[STORE].stats()
    except REDIS_DOWN:
        stats = None  # still export the web process's own metrics, and redis_up 0
    body = request.app[METRICS].render(stats)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


def make_app(settings: Settings, store: Store | None = None) -> web.Application:
    """The app factory that ``resizer serve`` and the tests both call.

    Without a ``store``, the app opens its own Redis pool for its lifetime (``cleanup_ctx``).
    """
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[error_middleware, token_middleware],
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()

    async def redis_pool(app: web.Application) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if store is None:
                app[STORE] = await stack.enter_async_context(open_store(settings))
            else:
                app[STORE] = store
            completions = Completions(app[STORE].redis, app[STORE].finished_channels)
            await completions.start()
            stack.push_async_callback(completions.stop)
            app[COMPLETIONS] = completions
            yield

    async def decoder_pool(app: web.Application) -> AsyncIterator[None]:
        # forkserver: never fork a process that runs an event loop and threads.
        pool = ProcessPoolExecutor(max_workers=2, mp_context=get_context("forkserver"))
        app[DECODER] = pool
        try:
            yield
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(redis_pool)
    app.cleanup_ctx.append(decoder_pool)
    app.router.add_post("/tasks", create_task)
    app.router.add_get("/tasks/{task_id}", get_task)
    app.router.add_delete("/tasks/{task_id}", delete_task)
    app.router.add_get("/tasks/{task_id}/image", get_image)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    return app


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the web server until SIGTERM/SIGINT (aiohttp's runner handles both gracefully)."""
    web.run_app(
        make_app(settings),
        host=host,
        port=port,
        access_log=None,
        print=lambda msg: log.info("server.started", host=host, port=port),
        shutdown_timeout=10,
    )
