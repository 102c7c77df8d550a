"""The HTTP client behind ``resizer submit / status / fetch``: typed records in, typed records out.

Every failure becomes a ``ResizerError`` with a one-line message, so the CLI never shows a
traceback.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import attrs
import cattrs

from resizer.errors import ApiError, ResizerError, ServerUnreachable
from resizer.models import (
    MAX_WAIT_SECONDS,
    ImageSize,
    ImageView,
    TaskCreated,
    TaskStatus,
    TaskView,
    converter,
)

DEFAULT_URL = "http://127.0.0.1:8080"
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp", ".avif", ".mpo"}
)

T = TypeVar("T")


class Client:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")

    async def submit(self, image: bytes) -> TaskCreated:
        body = {"data": base64.b64encode(image).decode("ascii")}
        return await self._request("POST", "/tasks", TaskCreated, json=body)

    async def status(self, task_id: str, wait: float = 0) -> TaskView:
        """The task's status; with ``wait``, the server answers as soon as it finishes."""
        params = {"wait": f"{min(wait, MAX_WAIT_SECONDS):g}"} if wait > 0 else None
        return await self._request("GET", f"/tasks/{task_id}", TaskView, params=params)

    async def image(self, task_id: str, size: ImageSize) -> ImageView:
        return await self._request(
            "GET", f"/tasks/{task_id}/image", ImageView, params={"size": size.value}
        )

    async def wait(self, task_id: str, timeout: float) -> TaskView:
        """Long-poll until the task is DONE or FAILED, or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            view = await self.status(task_id, wait=max(0.0, deadline - time.monotonic()))
            if view.status.finished or time.monotonic() >= deadline:
                return view

    async def _request(self, method: str, path: str, into: type[T], **kwargs: Any) -> T:
        url = self.base_url + path
        try:
            async with self.session.request(method, url, **kwargs) as response:
                text = await response.text()
                status = response.status
        except aiohttp.ClientConnectorError as exc:
            raise ServerUnreachable(
                f"cannot reach the resizer server at {self.base_url} ({exc.os_error}); "
                "is it running? Start one with `resizer up`, or pass --url / RESIZER_URL"
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ServerUnreachable(
                f"request to {url} failed: {str(exc) or type(exc).__name__}"
            ) from None
        try:
            payload = json.loads(text)
        except ValueError:
            raise ApiError(
                status, "bad_response", f"{url} answered {status} with non-JSON"
            ) from None
        if status >= 400:
            error = payload.get("error", {}) if isinstance(payload, dict) else {}
            raise ApiError(
                status,
                str(error.get("code", "http_error")),
                f"{status} {error.get('message', text[:200])}",
            )
        try:
            return converter.structure(payload, into)
        except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
            raise ApiError(status, "bad_response", f"unexpected answer from {url}: {exc}") from None


@attrs.frozen
class Source:
    """One image to submit: a file, or the bytes read from stdin (named ``-``)."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise ResizerError(f"cannot read {self.path}: {exc.strerror}") from None


@attrs.frozen
class SubmitResult:
    source: str
    id: str | None = None
    status: TaskStatus | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not TaskStatus.FAILED


def find_sources(paths: Sequence[str], stdin: Callable[[], bytes]) -> list[Source]:
    """Files as given; directories searched recursively for image files; ``-`` is stdin."""
    sources: list[Source] = []
    for raw in paths:
        if raw == "-":
            sources.append(Source(name="-", data=stdin()))
            continue
        path = Path(raw)
        if path.is_dir():
            sources.extend(
                Source(name=str(found), path=found)
                for found in sorted(path.rglob("*"))
                if found.is_file() and found.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            sources.append(Source(name=raw, path=path))
    return sources


async def submit_batch(
    client: Client,
    sources: Sequence[Source],
    *,
    wait: float | None = None,
    concurrency: int = 8,
    on_result: Callable[[int, SubmitResult], None] = lambda _i, _r: None,
) -> list[SubmitResult]:
    """Submit every source, at most ``concurrency`` at a time; a rejected file does not stop
    the others. With ``wait``, each result is reported once its task finished (long-poll).

    Results come back in the order of ``sources``; ``on_result`` sees each (with its index in
    ``sources``) as it completes.
    Only an unreachable server aborts the batch (every other file would fail the same way).
    """
    limit = asyncio.Semaphore(concurrency)
    deadline = None if wait is None else time.monotonic() + wait

    async def one(index: int, source: Source) -> SubmitResult:
        async with limit:
            try:
                created = await client.submit(source.read())
                result = SubmitResult(source.name, created.id, created.status)
                if deadline is not None and not created.status.finished:
                    view = await client.wait(created.id, max(0.0, deadline - time.monotonic()))
                    if not view.status.finished:
                        result = SubmitResult(
                            source.name, view.id, view.status, f"still {view.status} after wait"
                        )
                    elif view.status is TaskStatus.FAILED:
                        result = SubmitResult(
                            source.name, view.id, view.status, f"FAILED: {view.error}"
                        )
                    else:
                        result = SubmitResult(source.name, view.id, view.status)
            except ServerUnreachable:
                raise
            except ResizerError as exc:
                result = SubmitResult(source.name, error=exc.message)
        on_result(index, result)
        return result

    return list(await asyncio.gather(*(one(i, source) for i, source in enumerate(sources))))


@asynccontextmanager
async def connect(base_url: str, timeout: float = 60.0) -> AsyncIterator[Client]:
    session_timeout = aiohttp.ClientTimeout(total=timeout, connect=5)
    async with aiohttp.ClientSession(timeout=session_timeout) as session:
        yield Client(session, base_url)
