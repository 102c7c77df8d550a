"""The client's half of the HTTP API without any I/O: what each call sends, what each answer means.

Each operation is a generator that yields ``HttpRequest``s, receives ``HttpResponse``s and
returns a typed result or raises a typed error (the sans-I/O style of h11 and hyper-h2). The
sync and the async clients only move bytes, so every rule about requests and answers is here,
once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlencode

import attrs
import cattrs

from resizer import __version__
from resizer.config import ClientSettings, mask_url, spec_of
from resizer.errors import ApiError, BadResponse, ResizerError, ServerUnreachable
from resizer.models import (
    MAX_WAIT_SECONDS,
    ImageSize,
    QueueInfo,
    TaskCreated,
    TaskStatus,
    TaskView,
    converter,
)

T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS = 5.0
OVERLOADED_TRIES = 5
"""How many times an upload is sent to a server that answers 503 overloaded."""
MAX_RETRY_AFTER_SECONDS = 10.0

EXTENSIONS: Mapping[str, str] = {
    "jpeg": "jpg",
    "png": "png",
    "webp": "webp",
    "gif": "gif",
    "tiff": "tiff",
    "bmp": "bmp",
    "avif": "avif",
}
"""The image formats a client accepts from the server, and the file extension of each."""

_CONTENT_TYPES: Mapping[str, str] = {
    "image/jpeg": "jpeg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/tiff": "tiff",
    "image/bmp": "bmp",
    "image/x-ms-bmp": "bmp",
    "image/avif": "avif",
}

# When the server cannot name the media type (an MPO original, say) it sends
# application/octet-stream; the first bytes then tell which of our formats it is.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (8, b"WEBP", "webp"),
    (0, b"GIF87a", "gif"),
    (0, b"GIF89a", "gif"),
    (0, b"II*\x00", "tiff"),
    (0, b"MM\x00*", "tiff"),
    (0, b"BM", "bmp"),
    (4, b"ftypavif", "avif"),
    (4, b"ftypavis", "avif"),
)


@attrs.frozen
class HttpRequest:
    method: str
    target: str
    """Path and query, appended to the base URL."""
    headers: Mapping[str, str]
    timeout: float
    """Seconds for the whole exchange, a long-poll's wait included."""
    body: bytes | None = attrs.field(default=None, repr=False)
    after: float = 0.0
    """Seconds to wait before sending it (a server that asked to be asked again later)."""


@attrs.frozen
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    """Lower-case names."""
    body: bytes = attrs.field(repr=False)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()


Operation = Generator[HttpRequest, HttpResponse, T]


@attrs.frozen
class FetchedImage:
    """One image of a task, as its bytes."""

    task_id: str
    size: ImageSize
    format: str
    """One of ``EXTENSIONS``' keys: jpeg, png, webp, gif, tiff, bmp, avif."""
    data: bytes = attrs.field(repr=False)

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


class TaskFailed(ResizerError):
    """The task ended FAILED; ``task.error`` says why."""

    code = "task_failed"

    def __init__(self, task: TaskView) -> None:
        super().__init__(f"task {task.id} FAILED: {task.error or 'no reason given'}")
        self.task = task


class WaitTimeout(ResizerError):
    """The task was not finished when the caller's timeout ran out; ``task`` is its last view."""

    code = "timeout"

    def __init__(self, task: TaskView, timeout: float) -> None:
        super().__init__(f"task {task.id} is still {task.status} after {timeout:g} s")
        self.task = task


def task_path(task_id: str) -> str:
    # Every character that could change the path is escaped, dots included: "/tasks/.." must not
    # become "/" on its way to the server.
    return "/tasks/" + quote(task_id, safe="").replace(".", "%2E")


def as_size(size: ImageSize | int | str) -> ImageSize:
    try:
        return ImageSize(str(size))
    except ValueError:
        allowed = ", ".join(s.value for s in ImageSize)
        raise ValueError(f"size must be one of {allowed}; got {size!r}") from None


def read_image(image: bytes | str | os.PathLike[str]) -> bytes:
    """The bytes to upload: ``image`` itself, or the content of the file it names."""
    return image if isinstance(image, bytes) else Path(image).read_bytes()


class Api:
    """The requests each operation makes and how their answers are read."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.base_url = settings.url.rstrip("/")
        self._headers = {"User-Agent": f"resizer/{__version__}", "Accept": "application/json"}
        if settings.api_token:
            self._headers["Authorization"] = f"Bearer {settings.api_token}"

    @classmethod
    def configure(cls, url: str | None, token: str | None, timeout: float | None) -> Api:
        """Arguments first; what they leave out comes from ``RESIZER_*`` or the defaults."""
        return cls(ClientSettings.from_env(url=url, api_token=token, timeout_seconds=timeout))

    # --- operations ---------------------------------------------------------------------------

    def submit(self, data: bytes) -> Operation[TaskCreated]:
        """Upload the image as the raw body (no base64 on either side).

        A server that holds all the uploads it may (``503 overloaded``: nothing was stored) is
        asked again after its ``Retry-After``, up to ``OVERLOADED_TRIES`` times in all.
        """
        request = self._request(
            "POST", "/tasks", body=data, content_type="application/octet-stream"
        )
        response = yield request
        for _ in range(OVERLOADED_TRIES - 1):
            if response.status != 503 or self._api_error(response).code != "overloaded":
                break
            response = yield attrs.evolve(request, after=_retry_after(response))
        return self._json(response, TaskCreated, expect=201)

    def status(self, task_id: str, wait: float = 0.0) -> Operation[TaskView]:
        """The task's view; with ``wait``, the server answers as soon as it is finished."""
        wait = min(max(wait, 0.0), MAX_WAIT_SECONDS)
        target = task_path(task_id) + (f"?wait={wait:g}" if wait > 0 else "")
        response = yield self._request("GET", target, wait=wait)
        view = self._json(response, TaskView)
        if view.id != task_id:
            raise BadResponse(
                f"asked about task {task_id!r}, the server answered about {view.id!r}"
            )
        return view

    def wait(
        self, task_id: str, timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> Operation[TaskView]:
        """Long-poll (at most ``MAX_WAIT_SECONDS`` per request) until the task is DONE.

        Raises TaskFailed when it FAILED, WaitTimeout when ``timeout`` seconds pass first.
        """
        deadline = clock() + timeout
        while True:
            view = yield from self.status(task_id, wait=deadline - clock())
            if view.status is TaskStatus.DONE:
                return view
            if view.status is TaskStatus.FAILED:
                raise TaskFailed(view)
            if clock() >= deadline:
                raise WaitTimeout(view, timeout)

    def fetch(self, task_id: str, size: ImageSize | int | str) -> Operation[FetchedImage]:
        """The image's bytes (``raw=1``); its format from the media type, or its first bytes."""
        size = as_size(size)
        query = urlencode({"size": size.value, "raw": "1"})
        response = yield self._request("GET", f"{task_path(task_id)}/image?{query}")
        self._expect(response, 200)
        return FetchedImage(task_id, size, self._image_format(response), response.body)

    def delete(self, task_id: str) -> Operation[bool]:
        """True when the task was deleted, False when there was no such task."""
        response = yield self._request("DELETE", task_path(task_id))
        if response.status == 404:
            return False
        self._expect(response, 204)
        return True

    def health(self) -> Operation[bool]:
        response = yield self._request("GET", "/health")
        return response.status == 200

    def info(self, failures: int = 10) -> Operation[QueueInfo]:
        """The queue at a glance: lengths, tasks in flight, workers, recent failures."""
        response = yield self._request("GET", f"/info?failures={failures:d}")
        return self._json(response, QueueInfo)

    # --- errors the transports raise ----------------------------------------------------------

    def unreachable(self, reason: str, *, connecting: bool) -> ServerUnreachable:
        where = mask_url(self.base_url)
        if not connecting:
            return ServerUnreachable(f"the request to {where} failed: {reason}")
        variable = spec_of(ClientSettings, "url").env
        return ServerUnreachable(
            f"cannot reach the resizer server at {where} ({reason}); is it running? "
            f"Start one with `resizer up`, or pass --url / {variable}"
        )

    # --- helpers ------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        target: str,
        *,
        body: bytes | None = None,
        content_type: str | None = None,
        wait: float = 0.0,
    ) -> HttpRequest:
        headers = dict(self._headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        return HttpRequest(method, target, headers, self.settings.timeout_seconds + wait, body)

    def _expect(self, response: HttpResponse, status: int) -> None:
        if response.status == status:
            return
        if response.status >= 400:
            raise self._api_error(response)
        answer = f"{response.status}"
        if 300 <= response.status < 400:
            # A redirect could lead to another task's answer: it is reported, never followed.
            answer += f" (a redirect to {response.headers.get('location', 'nowhere')})"
        raise BadResponse(f"the server answered {answer} where {status} was expected")

    def _api_error(self, response: HttpResponse) -> ApiError:
        code, message = "http_error", response.body[:200].decode("utf-8", "replace").strip()
        try:
            error = json.loads(response.body)["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            pass  # not our JSON error shape (a proxy's page): its start is the message
        return ApiError(response.status, code, f"{response.status} {message}")

    def _json(self, response: HttpResponse, into: type[T], expect: int = 200) -> T:
        self._expect(response, expect)
        try:
            return converter.structure(json.loads(response.body), into)
        except (ValueError, TypeError, cattrs.BaseValidationError) as exc:
            raise BadResponse(f"the server's answer is not a {into.__name__}: {exc}") from None

    def _image_format(self, response: HttpResponse) -> str:
        media = response.content_type
        if media in _CONTENT_TYPES:
            return _CONTENT_TYPES[media]
        if media == "application/octet-stream":
            for offset, signature, fmt in _SIGNATURES:
                if response.body[offset : offset + len(signature)] == signature:
                    return fmt
        raise BadResponse(
            f"the server answered an image of type {media[:80]!r}, not one of "
            + ", ".join(EXTENSIONS)
        )


def _retry_after(response: HttpResponse) -> float:
    """The answer's ``Retry-After`` in seconds (1 when absent or a date), within reason."""
    try:
        seconds = float(response.headers.get("retry-after", "1"))
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS) if seconds == seconds else 1.0


def run(operation: Operation[T], send: Callable[[HttpRequest], HttpResponse]) -> T:
    """Drive ``operation`` with a blocking ``send``."""
    try:
        request = next(operation)
        while True:
            request = operation.send(send(request))
    except StopIteration as finished:
        result: T = finished.value
        return result


async def run_async(
    operation: Operation[T], send: Callable[[HttpRequest], Awaitable[HttpResponse]]
) -> T:
    """Drive ``operation`` with an async ``send``."""
    try:
        request = next(operation)
        while True:
            request = operation.send(await send(request))
    except StopIteration as finished:
        result: T = finished.value
        return result
