"""``resizer fetch`` against a hostile server: it writes only where the user asked, never over a
file or through a symlink without --force, and acts on no answer that does not fit the request."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from resizer.processes import resizer_command

ServerFactory = Callable[..., Awaitable[TestServer]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PNG = b"\x89PNG\r\n\x1a\n" + bytes(32)
OLD = b"the file that was there before"
TASK = "5f0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e"


@attrs.frozen
class Run:
    code: int
    stdout: str
    stderr: str


@attrs.define
class Hostile:
    """A fake resizer server; ``image`` and ``status`` answer as each test makes them."""

    image: Handler
    status: Handler | None = None
    requested: list[str] = attrs.Factory(list)
    url: str = ""


async def png(request: web.Request) -> web.StreamResponse:
    return web.Response(body=PNG, content_type="image/png")


@pytest.fixture
def start(aiohttp_server: ServerFactory) -> Callable[[Hostile], Awaitable[Hostile]]:
    async def go(server: Hostile) -> Hostile:
        async def route(request: web.Request) -> web.StreamResponse:
            server.requested.append(request.raw_path)
            if request.path.endswith("/image"):
                return await server.image(request)
            assert server.status is not None, request.path
            return await server.status(request)

        app = web.Application()
        app.router.add_get("/{tail:.*}", route)
        server.url = str((await aiohttp_server(app)).make_url("")).rstrip("/")
        return server

    return go


Start = Callable[[Hostile], Awaitable[Hostile]]


async def fetch(server: Hostile, *args: str) -> Run:
    """``resizer fetch ARGS`` as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESIZER_")}
    proc = await asyncio.create_subprocess_exec(
        *resizer_command("fetch", *args, "--url", server.url),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Run(proc.returncode, stdout.decode(), stderr.decode())


def tree(root: Path) -> dict[str, bytes | str]:
    """Every file under ``root`` with its bytes, every symlink with its target (not followed)."""
    entries: dict[str, bytes | str] = {}
    for path in root.rglob("*"):
        name = str(path.relative_to(root))
        if path.is_symlink():
            entries[name] = f"-> {path.readlink()}"
        elif path.is_file():
            entries[name] = path.read_bytes()
    return entries


def one_line(run: Run) -> str:
    assert "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1, run.stderr
    return run.stderr


# --- the server names no file -------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        {"headers": {"Content-Type": "image/sh/../../victim"}, "body": PNG},
        {
            "headers": {"Content-Type": "application/json"},
            "body": json.dumps(
                {
                    "id": "../../victim",
                    "size": "64",
                    "width": 64,
                    "height": 64,
                    "format": "sh/../../victim",
                    "data": base64.b64encode(PNG).decode(),
                }
            ).encode(),
        },
    ],
    ids=["media-type", "json-image-view"],
)
async def test_a_format_from_the_server_never_names_a_file(
    start: Start, tmp_path: Path, answer: dict[str, Any]
) -> None:
    async def hostile(request: web.Request) -> web.StreamResponse:
        return web.Response(**answer)

    server = await start(Hostile(hostile))
    out = tmp_path / "a" / "b" / "out"
    out.mkdir(parents=True)
    before = tree(tmp_path)

    run = await fetch(server, TASK, "-o", str(out))
    assert run.code == 1
    assert "not one of jpeg, png, webp, gif, tiff, bmp, avif" in one_line(run)
    assert tree(tmp_path) == before  # nothing written, inside or outside the directory


async def test_the_file_name_is_the_id_the_user_typed(start: Start, tmp_path: Path) -> None:
    server = await start(Hostile(png))
    out = tmp_path / "out"
    run = await fetch(server, TASK, "-o", f"{out}/")
    assert run.code == 0, run.stderr
    assert tree(tmp_path) == {f"out/{TASK}_64.png": PNG}
    assert run.stdout.splitlines() == [f"{out}/{TASK}_64.png"]


async def test_an_id_that_is_not_a_plain_name_writes_nothing(start: Start, tmp_path: Path) -> None:
    server = await start(Hostile(png))  # answers any request with an image
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    run = await fetch(server, "../../escaped", "-o", str(out))
    assert run.code == 1
    assert "cannot name a file" in one_line(run)
    assert tree(tmp_path) == {}


# --- never over a file or through a symlink without --force -------------------------------------


async def test_a_dangling_symlink_at_the_target_is_never_followed(
    start: Start, tmp_path: Path
) -> None:
    server = await start(Hostile(png))
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    link = out / f"{TASK}_64.png"
    link.symlink_to(victim)
    single = tmp_path / "single.png"
    single.symlink_to(victim)

    refused = await fetch(server, TASK, "-o", str(out))
    assert refused.code == 1
    assert "exists; pass --force" in one_line(refused)
    refused_file = await fetch(server, TASK, "-o", str(single))
    assert refused_file.code == 1
    assert not victim.exists()
    assert link.is_symlink()

    forced = await fetch(server, TASK, "-o", str(out), "--force")
    assert forced.code == 0, forced.stderr
    assert not victim.exists()
    assert not link.is_symlink()
    assert link.read_bytes() == PNG
    assert tree(out) == {link.name: PNG}  # no temporary file left


async def test_an_existing_file_is_replaced_only_with_force(start: Start, tmp_path: Path) -> None:
    server = await start(Hostile(png))
    target = tmp_path / "thumb.png"
    target.write_bytes(OLD)

    refused = await fetch(server, TASK, "-o", str(target))
    assert refused.code == 1
    assert f"{target} exists; pass --force to overwrite it" in one_line(refused)
    assert target.read_bytes() == OLD

    forced = await fetch(server, TASK, "-o", str(target), "--force")
    assert forced.code == 0, forced.stderr
    assert target.read_bytes() == PNG
    assert tree(tmp_path) == {"thumb.png": PNG}  # no temporary file left


# --- answers that do not fit the request --------------------------------------------------------


async def test_wait_refuses_a_status_about_another_task(start: Start, tmp_path: Path) -> None:
    async def other(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "id": "another-task",
                "status": "DONE",
                "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z",
                "attempts": 1,
            }
        )

    server = await start(Hostile(png, status=other))
    run = await fetch(server, TASK, "--wait", "-o", str(tmp_path))
    assert run.code == 1
    assert "another-task" in one_line(run)
    assert tree(tmp_path) == {}
    assert not any(path.endswith("/image") or "/image?" in path for path in server.requested)


async def test_a_redirect_to_another_tasks_image_is_refused(start: Start, tmp_path: Path) -> None:
    async def redirect(request: web.Request) -> web.StreamResponse:
        if TASK in request.path:
            raise web.HTTPFound("/tasks/another-task/image?size=64&raw=1")
        return await png(request)

    server = await start(Hostile(redirect))
    run = await fetch(server, TASK, "-o", str(tmp_path))
    assert run.code == 1
    assert "302" in one_line(run)
    assert tree(tmp_path) == {}
    assert server.requested == [f"/tasks/{TASK}/image?size=64&raw=1"]


async def test_one_refused_item_does_not_stop_the_others_and_json_lists_both(
    start: Start, tmp_path: Path
) -> None:
    async def half_hostile(request: web.Request) -> web.StreamResponse:
        if "bad" in request.path:
            return web.Response(body=PNG, headers={"Content-Type": "image/x-evil"})
        return await png(request)

    server = await start(Hostile(half_hostile))
    run = await fetch(server, "good", "bad", "-o", str(tmp_path), "--json")
    assert run.code == 1
    items = json.loads(run.stdout)
    assert [(item["id"], item["size"]) for item in items] == [("good", "64"), ("bad", "64")]
    assert items[0]["path"] == str(tmp_path / "good_64.png")
    assert items[0]["error"] is None
    assert items[1]["path"] is None
    assert items[1]["error"]["code"] == "bad_response"
    assert tree(tmp_path) == {"good_64.png": PNG}


async def test_stdout_takes_one_image_and_nothing_else(start: Start) -> None:
    server = await start(Hostile(png))
    for args in (["-o", "-", "--json"], ["--size", "all", "-o", "-"]):
        run = await fetch(server, TASK, *args)
        assert run.code == 2
        assert "-o - writes one image" in one_line(run)
        assert run.stdout == ""
    assert server.requested == []
