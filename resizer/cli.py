"""The ``resizer`` command. Sync on the outside (typer), ``asyncio.run`` inside.

Service commands: serve, work, recover, up, healthcheck. Client commands: submit, status, fetch.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import attrs
import typer

from resizer import __version__, logs
from resizer.client import DEFAULT_URL, Client, SubmitResult
from resizer.config import Settings
from resizer.errors import ResizerError
from resizer.models import ImageSize, TaskStatus, TaskView, converter

T = TypeVar("T")
DEFAULTS = Settings()  # the one source of the defaults the flags show

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
# The server, the worker and Pillow are imported inside the commands that run them, so client
# commands do not pay for them at start-up.


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
    ] = DEFAULTS.lease_seconds,
    max_attempts: Annotated[
        int, typer.Option(envvar="RESIZER_MAX_ATTEMPTS", min=1, help="Claims before FAILED.")
    ] = DEFAULTS.max_attempts,
    ttl_seconds: Annotated[
        int, typer.Option(envvar="RESIZER_TTL_SECONDS", min=1, help="Retention of a task.")
    ] = DEFAULTS.ttl_seconds,
    max_body_bytes: Annotated[
        int, typer.Option(envvar="RESIZER_MAX_BODY_BYTES", min=1, help="Largest request body.")
    ] = DEFAULTS.max_body_bytes,
    max_pixels: Annotated[
        int, typer.Option(envvar="RESIZER_MAX_PIXELS", min=1, help="Largest image accepted.")
    ] = DEFAULTS.max_pixels,
    log_level: Annotated[str, typer.Option(envvar="RESIZER_LOG_LEVEL")] = "INFO",
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """Resize square images to 64x64 and 32x32 through a reliable Redis queue."""
    # The settings without a flag of their own come from the environment.
    settings = attrs.evolve(
        Settings.from_env(),
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
    """Run a coroutine; a ResizerError becomes one line on stderr and its exit code."""
    try:
        return asyncio.run(coro)
    except ResizerError as exc:
        typer.echo(f"resizer: {exc.message}", err=True)
        raise typer.Exit(exc.exit_code) from None


# --- service commands ---------------------------------------------------------------------------


def _serve(run: Callable[[], None]) -> None:
    """Run a service; a refusal to run (ResizerError) is one line on stderr and its exit code."""
    try:
        run()
    except ResizerError as exc:
        typer.echo(f"resizer: {exc.message}", err=True)
        raise typer.Exit(exc.exit_code) from None


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "0.0.0.0",  # noqa: S104
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Run the JSON API.  Example: resizer serve --port 8080"""
    from resizer.api import serve as run_server

    _serve(lambda: run_server(_settings(ctx), host, port))


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

        _serve(lambda: asyncio.run(serve_worker(settings)))
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
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the embedded Redis keeps its data [default: ~/.local/share/resizer/redis]."
        ),
    ] = None,
    ephemeral: Annotated[
        bool, typer.Option(help="Keep nothing on disk: every task is gone when up stops.")
    ] = False,
    maxmemory: Annotated[
        int | None,
        typer.Option(min=1, help="Bytes the embedded Redis may hold [default: a quarter of RAM]."),
    ] = None,
) -> None:
    """Run the whole service on this machine: Redis, the API, workers and recovery.

    The embedded Redis keeps an append-only file in --data-dir (fsynced every second): stopping
    or killing up and starting it again loses no task acknowledged more than a second earlier.

    Example: resizer up --port 8080 --workers 2
    """
    from resizer.embedded import (
        DataDirInUse,
        RedisServer,
        default_data_dir,
        default_maxmemory,
    )
    from resizer.processes import Child, Supervisor, resizer_command

    obj: _Context = ctx.obj
    settings = obj.settings
    redis = None
    children = []
    if not obj.redis_url_given:
        redis = RedisServer(
            directory=None if ephemeral else (data_dir or default_data_dir()),
            persistent=not ephemeral,
            maxmemory=maxmemory or default_maxmemory(),
        )
        try:
            redis.start()
        except DataDirInUse as exc:
            typer.echo(f"resizer: {exc}", err=True)
            raise typer.Exit(2) from None
        settings = attrs.evolve(settings, redis_url=redis.url)
        # Supervised like the others: restarted if it dies, stopped last.
        children.append(Child("redis", redis.argv, stop_grace=10.0, proc=redis.proc))
    count = workers or os.cpu_count() or 1
    grace = settings.lease_seconds + 5
    children[:0] = [
        *(Child(f"worker-{i}", resizer_command("work"), grace) for i in range(count)),
        Child(
            "recover", resizer_command("recover", "--every", str(settings.recover_every_seconds))
        ),
        Child("web", resizer_command("serve", "--host", host, "--port", str(port))),
    ]
    where = "in memory only" if ephemeral else f"data in {redis.directory}" if redis else ""
    typer.echo(
        f"resizer is up: http://{host}:{port}  (redis {settings.redis_url} {where},"
        f" {count} workers)  Ctrl-C stops it.",
        err=True,
    )
    try:
        code = Supervisor(children, settings.to_env()).run()
    finally:
        if redis is not None:
            redis.release()
    raise typer.Exit(code)


@app.command()
def healthcheck(
    url: Annotated[str, typer.Option(envvar="RESIZER_URL")] = DEFAULT_URL,
) -> None:
    """Exit 0 when the server's /health answers 200 (for container HEALTHCHECKs).

    Example: resizer healthcheck --url http://127.0.0.1:8080
    """
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=3) as response:  # noqa: S310
            healthy = response.status == 200
    except OSError as exc:
        typer.echo(f"resizer: unhealthy: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(0 if healthy else 1)


# --- client commands ----------------------------------------------------------------------------


def _print_json(payload: object) -> None:
    typer.echo(json.dumps(converter.unstructure(payload), indent=2))


@app.command()
def submit(
    paths: Annotated[
        list[str], typer.Argument(help="Image files, directories (searched recursively), or -.")
    ],
    wait: Annotated[bool, typer.Option(help="Wait until every task is DONE or FAILED.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: give up after SECONDS.")] = 300,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    concurrency: Annotated[int, typer.Option(min=1, help="Uploads in flight at once.")] = 8,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Submit images; prints one task id per line.

    Examples: resizer submit cat.jpg --wait;  resizer submit photos/ --json;
    cat cat.jpg | resizer submit -
    """
    from resizer.client import connect, find_sources, submit_batch

    sources = find_sources(paths, sys.stdin.buffer.read)
    if not sources:
        typer.echo("resizer: no image files found", err=True)
        raise typer.Exit(1)
    bar = _progress(len(sources), as_json)

    finished: dict[int, SubmitResult] = {}
    printed = 0

    def report(index: int, result: SubmitResult) -> None:
        # Errors at once on stderr; ids on stdout in the order the files were given, so a
        # script can pair them with its inputs.
        nonlocal printed
        if bar is not None:
            bar.advance()
        if result.error is not None:
            where = f" (task {result.id})" if result.id else ""
            typer.echo(f"resizer: {result.source}{where}: {result.error}", err=True)
        finished[index] = result
        while printed in finished:
            done = finished.pop(printed)
            printed += 1
            if done.error is None and not as_json:
                typer.echo(done.id if bar is None else f"{done.id}  {done.source}")

    async def go() -> list[SubmitResult]:
        async with connect(url) as client:
            return await submit_batch(
                client,
                sources,
                wait=timeout if wait else None,
                concurrency=concurrency,
                on_result=report,
            )

    try:
        results = _run(go())
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        _print_json(results)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


class _Bar:
    """A progress bar on stderr, for batches on a terminal only (pipes get plain lines)."""

    def __init__(self, total: int) -> None:
        from rich.progress import Progress

        self._progress = Progress(transient=True, console=_stderr_console())
        self._task = self._progress.add_task("submitting", total=total)
        self._progress.start()

    def advance(self) -> None:
        self._progress.advance(self._task)

    def close(self) -> None:
        self._progress.stop()


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _progress(total: int, quiet: bool) -> _Bar | None:
    if total < 2 or quiet or not sys.stderr.isatty():
        return None
    return _Bar(total)


@app.command()
def status(
    task_ids: Annotated[list[str], typer.Argument(help="Task ids.", metavar="ID...")],
    watch: Annotated[bool, typer.Option(help="Follow until every task is DONE or FAILED.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Show tasks' status.  Examples: resizer status ID;  resizer status ID1 ID2 --watch --json"""
    from resizer.client import connect

    def line(view: TaskView) -> str:
        text = f"{view.id}  {view.status}  attempts={view.attempts}  updated={view.updated_at}"
        return text + (f"  error={view.error}" if view.error else "")

    async def follow(client: Client, task_id: str) -> TaskView:
        view = await client.status(task_id)
        if not as_json:
            typer.echo(line(view))
        while watch and not view.status.finished:
            latest = await client.status(task_id, wait=30)
            if latest.status is not view.status and not as_json:
                typer.echo(line(latest))
            view = latest
        return view

    async def go() -> list[TaskView]:
        async with connect(url) as client:
            return list(await asyncio.gather(*(follow(client, t) for t in task_ids)))

    views = _run(go())
    if as_json:
        _print_json(views)
    if watch and any(v.status is TaskStatus.FAILED for v in views):
        raise typer.Exit(1)


class FetchSize(enum.StrEnum):
    S64 = "64"
    S32 = "32"
    ORIGINAL = "original"
    ALL = "all"

    def sizes(self) -> list[ImageSize]:
        if self is FetchSize.ALL:
            return [ImageSize.S64, ImageSize.S32, ImageSize.ORIGINAL]
        return [ImageSize(self.value)]


@app.command()
def fetch(
    task_ids: Annotated[list[str], typer.Argument(help="Task ids.", metavar="ID...")],
    size: Annotated[FetchSize, typer.Option(help="Which image.")] = FetchSize.S64,
    output: Annotated[
        str,
        typer.Option(
            "-o",
            "--output",
            help="A directory, a file (one image only), or - for stdout. "
            "Files in a directory are named ID_SIZE.EXT.",
        ),
    ] = ".",
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Write tasks' images to files.

    Examples: resizer fetch ID --size 64 -o thumb.jpg;  resizer fetch ID1 ID2 --size all -o out/;
    resizer fetch ID -o - > thumb.jpg
    """
    import base64

    from resizer.client import connect

    wanted = [(task_id, s) for task_id in task_ids for s in size.sizes()]
    target = Path(output)
    into_dir = output != "-" and (len(wanted) > 1 or target.is_dir() or output.endswith("/"))
    if output == "-" and len(wanted) > 1:
        typer.echo("resizer: -o - writes one image; ask for one id and one size", err=True)
        raise typer.Exit(2)

    async def go() -> list[str]:
        written = []
        async with connect(url) as client:
            views = await asyncio.gather(*(client.image(t, s) for t, s in wanted))
        for view in views:
            data = base64.b64decode(view.data)
            if output == "-":
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
                continue
            ext = "jpg" if view.format == "jpeg" else view.format
            path = target / f"{view.id}_{view.size.value}.{ext}" if into_dir else target
            if path.exists() and not force:
                raise ResizerError(f"{path} exists; pass --force to overwrite it")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            except OSError as exc:
                raise ResizerError(f"cannot write {path}: {exc.strerror}") from None
            written.append(str(path))
        return written

    for path in _run(go()):
        typer.echo(path)


def main() -> None:
    app()
