"""The ``resizer`` command. Sync on the outside (typer), ``asyncio.run`` inside.

``resizer.__main__`` runs a service role's plain command line through ``resizer.roles`` without
building this app; every other command line comes here, and the service commands here call the
same runners.

Service commands: serve, work, recover, up, healthcheck. Client commands: submit, status, fetch,
delete; they read only the client settings and talk to the server through ``AsyncClient``.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import attrs
import structlog
import typer

from resizer import __version__, logs, roles
from resizer.client import AsyncClient, TaskFailed, WaitTimeout
from resizer.client.batch import (
    DeleteItem,
    FetchItem,
    ItemError,
    Source,
    StatusItem,
    SubmitItem,
    find_sources,
    run_each,
)
from resizer.client.files import file_name, write_file
from resizer.config import (
    ClientSettings,
    LogLevel,
    Settings,
    flag_name,
    is_given,
    mask_url,
    spec_of,
    specs,
)
from resizer.errors import ResizerError, ServerUnreachable
from resizer.models import ImageSize, QueueInfo, TaskView, converter
from resizer.roles import ExitCode

T = TypeVar("T")
log = structlog.get_logger("resizer.cli")


EXIT_CODES = (
    "Exit codes: 0 ok; 1 a task FAILED or an item was rejected, unknown or not written; "
    "2 usage or configuration error; 3 the server could not be reached."
)

app = typer.Typer(
    name="resizer",
    help="Resize square images to 64x64 and 32x32 through a Redis queue that never loses a task.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
# The server, the worker and Pillow are imported inside the commands that run them, so client
# commands do not pay for them at start-up.


def _version(value: bool) -> None:
    if value:
        typer.echo(f"resizer {__version__}")
        raise typer.Exit


@attrs.frozen
class _Context:
    flags: dict[str, str | None]
    """The server-setting flags as typed (text), by field name; parsed with the environment."""


def root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
    **flags: str | None,
) -> None:
    """Resize square images to 64x64 and 32x32 through a reliable Redis queue."""
    ctx.obj = _Context(flags=flags)


def _with_setting_flags(callback: Callable[..., None]) -> Callable[..., None]:
    """Give ``callback`` one text option per server setting, from the settings' specs.

    typer reads options from the signature, so the flags are added to it; their values reach
    ``**flags`` and are parsed by the settings, with the environment, by the commands that use
    them: a client command never trips over a server setting.
    """
    signature = inspect.signature(callback, eval_str=True)
    fixed = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    added = [
        inspect.Parameter(
            field.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                str | None,
                typer.Option(
                    flag_name(field.name),
                    # Parentheses, not brackets: rich would read [...] as markup.
                    help=f"{spec.help} (env {spec.env}, default "
                    f"{spec.default_text(field).replace('`', '')})",
                    metavar=spec.kind.metavar,
                    show_default=False,
                    rich_help_panel="Server settings (serve, work, recover, up)",
                ),
            ],
        )
        for field, spec in specs(Settings)
        if spec.flag
    ]
    callback.__signature__ = signature.replace(parameters=[*fixed, *added])  # type: ignore[attr-defined]
    return callback


app.callback()(_with_setting_flags(root))


def _service_settings(ctx: typer.Context) -> Settings:
    obj: _Context = ctx.obj
    return roles.settings_from(obj.flags)


def _client_settings(url: str | None) -> ClientSettings:
    logs.configure(LogLevel.WARNING, stream=sys.stderr)
    return roles.configured(lambda: ClientSettings.from_env(flags={"url": url}))


def _client(settings: ClientSettings) -> AsyncClient:
    return AsyncClient(settings.url, token=settings.api_token, timeout=settings.timeout_seconds)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a client coroutine; an error that stops it is one line on stderr, never a traceback."""
    try:
        return asyncio.run(coro)
    except ServerUnreachable as exc:
        typer.echo(f"resizer: {exc.message}", err=True)
        raise typer.Exit(ExitCode.UNREACHABLE) from None
    except ResizerError as exc:
        typer.echo(f"resizer: {exc.message}", err=True)
        raise typer.Exit(exc.exit_code) from None


_URL_SPEC = spec_of(ClientSettings, "url")
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help=f"Address of the resizer server (env {_URL_SPEC.env}, default {ClientSettings().url})",
        metavar=_URL_SPEC.kind.metavar,
        show_default=False,
    ),
]


# --- service commands ---------------------------------------------------------------------------


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = roles.SERVE_HOST,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = roles.SERVE_PORT,
) -> None:
    """Run the JSON API.  Example: resizer serve --port 8080"""
    obj: _Context = ctx.obj
    roles.serve(obj.flags, host, port)


CheckOption = Annotated[
    bool,
    typer.Option(
        "--check",
        help="Do not run: exit 0 if a process of this role on this host showed it is alive "
        "recently, else 1 (a container's health check).",
    ),
]


@app.command()
def work(
    ctx: typer.Context,
    processes: Annotated[int, typer.Option(min=1, help="Worker processes to run.")] = 1,
    check: CheckOption = False,
) -> None:
    """Claim and process tasks; SIGTERM finishes the current task, then exits 0.

    Example: resizer work --processes 4;  health check: resizer work --check
    """
    obj: _Context = ctx.obj
    roles.work(obj.flags, processes, check)


@app.command()
def recover(
    ctx: typer.Context,
    every: Annotated[
        float | None, typer.Option(min=0.1, help="Loop, one pass every SECONDS.")
    ] = None,
    check: CheckOption = False,
) -> None:
    """Re-queue tasks whose lease expired (FAIL them past the attempt cap).

    One pass by default (for cron); a loop with --every. Each pass logs recovery.finished.
    Example: resizer recover --every 30;  health check: resizer recover --check
    """
    obj: _Context = ctx.obj
    roles.recover(obj.flags, every, check)


def default_workers() -> int:
    """One more worker than the cores this process may run on. A worker waits on its own round
    trips to Redis for part of every task, leaving its core idle meanwhile: on 2 cores, 3
    workers drain a backlog of 1024 px photos ~25% faster than 2."""
    return len(os.sched_getaffinity(0)) + 1


@app.command()
def up(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface for the API.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the API.")] = 8080,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Worker processes [default: one more than the cores up may run on]."
        ),
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
    settings = _service_settings(ctx)
    from resizer.embedded import (
        DataDirInUse,
        RedisServer,
        default_data_dir,
        default_maxmemory,
    )
    from resizer.processes import Child, Supervisor, resizer_command

    obj: _Context = ctx.obj
    redis = None
    children = []
    if obj.flags.get("redis_url") is None and not is_given(Settings, "redis_url"):
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
    count = workers or default_workers()
    grace = settings.lease_seconds + 5
    children[:0] = [
        *(Child(f"worker-{i}", resizer_command("work"), grace) for i in range(count)),
        Child(
            "recover", resizer_command("recover", "--every", str(settings.recover_every_seconds))
        ),
        Child("web", resizer_command("serve", "--host", host, "--port", str(port))),
    ]
    log.info(
        "up.started",
        url=f"http://{host}:{port}",
        redis=mask_url(settings.redis_url),
        data=None if redis is None else "in memory only" if ephemeral else str(redis.directory),
        workers=count,
        stop_with="Ctrl-C",
    )
    try:
        code = Supervisor(children, settings.to_env()).run()
    finally:
        if redis is not None:
            redis.release()
    raise typer.Exit(code)


@app.command()
def healthcheck(
    url: UrlOption = None,
    role: Annotated[
        roles.HealthRole,
        typer.Option(
            help="web: the server's /health answers 200. auto: a worker or recover loop on "
            "this host turned recently, else as web (one check for an image that runs every "
            "role)."
        ),
    ] = roles.HealthRole.WEB,
) -> None:
    """Exit 0 when healthy, else 1 (Docker's HEALTHCHECK convention).

    Example: resizer healthcheck --url http://127.0.0.1:8080;  resizer healthcheck --role auto
    """
    roles.healthcheck(url, role)


@app.command()
def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    watch: Annotated[
        float | None, typer.Option(min=0.5, help="Refresh every SECONDS until Ctrl-C.")
    ] = None,
    failures: Annotated[
        int, typer.Option(min=0, max=100, help="How many recent failures to show.")
    ] = 10,
    url: UrlOption = None,
) -> None:
    """The queue at a glance: lengths, the oldest waiting task, tasks in flight with their
    worker, the workers, the last failures (from the server's GET /info).

    Example: resizer info;  resizer info --watch 2;  resizer info --json
    """
    settings = _client_settings(url)

    async def read() -> QueueInfo:
        async with _client(settings) as client:
            return await client.info(failures)

    while True:
        view = _run(read())
        if as_json:
            typer.echo(json.dumps(converter.unstructure(view), indent=2))
        else:
            if watch is not None and sys.stdout.isatty():
                typer.echo("\x1b[H\x1b[2J", nl=False)  # a fresh screen each time
            typer.echo(_describe(view))
        if watch is None:
            return
        time.sleep(watch)


def _describe(view: QueueInfo) -> str:
    """``resizer info`` for a human."""
    stats = view.stats

    def age(since: Any) -> str:
        return f"{(view.at - since).total_seconds():.1f} s"

    lines = [
        f"queue    {stats.waiting} waiting (oldest {stats.oldest_waiting_seconds:.1f} s), "
        f"{stats.in_flight} in progress, {view.taken_unclaimed} taken but not claimed",
        f"totals   {stats.counters.get('created', 0)} created, "
        f"{stats.counters.get('done', 0)} done, {stats.counters.get('failed', 0)} failed, "
        f"{stats.counters.get('recovered', 0)} recovered, "
        f"{stats.counters.get('retried', 0)} retried",
        f"workers  {len(view.workers)}",
    ]
    for worker in view.workers:
        doing = f"busy with {worker.task_id}" if worker.task_id else "idle"
        record = worker.record
        lines.append(
            f"  {record.name}  {doing}  done={record.done} failed={record.failed}  "
            f"up {age(record.started_at)}  version {record.version}"
        )
    overdue = stats.lease_overdue_seconds
    lines.append(
        f"in flight  {len(view.in_flight)}"
        + (f"  (a lease expired {overdue:.1f} s ago: is recovery running?)" if overdue else "")
    )
    lines += [
        f"  {f.task_id}  worker {f.worker}  attempt {f.attempt}  for {age(f.since)}"
        for f in view.in_flight
    ]
    lines.append(f"recent failures  {len(view.failures)}")
    lines += [f"  {f.at:%Y-%m-%d %H:%M:%S}  {f.task_id}  {f.error}" for f in view.failures]
    return "\n".join(lines)


# --- client commands ----------------------------------------------------------------------------


def _print_json(items: Sequence[object]) -> None:
    typer.echo(json.dumps(converter.unstructure(items), indent=2))


def _report_error(name: str, error: ItemError | None) -> None:
    if error is not None:
        typer.echo(f"resizer: {name}: {error.message}", err=True)


def _exit_for(errors: Sequence[ItemError | None]) -> None:
    if any(error is not None for error in errors):
        raise typer.Exit(ExitCode.FAILED)


JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON record per item, errors included.")
]


@app.command(epilog=EXIT_CODES)
def submit(
    paths: Annotated[
        list[str], typer.Argument(help="Image files, directories (searched recursively), or -.")
    ],
    wait: Annotated[bool, typer.Option(help="Wait until every task is DONE or FAILED.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: give up after SECONDS.")] = 300,
    as_json: JsonOption = False,
    concurrency: Annotated[int, typer.Option(min=1, help="Uploads in flight at once.")] = 8,
    url: UrlOption = None,
) -> None:
    """Submit images; prints one task id per line, in the order given.

    Examples: resizer submit cat.jpg --wait;  resizer submit photos/ --json;
    cat cat.jpg | resizer submit -
    """
    settings = _client_settings(url)
    sources = find_sources(paths, sys.stdin.buffer.read)
    if not sources:
        typer.echo("resizer: no image files found", err=True)
        raise typer.Exit(ExitCode.FAILED)
    bar = _progress(len(sources), as_json)
    deadline = time.monotonic() + timeout
    finished: dict[int, SubmitItem] = {}
    printed = 0

    def report(index: int, item: SubmitItem) -> None:
        # Errors at once on stderr; ids on stdout in the order the files were given, so a
        # script can pair them with its inputs.
        nonlocal printed
        if bar is not None:
            bar.advance()
        _report_error(item.source, item.error)
        finished[index] = item
        while printed in finished:
            done = finished.pop(printed)
            printed += 1
            if done.id is not None and done.error is None and not as_json:
                typer.echo(done.id if bar is None else f"{done.id}  {done.source}")

    async def go() -> list[SubmitItem]:
        async with _client(settings) as client:

            async def one(source: Source) -> SubmitItem:
                created = await client.submit(source.read())
                if not wait:
                    return SubmitItem(source.name, created.id, created.status)
                try:
                    view = await client.wait(created.id, max(0.0, deadline - time.monotonic()))
                except (TaskFailed, WaitTimeout) as exc:
                    return SubmitItem(source.name, created.id, exc.task.status, ItemError.of(exc))
                return SubmitItem(source.name, view.id, view.status)

            return await run_each(
                sources,
                one,
                lambda source, error: SubmitItem(source.name, error=error),
                concurrency=concurrency,
                on_result=report,
            )

    try:
        items = _run(go())
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        _print_json(items)
    _exit_for([item.error for item in items])


class _Bar:
    """A progress bar on stderr, for batches on a terminal only (pipes get plain lines)."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import Progress

        self._progress = Progress(transient=True, console=Console(stderr=True))
        self._task = self._progress.add_task("submitting", total=total)
        self._progress.start()

    def advance(self) -> None:
        self._progress.advance(self._task)

    def close(self) -> None:
        self._progress.stop()


def _progress(total: int, quiet: bool) -> _Bar | None:
    if total < 2 or quiet or not sys.stderr.isatty():
        return None
    return _Bar(total)


def _status_line(item: StatusItem) -> str:
    text = f"{item.id}  {item.status}  attempts={item.attempts}  updated={item.updated_at}"
    failed = item.error is not None and item.error.code == "task_failed"
    return text + (f"  error={item.error.message}" if failed and item.error else "")


@app.command(epilog=EXIT_CODES)
def status(
    task_ids: Annotated[list[str], typer.Argument(help="Task ids.", metavar="ID...")],
    watch: Annotated[bool, typer.Option(help="Follow until every task is DONE or FAILED.")] = False,
    as_json: JsonOption = False,
    url: UrlOption = None,
) -> None:
    """Show tasks' status, one line per task (an unknown id is reported and the others shown).

    Examples: resizer status ID;  resizer status ID1 ID2 --watch --json
    """
    settings = _client_settings(url)

    async def go() -> list[StatusItem]:
        async with _client(settings) as client:

            async def one(task_id: str) -> StatusItem:
                item = StatusItem.of(await client.status(task_id))
                if watch and not as_json:
                    typer.echo(_status_line(item))
                while watch and item.status is not None and not item.status.finished:
                    latest = StatusItem.of(await client.status(task_id, wait=30))
                    if latest.status is not item.status and not as_json:
                        typer.echo(_status_line(latest))
                    item = latest
                return item

            def failed(task_id: str, error: ItemError) -> StatusItem:
                _report_error(task_id, error)
                return StatusItem(task_id, error=error)

            # Watching holds one long-poll per task: all of them run at once.
            return await run_each(task_ids, one, failed, concurrency=max(8, len(task_ids)))

    items = _run(go())
    if as_json:
        _print_json(items)
    elif not watch:
        for item in items:
            if item.status is not None:
                typer.echo(_status_line(item))
    _exit_for([item.error for item in items])


class FetchSize(enum.StrEnum):
    S64 = "64"
    S32 = "32"
    ORIGINAL = "original"
    ALL = "all"

    def sizes(self) -> list[ImageSize]:
        if self is FetchSize.ALL:
            return [ImageSize.S64, ImageSize.S32, ImageSize.ORIGINAL]
        return [ImageSize(self.value)]


@app.command(epilog=EXIT_CODES)
def fetch(
    task_ids: Annotated[list[str], typer.Argument(help="Task ids.", metavar="ID...")],
    size: Annotated[FetchSize, typer.Option(help="Which image.")] = FetchSize.S64,
    output: Annotated[
        str,
        typer.Option(
            "-o",
            "--output",
            help="A directory, a file (one image only), or - for stdout. "
            "Files in a directory are named ID_SIZE.EXT, EXT one of jpg, png, webp, gif, tiff, "
            "bmp, avif.",
        ),
    ] = ".",
    force: Annotated[bool, typer.Option(help="Replace existing files (atomically).")] = False,
    wait: Annotated[bool, typer.Option(help="Wait until each task is DONE first.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: give up after SECONDS.")] = 300,
    as_json: JsonOption = False,
    url: UrlOption = None,
) -> None:
    """Write tasks' images to files; never overwrites without --force, never follows a symlink.

    Examples: resizer fetch ID --size 64 -o thumb.jpg;  resizer fetch ID1 ID2 --size all -o out/;
    resizer fetch ID --wait -o - > thumb.jpg
    """
    settings = _client_settings(url)
    wanted = [(task_id, s) for task_id in task_ids for s in size.sizes()]
    to_stdout = output == "-"
    if to_stdout and (len(wanted) > 1 or as_json):
        typer.echo(
            "resizer: -o - writes one image to stdout; ask for one id and one size, without --json",
            err=True,
        )
        raise typer.Exit(ExitCode.USAGE)
    target = Path(output)
    into_dir = not to_stdout and (len(wanted) > 1 or target.is_dir() or output.endswith("/"))
    if not to_stdout:
        try:
            (target if into_dir else target.parent).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            typer.echo(f"resizer: cannot create {target}: {exc.strerror}", err=True)
            raise typer.Exit(ExitCode.FAILED) from None
    deadline = time.monotonic() + timeout

    async def go() -> list[FetchItem]:
        async with _client(settings) as client:
            waits: dict[str, asyncio.Task[TaskView]] = {}

            async def one(item: tuple[str, ImageSize]) -> FetchItem:
                task_id, image_size = item
                if wait:
                    if task_id not in waits:  # one long-poll per task, whatever the sizes
                        remaining = max(0.0, deadline - time.monotonic())
                        waits[task_id] = asyncio.create_task(client.wait(task_id, remaining))
                    await waits[task_id]
                image = await client.fetch(task_id, image_size)
                if to_stdout:
                    sys.stdout.buffer.write(image.data)
                    sys.stdout.buffer.flush()
                    return FetchItem(task_id, image_size.value, "-", image.format)
                path = target
                if into_dir:
                    path = target / file_name(task_id, image_size.value, image.extension)
                await asyncio.to_thread(write_file, path, image.data, force=force)
                return FetchItem(task_id, image_size.value, str(path), image.format)

            def failed(item: tuple[str, ImageSize], error: ItemError) -> FetchItem:
                _report_error(item[0], error)
                return FetchItem(item[0], item[1].value, error=error)

            return await run_each(wanted, one, failed)

    items = _run(go())
    if as_json:
        _print_json(items)
    elif not to_stdout:
        for item in items:
            if item.path is not None:
                typer.echo(item.path)
    _exit_for([item.error for item in items])


@app.command(epilog=EXIT_CODES)
def delete(
    task_ids: Annotated[list[str], typer.Argument(help="Task ids.", metavar="ID...")],
    as_json: JsonOption = False,
    url: UrlOption = None,
) -> None:
    """Delete tasks and their images (images shared with another task stay for it).

    Example: resizer delete ID1 ID2
    """
    settings = _client_settings(url)

    async def go() -> list[DeleteItem]:
        async with _client(settings) as client:

            async def one(task_id: str) -> DeleteItem:
                if await client.delete(task_id):
                    return DeleteItem(task_id, deleted=True)
                error = ItemError("not_found", f"no task {task_id!r} (unknown, or it expired)")
                _report_error(task_id, error)
                return DeleteItem(task_id, error=error)

            def failed(task_id: str, error: ItemError) -> DeleteItem:
                _report_error(task_id, error)
                return DeleteItem(task_id, error=error)

            return await run_each(task_ids, one, failed)

    items = _run(go())
    if as_json:
        _print_json(items)
    else:
        for item in items:
            if item.deleted:
                typer.echo(f"{item.id}  deleted")
    _exit_for([item.error for item in items])


def main() -> None:
    """The typer app; ``resizer.__main__`` runs a service role's plain command line before it."""
    app()
