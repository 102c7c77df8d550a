"""The service roles (serve, work, recover) and the health check as the ``resizer`` command runs
them, without typer.

Every replica of a service starts through here, and so does every container health check
(``resizer work --check``, ``resizer healthcheck``): building typer's command (a pydantic
adapter per parameter, rich for its help) would cost each of them more than the role's own
imports. A plain command line (setting flags with their values, the role, its options) runs
from ``service_role``; anything else (help, completion, ``up``, the client commands, a value
typer would refuse or read differently) goes to typer (``resizer.cli``), which calls the same
runners, so every message and exit code stays the same either way.
"""

from __future__ import annotations

import enum
import os
import re
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from resizer.config import ClientSettings, ConfigError, Settings, flag_name, specs
from resizer.errors import ResizerError

T = TypeVar("T")
SERVE_HOST = "0.0.0.0"  # noqa: S104  (a container's API listens on every interface)
SERVE_PORT = 8080


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1
    """A task FAILED, or an item was rejected, unknown or not written."""
    USAGE = 2
    """Bad arguments or configuration."""
    UNREACHABLE = 3
    """The server could not be reached."""


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr, then exit with ``code``."""
    sys.stderr.write(f"resizer: {message}\n")
    raise SystemExit(code)


def configured(load: Callable[[], T]) -> T:
    """Settings, or the one line that says which value is wrong (exit code 2)."""
    try:
        return load()
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)


def settings_from(flags: dict[str, str | None], *, log: bool = True) -> Settings:
    """The service settings from the flags as typed and the environment; logging set up unless
    ``log`` is false (a health check logs nothing, so it need not import structlog)."""
    settings = configured(lambda: Settings.from_env(flags=flags))
    if log:
        from resizer import logs

        logs.configure(settings.log_level, json=settings.log_format.json)
    return settings


def run_service(run: Callable[[], None]) -> NoReturn:
    """Run a service; a refusal to run (ResizerError) is one line on stderr and its exit code.

    Once it is done, the process ends at once: no stray thread (a name being resolved) holds it.
    """
    from resizer import memory, shutdown

    memory.imports_done()
    memory.release_freed_memory()  # what importing the role left behind
    try:
        run()
    except ResizerError as exc:
        sys.stderr.write(f"resizer: {exc.message}\n")
        shutdown.exit_now(exc.exit_code)
    shutdown.exit_now(0)


def check(role: str, within: float) -> NoReturn:
    """Exit 0 if a ``role`` loop on this host turned within ``within`` seconds, else 1."""
    from resizer import liveness

    if liveness.is_alive(role, within):
        raise SystemExit(0)
    fail(f"unhealthy: no {role} loop turned in the last {within:g} s on this host", 1)


def serve(flags: dict[str, str | None], host: str, port: int) -> NoReturn:
    settings = settings_from(flags)
    from resizer.api import serve as run_server

    run_service(lambda: run_server(settings, host, port))


def work(flags: dict[str, str | None], processes: int, check_only: bool) -> NoReturn:
    settings = settings_from(flags, log=not check_only)
    if check_only:
        # A worker shows it is alive every heartbeat, busy or idle, Redis up or not.
        check("work", 3 * settings.heartbeat_seconds)
    if processes == 1:
        import asyncio

        from resizer.worker import serve_worker

        run_service(lambda: asyncio.run(serve_worker(settings)))
    from resizer import memory
    from resizer.processes import Child, Supervisor, resizer_command

    memory.imports_done()
    children = [
        Child(f"worker-{i}", resizer_command("work"), stop_grace=settings.lease_seconds + 5)
        for i in range(processes)
    ]
    raise SystemExit(Supervisor(children, settings.to_env()).run())


def recover(flags: dict[str, str | None], every: float | None, check_only: bool) -> NoReturn:
    settings = settings_from(flags, log=not check_only)
    from resizer import liveness

    if check_only:
        check("recover", 3 * liveness.RECOVER_EVERY_SECONDS)
    import asyncio

    from resizer.recovery import run_recovery

    run_service(lambda: asyncio.run(run_recovery(settings, every)))


class HealthRole(enum.StrEnum):
    WEB = "web"
    AUTO = "auto"


def healthcheck(url: str | None, role: HealthRole) -> NoReturn:
    """Exit 0 when healthy, else 1 (Docker's HEALTHCHECK convention)."""
    from resizer import liveness

    try:
        if role is HealthRole.AUTO:
            lease = (
                Settings.from_env().lease_seconds if "RESIZER_LEASE_SECONDS" in os.environ else 30
            )
            for each, within in (("work", lease), ("recover", 3 * liveness.RECOVER_EVERY_SECONDS)):
                if liveness.is_alive(each, within):
                    raise SystemExit(0)
        settings = ClientSettings.from_env(flags={"url": url})
        from resizer.client import Client

        with Client(settings.url, token=settings.api_token, timeout=3) as client:
            healthy = client.health()
    except (ConfigError, ResizerError) as exc:
        fail(f"unhealthy: {exc}", 1)
    raise SystemExit(0 if healthy else 1)


# --- the plain command lines ----------------------------------------------------------------------

_ROLE_OPTIONS: dict[str, dict[str, str]] = {
    "serve": {"--host": "text", "--port": "int"},
    "work": {"--processes": "count", "--check": "flag"},
    "recover": {"--every": "seconds", "--check": "flag"},
    "healthcheck": {"--url": "text", "--role": "health role"},
}
_SECONDS = re.compile(r"\d+(\.\d+)?")


def _plain_options(
    args: list[str], known: dict[str, str]
) -> tuple[dict[str, str | None], list[str]] | None:
    """Leading ``--name value`` / ``--name=value`` / ``--flag`` options of ``known`` kinds, and
    the arguments after them; None for any other shape of option."""
    found: dict[str, str | None] = {}
    while args and args[0].startswith("-"):
        name, eq, value = args[0].partition("=")
        kind = known.get(name)
        if kind is None or (kind == "flag" and eq):
            return None
        if kind == "flag":
            found[name], args = None, args[1:]
            continue
        if not eq:
            if len(args) < 2 or args[1].startswith("-"):
                return None
            value, args = args[1], args[1:]
        found[name], args = value, args[1:]
    return found, args


def _plain_value(kind: str, value: str) -> object:
    """``value`` read as typer reads an option of ``kind``; None when in any doubt."""
    if kind == "text":
        return value
    if kind in ("int", "count") and value.isascii() and value.isdigit():
        number = int(value)
        return number if kind == "int" or number >= 1 else None
    if kind == "seconds" and _SECONDS.fullmatch(value) and float(value) >= 0.1:
        return float(value)
    if kind == "health role" and value in tuple(HealthRole):
        return HealthRole(value)
    return None


def service_role(args: list[str]) -> Callable[[], None] | None:
    """The run of a service role from its plain command line, or None (typer's to parse)."""
    flags: dict[str, str | None] = {f.name: None for f, spec in specs(Settings) if spec.flag}
    by_flag = {flag_name(name): "text" for name in flags}
    parsed = _plain_options(args, by_flag)
    if parsed is None or not parsed[1] or parsed[1][0] not in _ROLE_OPTIONS:
        return None
    given, (role, *rest) = parsed
    for flag, value in given.items():
        flags[flag.removeprefix("--").replace("-", "_")] = value
    options = _plain_options(rest, _ROLE_OPTIONS[role])
    if options is None or options[1]:
        return None
    values: dict[str, object] = {}
    for name, value in options[0].items():
        kind = _ROLE_OPTIONS[role][name]
        read = True if kind == "flag" else None if value is None else _plain_value(kind, value)
        if read is None:
            return None
        values[name.removeprefix("--")] = read
    if role == "serve":
        host = str(values.get("host", SERVE_HOST))
        port = int(str(values.get("port", SERVE_PORT)))
        return lambda: serve(flags, host, port)
    if role == "healthcheck":
        url = values.get("url")
        health = HealthRole(str(values.get("role", HealthRole.WEB)))
        return lambda: healthcheck(None if url is None else str(url), health)
    check_only = bool(values.get("check", False))
    if role == "work":
        processes = int(str(values.get("processes", 1)))
        return lambda: work(flags, processes, check_only)
    every = values.get("every")
    seconds = None if every is None else float(str(every))
    return lambda: recover(flags, seconds, check_only)
