"""``resizer.Client`` and ``resizer.AsyncClient`` against fake servers: what they send, how they
read answers, and how they refuse answers that do not fit. Every test runs with both clients."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import resizer
from resizer import AsyncClient, Client
from resizer.client import FetchedImage
from resizer.client._protocol import OVERLOADED_TRIES
from resizer.embedded import free_port
from resizer.models import ImageSize, TaskCreated, TaskStatus, TaskView

ServerFactory = Callable[..., Awaitable[TestServer]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PNG = b"\x89PNG\r\n\x1a\n" + bytes(32)
JPEG = b"\xff\xd8\xff\xe0" + bytes(32)


class Calls(Protocol):
    """The client API, awaited: the async client as it is, the sync one run in a thread."""

    async def submit(self, image: bytes | str | Path) -> TaskCreated: ...
    async def status(self, task_id: str, *, wait: float = 0.0) -> TaskView: ...
    async def wait(self, task_id: str, timeout: float = 300.0) -> TaskView: ...
    async def fetch(self, task_id: str, size: ImageSize | int | str = 64) -> FetchedImage: ...
    async def delete(self, task_id: str) -> bool: ...
    async def health(self) -> bool: ...


class InThread:
    def __init__(self, client: Client) -> None:
        self.client = client

    async def submit(self, image: bytes | str | Path) -> TaskCreated:
        return await asyncio.to_thread(self.client.submit, image)

    async def status(self, task_id: str, *, wait: float = 0.0) -> TaskView:
        return await asyncio.to_thread(self.client.status, task_id, wait=wait)

    async def wait(self, task_id: str, timeout: float = 300.0) -> TaskView:
        return await asyncio.to_thread(self.client.wait, task_id, timeout)

    async def fetch(self, task_id: str, size: ImageSize | int | str = 64) -> FetchedImage:
        return await asyncio.to_thread(self.client.fetch, task_id, size)

    async def delete(self, task_id: str) -> bool:
        return await asyncio.to_thread(self.client.delete, task_id)

    async def health(self) -> bool:
        return await asyncio.to_thread(self.client.health)


Connect = Callable[..., Calls]


@pytest.fixture(params=["sync", "async"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Connect]:
    """``connect(url, token=..., timeout=...)``: a client of the kind under test."""
    opened: list[Client | AsyncClient] = []

    def make(url: str, **kwargs: Any) -> Calls:
        if request.param == "sync":
            sync = Client(url, **kwargs)
            opened.append(sync)
            return InThread(sync)
        client = AsyncClient(url, **kwargs)
        opened.append(client)
        return client

    yield make
    for client in opened:
        if isinstance(client, AsyncClient):
            await client.close()
        else:
            client.close()


@attrs.frozen
class Seen:
    method: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@attrs.define
class Fake:
    url: str
    seen: list[Seen]


@pytest.fixture
def fake_server(aiohttp_server: ServerFactory) -> Callable[[Handler], Awaitable[Fake]]:
    """A server that records every request and answers with ``handler``."""

    async def start(handler: Handler) -> Fake:
        seen: list[Seen] = []

        async def record(request: web.Request) -> web.StreamResponse:
            seen.append(
                Seen(
                    request.method,
                    request.raw_path,
                    dict(request.query),
                    dict(request.headers),
                    await request.read(),
                )
            )
            return await handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        server = await aiohttp_server(app)
        return Fake(str(server.make_url("")).rstrip("/"), seen)

    return start


StartFake = Callable[[Handler], Awaitable[Fake]]


def view(task_id: str, status: TaskStatus, error: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": task_id,
        "status": status.value,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:01Z",
        "attempts": 1,
    }
    if error is not None:
        body["error"] = error
    return body


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


# --- requests -----------------------------------------------------------------------------------


async def test_submit_uploads_the_raw_bytes_with_the_bearer_token(
    fake_server: StartFake, connect: Connect, tmp_path: Path
) -> None:
    async def created(request: web.Request) -> web.Response:
        return web.json_response({"id": "t1", "status": "WAITING"}, status=201)

    fake = await fake_server(created)
    client = connect(fake.url, token="tok-123")
    assert await client.submit(PNG) == TaskCreated("t1", TaskStatus.WAITING)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)
    assert (await client.submit(photo)).id == "t1"

    first, second = fake.seen
    assert (first.method, first.raw_path) == ("POST", "/tasks")
    assert first.headers["Content-Type"] == "application/octet-stream"
    assert first.body == PNG
    assert first.headers["Authorization"] == "Bearer tok-123"
    assert second.body == JPEG


async def test_the_token_comes_from_the_environment_and_is_not_sent_without_one(
    fake_server: StartFake, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def healthy(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    fake = await fake_server(healthy)
    monkeypatch.delenv("RESIZER_API_TOKEN", raising=False)
    assert await connect(fake.url).health() is True
    monkeypatch.setenv("RESIZER_API_TOKEN", "from-env")
    assert await connect(fake.url).health() is True
    without, with_env = fake.seen
    assert "Authorization" not in without.headers
    assert with_env.headers["Authorization"] == "Bearer from-env"


async def test_task_ids_are_escaped_so_they_cannot_change_the_path(
    fake_server: StartFake, connect: Connect
) -> None:
    async def missing(request: web.Request) -> web.Response:
        return error(404, "not_found", "no such task")

    fake = await fake_server(missing)
    client = connect(fake.url)
    for task_id in ("..", "../x", "a/b?size=original"):
        with pytest.raises(resizer.ApiError):
            await client.status(task_id)
        assert await client.delete(task_id) is False
    paths = [seen.raw_path for seen in fake.seen]
    assert paths == [
        "/tasks/%2E%2E",
        "/tasks/%2E%2E",
        "/tasks/%2E%2E%2Fx",
        "/tasks/%2E%2E%2Fx",
        "/tasks/a%2Fb%3Fsize%3Doriginal",
        "/tasks/a%2Fb%3Fsize%3Doriginal",
    ]


# --- waiting ------------------------------------------------------------------------------------


async def test_wait_long_polls_at_most_30_seconds_a_request_until_done(
    fake_server: StartFake, connect: Connect
) -> None:
    answers = iter([TaskStatus.WAITING, TaskStatus.IN_PROGRESS, TaskStatus.DONE])

    async def status(request: web.Request) -> web.Response:
        return web.json_response(view("t1", next(answers)))

    fake = await fake_server(status)
    done = await connect(fake.url).wait("t1", timeout=100)
    assert done.status is TaskStatus.DONE
    waits = [float(seen.query["wait"]) for seen in fake.seen]
    assert len(waits) == 3
    assert waits[0] == 30
    assert all(0 < wait <= 30 for wait in waits)


async def test_wait_raises_task_failed_with_the_task(
    fake_server: StartFake, connect: Connect
) -> None:
    async def failed(request: web.Request) -> web.Response:
        return web.json_response(view("t1", TaskStatus.FAILED, "not a real PNG"))

    fake = await fake_server(failed)
    with pytest.raises(resizer.TaskFailed) as caught:
        await connect(fake.url).wait("t1")
    assert caught.value.task.error == "not a real PNG"
    assert caught.value.code == "task_failed"
    assert "not a real PNG" in caught.value.message


async def test_wait_gives_up_at_the_callers_timeout(
    fake_server: StartFake, connect: Connect
) -> None:
    async def long_poll(request: web.Request) -> web.Response:
        # A real long-poll: the answer comes after `wait` seconds when nothing happens.
        await asyncio.sleep(float(request.query.get("wait", "0")))
        return web.json_response(view("t1", TaskStatus.WAITING))

    fake = await fake_server(long_poll)
    with pytest.raises(resizer.WaitTimeout) as caught:
        await connect(fake.url).wait("t1", timeout=0.3)
    assert caught.value.task.status is TaskStatus.WAITING
    assert 0 < float(fake.seen[0].query["wait"]) <= 0.3


async def test_an_answer_about_another_task_is_refused(
    fake_server: StartFake, connect: Connect
) -> None:
    async def other(request: web.Request) -> web.Response:
        return web.json_response(view("someone-else", TaskStatus.DONE))

    fake = await fake_server(other)
    client = connect(fake.url)
    with pytest.raises(resizer.BadResponse, match="someone-else"):
        await client.status("t1")
    with pytest.raises(resizer.BadResponse, match="someone-else"):
        await client.wait("t1")


# --- fetching -----------------------------------------------------------------------------------


async def test_fetch_asks_for_the_raw_bytes_and_names_their_format(
    fake_server: StartFake, connect: Connect
) -> None:
    async def image(request: web.Request) -> web.Response:
        if request.query["size"] == "64":
            return web.Response(body=PNG, content_type="image/png")
        # An original the server cannot name (an MPO, say): the bytes tell.
        return web.Response(body=JPEG, content_type="application/octet-stream")

    fake = await fake_server(image)
    client = connect(fake.url)
    thumb = await client.fetch("t1", 64)
    assert (thumb.task_id, thumb.size, thumb.format, thumb.extension) == (
        "t1",
        ImageSize.S64,
        "png",
        "png",
    )
    assert thumb.data == PNG
    original = await client.fetch("t1", "original")
    assert (original.format, original.extension, original.data) == ("jpeg", "jpg", JPEG)
    assert fake.seen[0].raw_path == "/tasks/t1/image?size=64&raw=1"


@pytest.mark.parametrize(
    ("content_type", "body", "refusal"),
    [
        ("image/sh/../../victim", PNG, "type"),
        ("text/html", b"<html>", "type"),
        ("application/octet-stream", b"MZ\x90\x00 an executable", "type"),
        ("application/json", json.dumps({"format": "sh/../../victim"}).encode(), "type"),
    ],
)
async def test_fetch_refuses_an_image_of_no_known_format(
    fake_server: StartFake, connect: Connect, content_type: str, body: bytes, refusal: str
) -> None:
    async def hostile(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type})

    fake = await fake_server(hostile)
    with pytest.raises(resizer.BadResponse, match=refusal):
        await connect(fake.url).fetch("t1", 64)


async def test_a_redirect_is_refused_not_followed(fake_server: StartFake, connect: Connect) -> None:
    async def redirect(request: web.Request) -> web.StreamResponse:
        if request.path == "/tasks/t1/image":
            raise web.HTTPFound("/tasks/other/image?size=64&raw=1")
        return web.Response(body=PNG, content_type="image/png")

    fake = await fake_server(redirect)
    with pytest.raises(resizer.BadResponse, match=r"302 \(a redirect to /tasks/other"):
        await connect(fake.url).fetch("t1", 64)
    assert [seen.raw_path for seen in fake.seen] == ["/tasks/t1/image?size=64&raw=1"]


def test_a_size_that_does_not_exist_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="size must be one of"):
        Client("http://127.0.0.1:1").fetch("t1", 128)


# --- deleting and errors ------------------------------------------------------------------------


async def test_delete_is_true_then_false(fake_server: StartFake, connect: Connect) -> None:
    deleted: set[str] = set()

    async def delete(request: web.Request) -> web.Response:
        task_id = request.match_info["tail"].removeprefix("tasks/")
        if task_id in deleted:
            return error(404, "not_found", "no task")
        deleted.add(task_id)
        return web.Response(status=204)

    fake = await fake_server(delete)
    client = connect(fake.url)
    assert await client.delete("t1") is True
    assert await client.delete("t1") is False
    assert [seen.method for seen in fake.seen] == ["DELETE", "DELETE"]


async def test_server_errors_are_api_errors_with_status_and_code(
    fake_server: StartFake, connect: Connect
) -> None:
    async def errors(request: web.Request) -> web.Response:
        if request.method == "POST":
            return error(422, "invalid_image", "the image must be square, got 80x40")
        if request.method == "DELETE":
            return error(503, "unavailable", "the task store (Redis) is unavailable")
        return web.Response(status=502, text="<html>Bad Gateway</html>", content_type="text/html")

    fake = await fake_server(errors)
    client = connect(fake.url)
    with pytest.raises(resizer.ApiError) as rejected:
        await client.submit(PNG)
    assert (rejected.value.status, rejected.value.code) == (422, "invalid_image")
    assert rejected.value.message == "422 the image must be square, got 80x40"
    with pytest.raises(resizer.ApiError) as unavailable:
        await client.delete("t1")
    assert (unavailable.value.status, unavailable.value.code) == (503, "unavailable")
    with pytest.raises(resizer.ApiError) as proxy:
        await client.status("t1")
    assert (proxy.value.status, proxy.value.code) == (502, "http_error")
    assert "Bad Gateway" in proxy.value.message


async def test_an_overloaded_server_is_asked_again_after_its_retry_after(
    fake_server: StartFake, connect: Connect
) -> None:
    """503 overloaded stored nothing: the same upload goes again, Retry-After seconds later."""
    answers = [0.05, 0.0, None]  # Retry-After of each 503, then a 201

    async def busy_twice(request: web.Request) -> web.Response:
        after = answers.pop(0)
        if after is None:
            return web.json_response({"id": "t1", "status": "WAITING"}, status=201)
        refused = error(503, "overloaded", "this server holds its limit of uploads")
        refused.headers["Retry-After"] = f"{after:g}"
        return refused

    fake = await fake_server(busy_twice)
    client = connect(fake.url)
    started = asyncio.get_running_loop().time()
    assert (await client.submit(PNG)).id == "t1"
    assert asyncio.get_running_loop().time() - started >= 0.05  # it waited as asked
    assert [seen.body for seen in fake.seen] == [PNG, PNG, PNG]


async def test_an_upload_refused_as_overloaded_every_time_is_an_api_error(
    fake_server: StartFake, connect: Connect
) -> None:
    async def always_busy(request: web.Request) -> web.Response:
        refused = error(503, "overloaded", "this server holds its limit of uploads")
        refused.headers["Retry-After"] = "0"
        return refused

    fake = await fake_server(always_busy)
    client = connect(fake.url)
    with pytest.raises(resizer.ApiError) as refused:
        await client.submit(PNG)
    assert (refused.value.status, refused.value.code) == (503, "overloaded")
    assert len(fake.seen) == OVERLOADED_TRIES


async def test_an_answer_of_the_wrong_shape_is_a_bad_response(
    fake_server: StartFake, connect: Connect
) -> None:
    async def wrong(request: web.Request) -> web.Response:
        if request.method == "POST":
            return web.Response(text="not json", status=201)
        return web.json_response({"id": "t1", "status": "SLEEPING"})

    fake = await fake_server(wrong)
    client = connect(fake.url)
    with pytest.raises(resizer.BadResponse, match="TaskCreated"):
        await client.submit(PNG)
    with pytest.raises(resizer.BadResponse, match="TaskView"):
        await client.status("t1")


async def test_an_unreachable_server_is_server_unreachable(connect: Connect) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(resizer.ServerUnreachable) as caught:
        await connect(url).status("t1")
    assert url in caught.value.message
    assert "resizer up" in caught.value.message
    assert caught.value.code == "unreachable"


async def test_an_answer_slower_than_the_timeout_is_server_unreachable(
    fake_server: StartFake, connect: Connect
) -> None:
    answered = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await answered.wait()  # never set: the client's timeout must end the request
        return web.json_response({"status": "ok"})

    fake = await fake_server(slow)
    with pytest.raises(resizer.ServerUnreachable, match="failed"):
        await connect(fake.url, timeout=0.2).health()


def test_the_sync_client_retries_once_on_a_kept_alive_connection_the_server_closed() -> None:
    """The server answers one request per connection, then closes it without saying so."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    connections = 0
    closed = threading.Event()

    def serve() -> None:
        nonlocal connections
        for _ in range(2):
            conn, _addr = listener.accept()
            connections += 1
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                body = b'{"status": "ok"}'
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
            closed.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with Client(f"http://127.0.0.1:{port}") as client:
            assert client.health() is True
            assert closed.wait(10)
            assert client.health() is True
        thread.join(10)
        assert connections == 2
    finally:
        listener.close()


_CLI_WITHOUT_SERVER = r"""
import sys

BLOCKED = (
    "redis", "hiredis", "PIL", "numpy", "numba", "pyspng", "deflate", "prometheus_client",
    "resizer.api", "resizer.worker", "resizer.store", "resizer.imaging", "resizer.recovery",
    "resizer.embedded", "resizer.processes", "resizer.pngdecode", "resizer.cmyk",
)


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{name} must not be imported by a client command")
        return None


sys.meta_path.insert(0, Blocker())
from resizer.__main__ import main

sys.argv = ["resizer", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (["status", "t1"], 3),
        (["delete", "t1"], 3),
        (["fetch", "t1", "--wait", "-o", "-"], 3),
        (["submit", "-"], 3),
        (["healthcheck"], 1),
    ],
)
def test_client_commands_never_import_the_server(command: list[str], code: int) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESIZER_")}
    done = subprocess.run(
        [sys.executable, "-c", _CLI_WITHOUT_SERVER, *command, "--url", url],
        env=env,
        input=PNG,
        capture_output=True,
        timeout=60,
        check=False,
    )
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr
    assert done.returncode == code, stderr
    assert url in stderr
