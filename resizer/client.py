"""The HTTP client behind ``resizer submit / status / fetch``: typed records in, typed records out.

Every failure becomes a ``ResizerError`` with a one-line message, so the CLI never shows a
traceback.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
import cattrs

from resizer.errors import ApiError, ResizerError, ServerUnreachable
from resizer.models import ImageSize, ImageView, TaskCreated, TaskView, converter

DEFAULT_URL = "http://127.0.0.1:8080"

T = TypeVar("T")


class Client:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")

    async def submit(self, image: bytes) -> TaskCreated:
        body = {"data": base64.b64encode(image).decode("ascii")}
        return await self._request("POST", "/tasks", TaskCreated, json=body)

    async def status(self, task_id: str) -> TaskView:
        return await self._request("GET", f"/tasks/{task_id}", TaskView)

    async def image(self, task_id: str, size: ImageSize) -> ImageView:
        return await self._request(
            "GET", f"/tasks/{task_id}/image", ImageView, params={"size": size.value}
        )

    async def wait(self, task_id: str, timeout: float, poll: float = 0.25) -> TaskView:
        """Poll until the task is DONE or FAILED, or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            view = await self.status(task_id)
            if view.status.finished or time.monotonic() >= deadline:
                return view
            await asyncio.sleep(poll)

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


@asynccontextmanager
async def connect(base_url: str, timeout: float = 60.0) -> AsyncIterator[Client]:
    session_timeout = aiohttp.ClientTimeout(total=timeout, connect=5)
    async with aiohttp.ClientSession(timeout=session_timeout) as session:
        yield Client(session, base_url)


__all__ = ["DEFAULT_URL", "Client", "ResizerError", "connect"]
