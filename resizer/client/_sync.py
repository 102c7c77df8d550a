"""``resizer.Client``: the blocking client, on the standard library's ``http.client``."""

from __future__ import annotations

import http.client
import os
import time
from types import TracebackType
from urllib.parse import urlsplit

from resizer.client._protocol import (
    CONNECT_TIMEOUT_SECONDS,
    Api,
    FetchedImage,
    HttpRequest,
    HttpResponse,
    Operation,
    T,
    read_image,
    run,
)
from resizer.models import ImageSize, QueueInfo, TaskCreated, TaskView

# The server may close a kept-alive connection while it is idle; these say so on the next use.
_STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Client:
    """A blocking client of the resizer API.

    ``url``, ``token`` and ``timeout`` default to ``RESIZER_URL``, ``RESIZER_API_TOKEN`` and
    ``RESIZER_CLIENT_TIMEOUT``. It keeps one connection alive between calls: use one client per
    thread, and close it (or use it as a context manager).
    """

    def __init__(
        self, url: str | None = None, *, token: str | None = None, timeout: float | None = None
    ) -> None:
        self._api = Api.configure(url, token, timeout)
        parts = urlsplit(self._api.base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path
        self._connection: http.client.HTTPConnection | None = None

    @property
    def url(self) -> str:
        return self._api.base_url

    def submit(self, image: bytes | str | os.PathLike[str]) -> TaskCreated:
        """Upload an image (its bytes, or a path to read); the task is created WAITING, or DONE
        at once when the same bytes were resized before."""
        return self._run(self._api.submit(read_image(image)))

    def status(self, task_id: str, *, wait: float = 0.0) -> TaskView:
        """The task's status; with ``wait`` (at most 30 s), answers as soon as it is finished."""
        return self._run(self._api.status(task_id, wait))

    def wait(self, task_id: str, timeout: float = 300.0) -> TaskView:
        """Block until the task is DONE (long-polls); TaskFailed if it FAILED, WaitTimeout if
        ``timeout`` seconds pass first."""
        return self._run(self._api.wait(task_id, timeout))

    def fetch(self, task_id: str, size: ImageSize | int | str = ImageSize.S64) -> FetchedImage:
        """The bytes of one image: 64, 32 (once DONE) or "original"."""
        return self._run(self._api.fetch(task_id, size))

    def delete(self, task_id: str) -> bool:
        """Delete a task and its images; False when there was no such task."""
        return self._run(self._api.delete(task_id))

    def health(self) -> bool:
        """Whether the server answers ``GET /health`` with 200."""
        return self._run(self._api.health())

    def info(self, failures: int = 10) -> QueueInfo:
        """The queue at a glance (``GET /info``): lengths, the oldest waiting task's age, tasks
        in flight with their worker, the workers, the last ``failures`` failures."""
        return self._run(self._api.info(failures))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, operation: Operation[T]) -> T:
        return run(operation, self._send)

    def _send(self, request: HttpRequest) -> HttpResponse:
        if request.after:
            time.sleep(request.after)
        # A request on a kept-alive connection that the server has closed fails before the
        # server reads it: it is sent once more on a new connection. A new connection's failure
        # is reported.
        while True:
            reused = self._connection is not None
            connection = self._connect()
            if connection.sock is not None:
                connection.sock.settimeout(request.timeout)
            try:
                connection.request(
                    request.method,
                    self._prefix + request.target,
                    body=request.body,
                    headers=dict(request.headers),
                )
                response = connection.getresponse()
                body = response.read()
            except _STALE_CONNECTION as exc:
                self.close()
                if reused:
                    continue
                raise self._api.unreachable(
                    str(exc) or type(exc).__name__, connecting=False
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise self._api.unreachable(
                    str(exc) or type(exc).__name__, connecting=False
                ) from None
            if response.will_close:
                self.close()
            headers = {name.lower(): value for name, value in response.getheaders()}
            return HttpResponse(response.status, headers, body)

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is not None:
            return self._connection
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = kind(self._host, self._port, timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            raise self._api.unreachable(str(exc), connecting=True) from None
        self._connection = connection
        return connection
