"""The web layer: the aiohttp app factory, the routes, and the one middleware that turns every
error into the JSON error shape ``{"error": {"code": ..., "message": ...}}``.

The web process never decodes pixels: it validates base64 and reads the image header only.
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import hmac
import json
import logging
import mimetypes
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager, suppress
from http import HTTPStatus
from typing import Any

import attrs
import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_request import BaseRequest

from resizer import faults, header, memory, openapi, shutdown
from resizer.config import Settings
from resizer.errors import (
    BadRequest,
    FragmentedBody,
    ImageGone,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ResizerError,
    StorageFull,
    TaskNotFound,
    TaskNotReady,
    Unauthorized,
    UnsupportedEncoding,
)
from resizer.listener import (
    PAUSE_REASONS,
    Listener,
    bind,
    connection_cap,
    raise_open_files_limit,
)
from resizer.metrics import Metrics, cluster_response
from resizer.models import (
    MAX_WAIT_SECONDS,
    ErrorBody,
    ErrorDetail,
    ImageSize,
    ImageView,
    QueueInfo,
    Task,
    TaskCreated,
    TaskStatus,
    TaskView,
    Upload,
    converter,
)
from resizer.store import (
    REDIS_DOWN,
    REDIS_FULL,
    Completions,
    Store,
    open_store,
    outage_event,
    unavailable,
)
from resizer.upload import JsonUpload, RawUpload

log = structlog.get_logger("resizer.api")

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
COMPLETIONS = web.AppKey("completions", Completions)
METRICS = web.AppKey("metrics", Metrics)
REQUEST_ID = web.RequestKey("request_id", str)
MAIN = web.AppKey("main", web.Application)
"""The app whose state (store, metrics) the metrics routes read."""


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(payload: object, status: int = 200, **kwargs: Any) -> web.Response:
    return web.json_response(converter.unstructure(payload), status=status, **kwargs)


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response(ErrorBody(ErrorDetail(code=code, message=message)), status=status)


_HTTP_CODES = {
    400: "bad_request",
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
    request_id = request[REQUEST_ID] = request.headers.get("X-Request-Id") or uuid.uuid4().hex
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
            elif isinstance(exc, REDIS_DOWN + REDIS_FULL):
                # The answer names the state; Redis's own words are for the operator.
                log.warning(
                    outage_event(exc),
                    method=request.method,
                    path=request.path,
                    error=str(exc) or exc.__class__.__name__,
                )
            response = error_response(error.status, error.code, error.message)
            if error.retry_after is not None:
                response.headers["Retry-After"] = str(error.retry_after)
            if error.closes_connection or request.get(BODY_NOT_INVITED):
                await _send_and_close(request, response)

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


async def _common_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Headers of every answer, streamed ones included (``on_response_prepare``)."""
    response.headers["X-Request-Id"] = request[REQUEST_ID]
    # Originals are served as their owner uploaded them: a browser must not guess their type.
    response.headers["X-Content-Type-Options"] = "nosniff"
    if response.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"


async def _send_and_close(request: web.Request, response: web.Response) -> None:
    """Answer, then close the connection at once: aiohttp would otherwise keep reading what
    is left of a stalled body for its lingering time."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()


# What an orchestrator probes: never behind the token.
_PUBLIC_ROUTES = frozenset({"/health", "/ready"})


def _authorized(request: web.Request) -> bool:
    """With ``RESIZER_API_TOKEN`` set, every route but the probes needs ``Bearer <token>``."""
    expected = request.app[SETTINGS].api_token
    if not expected or request.path in _PUBLIC_ROUTES:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Compared in constant time, so the answer's timing does not leak the token.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), expected.encode()
    )


@web.middleware
async def token_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not _authorized(request):
        raise Unauthorized("this server needs Authorization: Bearer <RESIZER_API_TOKEN>")
    return await handler(request)


def _refused_body(request: web.Request) -> ResizerError | None:
    """What refuses a body from its headers alone, before a byte of it is read."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return UnsupportedEncoding(
            f"Content-Encoding {encoding!r} is not accepted: send the body as it is "
            "(images are compressed already)"
        )
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
    return None


BODY_NOT_INVITED = web.RequestKey("body_not_invited", bool)


async def expect_continue(request: web.Request) -> None:
    """``Expect: 100-continue`` (curl sends it for bodies over 1 MiB) is answered ``100
    Continue`` only when the body will be read. A body refused from its headers, or a request
    without the token, gets its error at once and the client never sends the body; its
    connection is closed after the answer, as the body it announced will not come.

    Other expectations are ignored, as RFC 9110 allows, rather than answered 417.
    """
    if request.version != (1, 1):  # HTTP/1.0 knows no Expect
        return
    if request.headers.get("Expect", "").strip().lower() != "100-continue":
        return
    if not _authorized(request) or _refused_body(request) is not None:
        request[BODY_NOT_INVITED] = True
        return
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the answer's own size starts after it


class UploadBudget:
    """The upload bytes a web process holds at once (``RESIZER_UPLOAD_BUDGET``).

    An upload is held whole until it is stored, so without a bound the process would grow with
    every upload in flight. An upload that would take the total past the limit is refused with
    a 503 (``Overloaded``), unless it is the only one: the largest body allowed always gets in.
    Bytes are counted as they arrive, not as declared, so a client must send them to use them.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    @contextmanager
    def holding(self) -> Iterator[Callable[[int], None]]:
        """A ``take(n)`` for one upload's bytes; all it took is given back on exit."""
        mine = 0

        def take(n: int) -> None:
            nonlocal mine
            if self.held > mine and self.held + n > self.limit:
                raise Overloaded(
                    f"this server holds its limit of {self.limit} bytes of uploads in flight "
                    "(RESIZER_UPLOAD_BUDGET); retry in a moment"
                )
            self.held += n
            mine += n

        try:
            yield take
        finally:
            self.held -= mine


UPLOADS = web.AppKey("uploads", UploadBudget)


MIN_PIECE_BYTES = 64
"""What a piece of a body (a chunk of a chunked one, or what a read off the socket brought) must
bring on average, past its first 1000. aiohttp takes each chunk in Python: a body of 1-byte
chunks cost the web 0.56 s of CPU for 5.9 MB on the wire, against 0.01 s for 6 MB sent plain."""


async def read_body(
    request: web.Request,
    feed: Callable[[bytes], None],
    settings: Settings,
    take: Callable[[int], None],
) -> None:
    """Hand the body to ``feed`` as it arrives, each chunk counted by ``take`` first (the
    upload budget), within the size limit, the stall timeout and the minimum rate."""
    limit = settings.max_body_bytes
    refused = _refused_body(request)
    if refused is not None:
        raise refused
    stall, rate = settings.body_timeout_seconds, settings.body_min_rate
    # Each ``stall`` seconds of the body must bring ``quota`` bytes: a pause may last ``stall``,
    # and a client that sends a burst, then a byte now and then, cannot hold what it sent.
    quota = max(1, int(rate * stall))
    received, window, window_ends = 0, 0, time.monotonic() + stall
    pieces = 0
    while True:
        try:
            async with asyncio.timeout(max(window_ends - time.monotonic(), 0)):
                # A chunked body a chunk at a time, so that its chunks are counted below.
                chunk, chunk_ended = await request.content.readchunk()
        except TimeoutError:
            if quota == 1:
                raise RequestTimeout(
                    f"no part of the body arrived for {stall:g} s "
                    "(RESIZER_BODY_TIMEOUT); the connection is closed"
                ) from None
            raise RequestTimeout(
                f"the body brought less than {quota} bytes in {stall:g} s: it must arrive at "
                f"{rate} bytes a second (RESIZER_BODY_MIN_RATE) over every RESIZER_BODY_TIMEOUT; "
                "the connection is closed"
            ) from None
        if not chunk and not chunk_ended:
            return
        received += len(chunk)
        pieces += 1
        if pieces > 1000 + received // MIN_PIECE_BYTES:
            raise FragmentedBody(
                f"the body arrives in pieces of {received // pieces} bytes on average: send it "
                f"in chunks of {MIN_PIECE_BYTES} bytes or more"
            )
        if received > limit:
            raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
        take(len(chunk))
        feed(chunk)
        window += len(chunk)
        if window >= quota:
            window, window_ends = 0, time.monotonic() + stall


def is_raw_upload(request: web.Request) -> bool:
    """A body that is the image itself rather than JSON (only when the client says so)."""
    if "Content-Type" not in request.headers:
        return False
    content_type = request.content_type
    return content_type.startswith("image/") or content_type == "application/octet-stream"


async def create_task(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    reader = RawUpload() if is_raw_upload(request) else JsonUpload()
    with request.app[UPLOADS].holding() as take:
        await read_body(request, reader.feed, settings, take)
        data, digest = reader.finish()
        info = header.inspect(data, settings.max_pixels, settings.max_decode_bytes)
        upload = Upload(info=info, data=data, digest=digest)
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


def _no_task(task_id: str) -> TaskNotFound:
    # The id comes from the URL, up to 8 KB of it: an error echoes its start only.
    shown = repr(task_id) if len(task_id) <= 64 else repr(task_id[:64]) + "..."
    return TaskNotFound(f"no task {shown} (unknown, or its retention expired)")


async def _find_task(store: Store, task_id: str) -> Task:
    task = await store.get_task(task_id)
    if task is None:
        raise _no_task(task_id)
    return task


async def get_task(request: web.Request) -> web.Response:
    """The task's status; with ``?wait=S``, answers as soon as it is DONE or FAILED (long-poll).

    Woken by the process's one subscription to the finished channel: no polling, no Redis
    connection per waiting client.
    """
    task_id = request.match_info["task_id"]
    wait = _wait_seconds(request)
    store = request.app[STORE]
    if not wait:
        return json_response(TaskView.of(await _find_task(store, task_id)))
    completions = request.app[COMPLETIONS]
    # Watched before the first read, so a finish right after it is not missed: one read less
    # than reading, watching, then reading again. A task that joined another finishes when
    # that one does: watched once its leader is known, then read again.
    async with completions.watch(task_id) as finished:
        task = await _find_task(store, task_id)
        if task.status.finished:
            return json_response(TaskView.of(task))
        async with AsyncExitStack() as stack:
            if task.watch_id != task_id:
                finished = await stack.enter_async_context(completions.watch(task.watch_id))
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
        raise _no_task(task_id)
    log.info("task.deleted", task_id=task_id)
    return web.Response(status=204)


async def get_image(request: web.Request) -> web.StreamResponse:
    task_id = request.match_info["task_id"]
    size = _image_size(request)
    store = request.app[STORE]
    raw = _wants_raw(request)
    if size is ImageSize.ORIGINAL:
        return await _send_original(request, await _find_task(store, task_id), raw)
    task, image = await store.get_task_and_image(task_id, size)
    if task is None:
        raise _no_task(task_id)
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


def _image_size(request: web.Request) -> ImageSize:
    raw_size = request.query.get("size")
    choices = ", ".join(s.value for s in ImageSize)
    if raw_size is None:
        raise BadRequest(f"the query parameter size is required: one of {choices}")
    try:
        return ImageSize(raw_size)
    except ValueError:
        raise BadRequest(f"size must be one of {choices}; got {raw_size!r}") from None


# Read from Redis and written to the client a piece at a time, so a client that reads slowly (or
# not at all) costs the server one piece, not the image. A multiple of 3: whole base64 quanta.
_PIECE = 3 * 64 * 1024


async def _send_original(request: web.Request, task: Task, raw: bool) -> web.StreamResponse:
    store = request.app[STORE]
    length = await store.original_length(task)
    if length == 0:
        raise ImageGone(
            f"the original image of task {task.id!r} is no longer kept (its retention ran out); "
            "the resized sizes may still be"
        )
    if raw:
        headers = _cache_headers(task, ImageSize.ORIGINAL)
        if _not_modified(request, headers):
            return web.Response(status=304, headers=headers)
        response = web.StreamResponse(headers=headers)
        response.content_type = _content_type(task.original.format)
        response.content_length = length
        encode = None
        prefix = suffix = b""
    else:
        envelope = ImageView(
            id=task.id,
            size=ImageSize.ORIGINAL,
            width=task.original.width,
            height=task.original.height,
            format=task.original.format,
            data="",
        )
        text = json.dumps(converter.unstructure(envelope)).encode()
        prefix, suffix = text[: -len(b'"}')], b'"}'  # the data string is written in between
        response = web.StreamResponse()
        response.content_type = "application/json"
        response.content_length = len(prefix) + 4 * -(-length // 3) + len(suffix)
        encode = functools.partial(binascii.b2a_base64, newline=False)
    await response.prepare(request)
    writer = _Writer(request, response, request.app[SETTINGS].body_timeout_seconds)
    try:
        await writer.write(prefix)
        for start in range(0, length, _PIECE):
            piece = await store.read_original(task, start, min(start + _PIECE, length))
            if len(piece) != min(_PIECE, length - start):
                # Expired while being sent: cut the connection; the client sees a short body.
                log.warning("response.truncated", task_id=task.id, sent=start, length=length)
                writer.abort()
                return response
            await writer.write(piece if encode is None else encode(piece))
        await writer.write(suffix)
        await response.write_eof()
    except ClientStalled:
        pass  # logged and aborted by the writer
    return response


class _Writer:
    """Writes with a deadline: a client that stops reading for the body timeout is dropped."""

    def __init__(self, request: web.Request, response: web.StreamResponse, timeout: float) -> None:
        self._request, self._response, self._timeout = request, response, timeout

    async def write(self, data: bytes) -> None:
        if not data:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._response.write(data)
        except TimeoutError:
            log.warning("response.abandoned", reason="the client stopped reading")
            self.abort()
            raise ClientStalled from None

    def abort(self) -> None:
        if self._request.transport is not None:
            self._request.transport.abort()


class ClientStalled(Exception):
    """The client stopped reading its answer; its connection is closed."""


def _wants_raw(request: web.Request) -> bool:
    """``?raw=1``, or an ``Accept`` that asks for an image rather than JSON."""
    if request.query.get("raw") in ("1", "true", "yes"):
        return True
    accept = request.headers.get("Accept", "")
    return "image/" in accept and "application/json" not in accept


def _raw_image(request: web.Request, task: Task, size: ImageSize, data: bytes) -> web.Response:
    headers = _cache_headers(task, size)
    if _not_modified(request, headers):
        return web.Response(status=304, headers=headers)
    fmt = task.result_format or "png"
    return web.Response(body=data, content_type=_content_type(fmt), headers=headers)


def _cache_headers(task: Task, size: ImageSize) -> dict[str, str]:
    # The content of a task's image never changes: its digest and size name it for good.
    etag = f'"{task.digest[:32]}-{size.value}"'
    if size is ImageSize.ORIGINAL:
        return {"ETag": etag, "Cache-Control": "private, max-age=3600"}
    return {"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable"}


def _not_modified(request: web.Request, headers: dict[str, str]) -> bool:
    wanted = {t.strip() for t in request.headers.get("If-None-Match", "").split(",")}
    return headers["ETag"] in wanted


def _content_type(fmt: str) -> str:
    known = header.content_type(fmt)
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
            headers={"Retry-After": str(err.retry_after)},
        )
    return web.json_response({"status": "ready", "checks": {"redis": "ok"}})


async def process_metrics(request: web.Request) -> web.StreamResponse:
    """This process's metrics (see ``metrics.py``: why two endpoints)."""
    return await request.app[MAIN][METRICS].handler(request)


class QueueView:
    """The queue as ``/info`` and ``/metrics/cluster`` show it, read from Redis at most once a
    ``max_age`` however many ask, and once at a time. Each read costs Redis a few commands per
    partition, worker and task in flight: unshared, any client asking in a loop would make
    the web spend Redis on it out of all proportion."""

    def __init__(self, read: Callable[[], Awaitable[QueueInfo]], max_age: float) -> None:
        self._read = read
        self._max_age = max_age
        self._last: tuple[float, QueueInfo] | None = None
        self._reading: asyncio.Future[QueueInfo] | None = None

    async def get(self) -> QueueInfo:
        if self._last is not None and time.monotonic() - self._last[0] < self._max_age:
            return self._last[1]
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read_now())
            # Its error is each waiter's; retrieved here too, should every waiter have gone.
            self._reading.add_done_callback(lambda done: done.cancelled() or done.exception())
        # Shielded: a client that goes away does not cancel the read the others wait on.
        return await asyncio.shield(self._reading)

    async def _read_now(self) -> QueueInfo:
        try:
            view = await self._read()
        finally:
            self._reading = None
        self._last = (time.monotonic(), view)
        return view


QUEUE_VIEW = web.AppKey("queue_view", QueueView)

QUEUE_VIEW_MAX_AGE_SECONDS = 1.0
"""How stale ``/info`` and ``/metrics/cluster`` may be: scrapes come every 15 s or so, and
``resizer info --watch`` asks every half second at the most."""


async def cluster_metrics(request: web.Request) -> web.StreamResponse:
    """The queue's metrics, as Redis holds them; ``resizer_redis_up 0`` when it is away."""
    try:
        info = await request.app[MAIN][QUEUE_VIEW].get()
    except REDIS_DOWN:
        info = None
    return await cluster_response(request, info)


def add_metrics_routes(app: web.Application, main: web.Application) -> None:
    """``/metrics`` and ``/metrics/cluster`` on ``app``, from the state of the ``main`` app."""
    app[MAIN] = main
    app.router.add_get("/metrics", process_metrics)
    app.router.add_get("/metrics/cluster", cluster_metrics)


async def info(request: web.Request) -> web.Response:
    """The queue at a glance (``resizer info``): lengths, tasks in flight, workers, failures."""
    raw = request.query.get("failures", "10")
    if not raw.isdigit() or int(raw) > MAX_FAILURES_SHOWN:
        raise BadRequest(f"failures must be a whole number from 0 to {MAX_FAILURES_SHOWN}")
    view = await request.app[QUEUE_VIEW].get()
    return json_response(attrs.evolve(view, failures=view.failures[: int(raw)]))


MAX_FAILURES_SHOWN = 100
"""As many as the store keeps per partition."""


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


def make_app(settings: Settings, store: Store | None = None) -> web.Application:
    """The app factory that ``resizer serve`` and the tests both call.

    Without a ``store``, the app opens its own Redis pool for its lifetime (``cleanup_ctx``).
    """
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[error_middleware, token_middleware],
        handler_args=_connection_args(settings),
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[UPLOADS] = UploadBudget(settings.upload_budget_bytes)
    app[QUEUE_VIEW] = QueueView(
        lambda: app[STORE].info(MAX_FAILURES_SHOWN), QUEUE_VIEW_MAX_AGE_SECONDS
    )

    async def redis_pool(app: web.Application) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if store is None:
                app[STORE] = await stack.enter_async_context(open_store(settings))
            else:
                app[STORE] = store
            try:
                await app[STORE].check_memory_policy()
                await app[STORE].load_scripts()
            except REDIS_DOWN as exc:
                # Workers and recovery check it too once Redis answers; the API need not wait.
                # Named by what Redis said: not there, refusing a script, denying a command...
                log.warning(outage_event(exc), error=str(exc), checks="memory policy, scripts")
            opened: Store = app[STORE]
            completions = Completions(
                opened.redis, lambda: opened.finished_channels, opened.sharded_pubsub
            )
            # A web learns of partitions other processes created (and of their channels).
            opened.on_partitions_grown(completions.resubscribe)
            await completions.start()
            stack.push_async_callback(completions.stop)
            app[COMPLETIONS] = completions
            yield

    app.on_response_prepare.append(_common_headers)
    app.cleanup_ctx.append(redis_pool)
    app.router.add_post("/tasks", create_task, expect_handler=expect_continue)
    app.router.add_get("/tasks/{task_id}", get_task)
    app.router.add_delete("/tasks/{task_id}", delete_task)
    app.router.add_get("/tasks/{task_id}/image", get_image)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/info", info)
    app.router.add_get("/openapi.json", openapi_json)
    if settings.metrics_addr is None:
        add_metrics_routes(app, app)
    return app


def _connection_args(settings: Settings) -> dict[str, object]:
    """How aiohttp treats each connection (``handler_args``)."""
    return {
        # Bodies are read as sent. aiohttp would inflate a compressed one as it arrives, before
        # any handler looks, and go on after the answer: a megabyte of gzip is a gigabyte.
        "auto_decompress": False,
        # aiohttp closes a connection that goes this long without a whole request's headers:
        # idle, or sending them a byte at a time. Load balancers keep idle connections 60 s,
        # and must be the ones to close them first.
        "keepalive_timeout": settings.idle_timeout_seconds,
    }


def make_metrics_app(main: web.Application) -> web.Application:
    """The metrics alone, for ``RESIZER_METRICS_ADDR``: an address that need not be public."""
    app = web.Application(
        middlewares=[error_middleware], handler_args=_connection_args(main[SETTINGS])
    )
    app[SETTINGS] = main[SETTINGS]
    app[METRICS] = main[METRICS]
    app.on_response_prepare.append(_common_headers)
    add_metrics_routes(app, main)
    return app


SHUTDOWN_SECONDS = 10.0
"""How long requests in flight get to finish once the server is asked to stop."""


class _MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a bad request line, a header too long or with a
    control character) as an error, with its traceback. It is the client's doing, answered 400
    by aiohttp itself: one line at info, ``request.malformed``, with what was wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, BadHttpMessage):
            return True
        record.msg, record.args = "request.malformed", ()
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info, record.exc_text = None, None
        record.error = _malformation(exc)
        return logging.getLogger().isEnabledFor(logging.INFO)


def _malformation(exc: BadHttpMessage) -> str:
    """What aiohttp's parser found wrong, on one short line."""
    return " ".join(str(exc.message).split())[:200]


class _JsonErrors(web.RequestHandler):
    """aiohttp's own answer to a request it cannot parse (a header with a control character, a
    line over 8190 bytes), in the API's JSON error shape instead of aiohttp's text/plain."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own: it logs (``_MalformedRequests``), and refuses if an answer has begun.
        super().handle_error(request, status, exc, message)
        if isinstance(exc, BadHttpMessage):
            text = f"malformed HTTP request: {_malformation(exc)}"
        else:  # a handler's failure that no middleware saw: nothing of it goes to the client
            text = HTTPStatus(status).phrase.lower()
        response = error_response(status, _HTTP_CODES.get(status, "http_error"), text)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.force_close()
        return response


def _protocols(server: web.Server) -> Callable[[], web.RequestHandler]:
    """The protocol of each connection ``server`` accepts: the handler it would make (from the
    same arguments, its private ``_kwargs``: aiohttp has no hook for this), with
    ``_JsonErrors``'s answers. test_malformed_requests.py fails if aiohttp changes under it."""
    loop = asyncio.get_running_loop()
    return lambda: _JsonErrors(server, loop=loop, **server._kwargs)


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the web server until SIGTERM/SIGINT, finishing the requests in flight."""
    logging.getLogger("aiohttp.server").addFilter(_MalformedRequests())
    asyncio.run(_serve(settings, host, port))


METRICS_CONNECTIONS = 64
"""Connections the separate metrics listener holds at most: its clients are a few scrapers."""


def _listener(
    runner: web.AppRunner,
    sockets: list[socket.socket],
    wanted: int,
    metrics: Metrics | None = None,
) -> Listener:
    """An accept loop of our own (``resizer.listener``) for the server ``runner`` set up; the
    API's reports its connections in ``metrics``."""
    server = runner.server
    assert server is not None  # set up
    listener = Listener(
        sockets,
        _protocols(server),
        lambda: len(server.connections),
        connection_cap(wanted),
        (lambda reason: metrics.accept_pauses.labels(reason).inc()) if metrics else lambda _: None,
    )
    if metrics is not None:
        metrics.connections.set_function(lambda: len(server.connections))
        metrics.max_connections.set(listener.cap)
        for reason in PAUSE_REASONS:
            metrics.accept_pauses.labels(reason)  # at 0 from the start, for rate()
    return listener


async def _serve(settings: Settings, host: str, port: int) -> None:
    if memory.keep_freed_memory(memory.WEB_KEEP_BELOW, memory.WEB_TRIM_ABOVE):
        log.info(
            "allocator.tuned", keep_below=memory.WEB_KEEP_BELOW, trim_above=memory.WEB_TRIM_ABOVE
        )
    raise_open_files_limit()
    app = make_app(settings)
    runners = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stopping() -> None:
        # Requests in flight get SHUTDOWN_SECONDS; the process is gone soon after, whatever
        # else is stuck (a reconnect to a Redis whose name does not resolve).
        shutdown.stop_within(SHUTDOWN_SECONDS + 5)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping)
    faults.hit("at_start")
    listeners: list[Listener] = []
    try:
        sockets = await bind(host, port)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS)
        await runner.setup()
        runners.append(runner)
        listeners.append(_listener(runner, sockets, settings.max_connections, app[METRICS]))
        if settings.metrics_addr is not None:
            address = settings.metrics_addr
            sockets = await bind(address.host, address.port)
            runner = web.AppRunner(
                make_metrics_app(app), access_log=None, shutdown_timeout=SHUTDOWN_SECONDS
            )
            await runner.setup()
            runners.append(runner)
            listeners.append(_listener(runner, sockets, METRICS_CONNECTIONS))
        for listener in listeners:
            listener.start()
        log.info(
            "server.started",
            host=host,
            port=port,
            metrics=str(settings.metrics_addr or ""),
            max_connections=listeners[0].cap,
        )
        await stop.wait()
    finally:
        for listener in listeners:
            listener.close()  # accept no more, then let the requests in flight finish
        for runner in reversed(runners):
            await runner.cleanup()
        log.info("server.stopped")
