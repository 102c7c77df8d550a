"""The service roles' command lines that run without building typer's command, and those that
go to typer (which then parses, refuses or helps exactly as before)."""

from __future__ import annotations

import pytest

from resizer import roles


@pytest.mark.parametrize(
    "args",
    [
        ["serve"],
        ["serve", "--port", "9000", "--host", "127.0.0.1"],
        ["--redis-url", "redis://r:1/0", "--lease-seconds=10", "serve", "--port=1"],
        ["work"],
        ["work", "--processes", "2", "--check"],
        ["recover", "--every", "30"],
        ["recover", "--every=0.5", "--check"],
        ["healthcheck"],
        ["healthcheck", "--role", "auto"],
        ["healthcheck", "--url=http://127.0.0.1:1", "--role=web"],
        ["--log-level", "verbose", "serve"],  # the settings refuse it, in the same words
    ],
)
def test_plain_service_command_lines_run_without_typer(args: list[str]) -> None:
    assert roles.service_role(args) is not None


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--help"],
        ["--version"],
        ["serve", "--help"],
        ["serve", "extra"],
        ["serve", "--port"],
        ["serve", "--port", "80a"],
        ["serve", "--port", "-1"],
        ["serve", "--check"],
        ["work", "--processes", "0"],
        ["work", "--check=1"],
        ["recover", "--every", "0.05"],
        ["recover", "--every", "1e3"],
        ["healthcheck", "--role", "worker"],
        ["healthcheck", "--role", "AUTO"],
        ["healthcheck", "--check"],
        ["--bogus", "1", "serve"],
        ["--redis-url", "-x", "serve"],
        ["up"],
        ["status", "abc"],
    ],
)
def test_everything_else_goes_to_typer(args: list[str]) -> None:
    assert roles.service_role(args) is None


def test_a_plain_command_line_reaches_the_role_with_its_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[object] = []
    monkeypatch.setattr(roles, "serve", lambda *args: seen.extend(args))
    run = roles.service_role(["--redis-url=redis://r:1/0", "serve", "--port", "9000"])
    assert run is not None
    run()
    flags, host, port = seen
    assert isinstance(flags, dict)
    assert (flags["redis_url"], flags["lease_seconds"], host, port) == (
        "redis://r:1/0",
        None,
        "0.0.0.0",
        9000,
    )
