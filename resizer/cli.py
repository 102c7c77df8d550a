"""The ``resizer`` command. Sync on the outside (typer), ``asyncio.run`` inside.

Service commands: serve, work, recover, up, healthcheck. Client commands: submit, status, fetch.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import attrs
import typer

from resizer import __version__, logs
from resizer.config import Settings
from resizer.errors import ResizerError
from resizer.models import ImageSize, TaskStatus

T = TypeVar("T")

app = typer.Typer(
    name="resizer",
    help="Resize square images to 64x64 and 32x32 through a Redis queue that never loses a task.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)

UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="RESIZER_URL", help="Address of the resizer server."),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"resizer {__version__}")
        raise typer.Exit


@app.callback()
def root(
    ctx: typer.Context,
    redis_url: Annotated[
        str | None, typer.Option(envvar="REDIS_URL", help="[default: redis://localhost:6379/0]")
    ] = None,
    lease_seconds: Annotated[
        int, typer.Option(envvar="RESIZER_LEASE_SECONDS", min=1, help="Worker lease length.")
    ] = 30,
    max_attempts: Annotated[
        int, typer.Option(envvar="RESIZER_MAX_ATTEMPTS", min=1, help="Claims before FAILED.")
    ] = 3,
    ttl_seconds: Annotated[
        int, typer.Option(envvar="RESIZER_TTL_SECONDS", min=1, help="Retention of a task.")
    ] = 86400,
    max_body_bytes: Annotated[
        int, typer.Option(envvar="RESIZER_MAX_BODY_BYTES", min=1, help="Largest request body.")
    ] = 32 * 1024 * 1024,
    max_pixels: Annotated[
        int, typer.Option(envvar="RESIZER_MAX_PIXELS", min=1, help="Largest image accepted.")
    ] = 50_000_000,
    log_level: Annotated[str, typer.Option(envvar="RESIZER_LOG_LEVEL")] = "INFO",
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """Resize square images to 64x64 and 32x32 through a reliable Redis queue."""
    settings = Settings(
        lease_seconds=lease_seconds,
        max_attempts=max_attempts,
        ttl_seconds=ttl_seconds,
        max_body_bytes=max_body_bytes,
        max_pixels=max_pixels,
    )
    if redis_url is not None:
        settings = attrs.evolve(settings, redis_url=redis_url)
    ctx.obj = _Context(settings=settings, redis_url_given=redis_url is not None)
    service = ctx.invoked_subcommand in {"serve", "work", "recover", "up"}
    logs.configure(
        log_level.upper() if service else "WARNING", stream=None if service else sys.stderr
    )


@attrs.frozen
class _Context:
    settings: Settings
    redis_url_given: bool


def _settings(ctx: typer.Context) -> Settings:
    obj: _Context = ctx.obj
    return obj.settings


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a client coroutine; any ResizerError becomes one line on stderr and exit code 1."""
    try:
        return asyncio.run(coro)
    except ResizerError as exc:
        typer.echo(f"resizer: {exc.message}", err=True)
        raise typer.Exit(1) from None


# --- service commands ---------------------------------------------------------------------------


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "0.0.0.0",  # noqa: S104
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Run the JSON API.  Example: resizer serve --port 8080"""
    from resizer.api import serve as run_server

    run_server(_settings(ctx), host, port)


@app.command()
def work(
    ctx: typer.Context,
    processes: Annotated[int, typer.Option(min=1, help="Worker processes to run.")] = 1,
) -> None:
    """Claim and process tasks; SIGTERM finishes the current task, then exits 0.

    Example: resizer work --processes 4
    """
    settings = _settings(ctx)
    if processes == 1:
        from resizer.worker import serve_worker

        asyncio.run(serve_worker(settings))
        return
    from resizer.processes import Child, Supervisor, resizer_command

    children = [
        Child(f"worker-{i}", resizer_command("work"), stop_grace=settings.lease_seconds + 5)
        for i in range(processes)
    ]
    raise typer.Exit(Supervisor(children, settings.to_env()).run())


@app.command()
def recover(
    ctx: typer.Context,
    every: Annotated[
        float | None, typer.Option(min=0.1, help="Loop, one pass every SECONDS.")
    ] = None,
) -> None:
    """Re-queue tasks whose lease expired (FAIL them past the attempt cap).

    One pass by default (for cron); a loop with --every.  Example: resizer recover --every 30
    """
    from resizer.recovery import run_recovery

    _run(run_recovery(_settings(ctx), every, typer.echo))


@app.command()
def up(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface for the API.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the API.")] = 8080,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes [default: number of cores].")
    ] = None,
) -> None:
    """Run the whole service on this machine: Redis, the API, workers and recovery.

    Example: resizer up --port 8080 --workers 2
    """
    from resizer.embedded import RedisServer
    from resizer.processes import Child, Supervisor, resizer_command

    obj: _Context = ctx.obj
    settings = obj.settings
    redis = None
    if not obj.redis_url_given:
        redis = RedisServer().start()
        settings = attrs.evolve(settings, redis_url=redis.url)
    count = workers or os.cpu_count() or 1
    grace = settings.lease_seconds + 5
    children = [
        *(Child(f"worker-{i}", resizer_command("work"), grace) for i in range(count)),
        Child(
            "recover", resizer_command("recover", "--every", str(settings.recover_every_seconds))
        ),
        Child("web", resizer_command("serve", "--host", host, "--port", str(port))),
    ]
    typer.echo(
        f"resizer is up: http://{host}:{port}  (redis {settings.redis_url}, {count} workers)"
        "  Ctrl-C stops it.",
        err=True,
    )
    try:
        code = Supervisor(children, settings.to_env()).run()
    finally:
        if redis is not None:
            redis.stop()
    raise typer.Exit(code)


@app.command()
def healthcheck(
    url: Annotated[str, typer.Option(envvar="RESIZER_URL")] = "http://127.0.0.1:8080",
) -> None:
    """Exit 0 when the server's /health answers 200 (for container HEALTHCHECKs)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=3) as response:  # noqa: S310
            healthy = response.status == 200
    except OSError as exc:
        typer.echo(f"resizer: unhealthy: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(0 if healthy else 1)


# --- client commands ----------------------------------------------------------------------------


@app.command()
def submit(
    files: Annotated[list[Path], typer.Argument(help="Square image files.")],
    wait: Annotated[bool, typer.Option(help="Wait until every task is DONE or FAILED.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: give up after SECONDS.")] = 300,
    url: UrlOption = "http://127.0.0.1:8080",
) -> None:
    """Submit images; prints one task id per line.  Example: resizer submit cat.jpg --wait"""
    from resizer.client import connect

    async def go() -> int:
        failed = 0
        async with connect(url) as client:
            ids = []
            for path in files:
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    raise ResizerError(f"cannot read {path}: {exc.strerror}") from None
                created = await client.submit(data)
                typer.echo(created.id)
                ids.append((path, created.id))
            if wait:
                deadline = time.monotonic() + timeout
                for path, task_id in ids:
                    view = await client.wait(task_id, max(0.0, deadline - time.monotonic()))
                    if view.status is TaskStatus.FAILED:
                        failed += 1
                        typer.echo(
                            f"resizer: {path}: task {task_id} FAILED: {view.error}", err=True
                        )
                    elif view.status is not TaskStatus.DONE:
                        failed += 1
                        typer.echo(f"resizer: {path}: task {task_id} still {view.status}", err=True)
        return failed

    if _run(go()):
        raise typer.Exit(1)


@app.command()
def status(task_id: str, url: UrlOption = "http://127.0.0.1:8080") -> None:
    """Show a task's status.  Example: resizer status 3f2a..."""
    from resizer.client import connect

    async def go() -> None:
        async with connect(url) as client:
            view = await client.status(task_id)
        line = f"{view.id}  {view.status}  attempts={view.attempts}  updated={view.updated_at}"
        typer.echo(line + (f"  error={view.error}" if view.error else ""))

    _run(go())


@app.command()
def fetch(
    task_id: str,
    size: Annotated[ImageSize, typer.Option(help="64, 32 or original.")] = ImageSize.S64,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="File to write [default: ID_SIZE.EXT].")
    ] = None,
    url: UrlOption = "http://127.0.0.1:8080",
) -> None:
    """Write one size of a task's image to a file.  Example: resizer fetch ID --size 64 -o a.jpg"""
    import base64

    from resizer.client import connect

    async def go() -> Path:
        async with connect(url) as client:
            view = await client.image(task_id, size)
        target = output or Path(
            f"{task_id}_{size.value}.{'jpg' if view.format == 'jpeg' else view.format}"
        )
        try:
            target.write_bytes(base64.b64decode(view.data))
        except OSError as exc:
            raise ResizerError(f"cannot write {target}: {exc.strerror}") from None
        return target

    typer.echo(_run(go()))


def main() -> None:
    app()
