"""``resizer.AsyncClient``: the asyncio client, on aiohttp."""

from __future__ import annotations

import asyncio
import os
from types import TracebackType

import aiohttp
import yarl

from resizer.client._protocol import (
    CONNECT_TIMEOUT_SECONDS,
    Api,
    FetchedImage,
    HttpRequest,
    HttpResponse,
    Operation,
    T,
    read_image,
    run_async,
)
from resizer.models import ImageSize, QueueInfo, TaskCreated, TaskView


class AsyncClient:
    """An asyncio client of the resizer API; many calls may run at once on one client.

    ``url``, ``token`` and ``timeout`` default to ``RESIZER_URL``, ``RESIZER_API_TOKEN`` and
    ``RESIZER_CLIENT_TIMEOUT``. Use it as an async context manager, or ``await close()``.
    """

    def __init__(
        self, url: str | None = None, *, token: str | None = None, timeout: float | None = None
    ) -> None:
        self._api = Api.configure(url, token, timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return self._api.base_url

    async def submit(self, image: bytes | str | os.PathLike[str]) -> TaskCreated:
        """Upload an image (its bytes, or a path to read); the task is created WAITING, or DONE
        at once when the same bytes were resized before."""
        data = image if isinstance(image, bytes) else await asyncio.to_thread(read_image, image)
        return await self._run(self._api.submit(data))

    async def status(self, task_id: str, *, wait: float = 0.0) -> TaskView:
        """The task's status; with ``wait`` (at most 30 s), answers as soon as it is finished."""
        return await self._run(self._api.status(task_id, wait))

    async def wait(self, task_id: str, timeout: float = 300.0) -> TaskView:
        """Until the task is DONE (long-polls); TaskFailed if it FAILED, WaitTimeout if
        ``timeout`` seconds pass first."""
        return await self._run(self._api.wait(task_id, timeout))

    async def fetch(
        self, task_id: str, size: ImageSize | int | str = ImageSize.S64
    ) -> FetchedImage:
        """The bytes of one image: 64, 32 (once DONE) or "original"."""
        return await self._run(self._api.fetch(task_id, size))

    async def delete(self, task_id: str) -> bool:
        """Delete a task and its images; False when there was no such task."""
        return await self._run(self._api.delete(task_id))

    async def health(self) -> bool:
        """Whether the server answers ``GET /health`` with 200."""
        return await self._run(self._api.health())

    async def info(self, failures: int = 10) -> QueueInfo:
        """The queue at a glance (``GET /info``): lengths, the oldest waiting task's age, tasks
        in flight with their worker, the workers, the last ``failures`` failures."""
        return await self._run(self._api.info(failures))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _run(self, operation: Operation[T]) -> T:
        return await run_async(operation, self._send)

    async def _send(self, request: HttpRequest) -> HttpResponse:
        if request.after:
            await asyncio.sleep(request.after)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        # Already escaped by the protocol: yarl must not undo "%2E" into a dot segment.
        url = yarl.URL(self._api.base_url + request.target, encoded=True)
        timeout = aiohttp.ClientTimeout(total=request.timeout, connect=CONNECT_TIMEOUT_SECONDS)
        try:
            async with self._session.request(
                request.method,
                url,
                data=request.body,
                headers=request.headers,
                allow_redirects=False,
                timeout=timeout,
            ) as response:
                body = await response.read()
                headers = {name.lower(): value for name, value in response.headers.items()}
                return HttpResponse(response.status, headers, body)
        except aiohttp.ClientConnectorError as exc:
            raise self._api.unreachable(str(exc.os_error), connecting=True) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise self._api.unreachable(reason, connecting=False) from None
