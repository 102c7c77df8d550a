"""Settings: every variable parsed and validated in one place, errors as one line, no secret shown;
the README's table the same as the settings; logs as configured."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
from structlog.testing import capture_logs

from resizer import logs
from resizer.config import (
    Address,
    ClientSettings,
    ConfigError,
    LogFormat,
    LogLevel,
    MiB,
    Settings,
    flag_name,
    mask_url,
    specs,
)
from resizer.embedded import free_port
from resizer.processes import resizer_command

ROOT = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    settings = Settings()
    assert settings.redis_url == "redis://localhost:6379/0"
    assert (settings.lease_seconds, settings.max_attempts) == (30, 3)
    assert (settings.ttl_seconds, settings.failed_ttl_seconds) == (86400, 3600)
    assert (settings.max_body_bytes, settings.max_pixels) == (32 * MiB, 50_000_000)
    assert settings.partitions == 1
    assert settings.api_token is None
    assert settings.max_decode_bytes == 512 * MiB
    assert settings.original_ttl_seconds == settings.ttl_seconds
    assert settings.min_replicas == 0
    assert settings.body_timeout_seconds == 30
    assert (settings.body_min_rate, settings.idle_timeout_seconds) == (1024, 75)
    assert settings.upload_budget_bytes == 128 * MiB
    assert settings.metrics_addr is None
    assert (settings.log_level, settings.log_format) == (LogLevel.INFO, LogFormat.AUTO)
    assert settings.heartbeat_seconds == 10
    assert settings.recover_every_seconds == 15
    client = ClientSettings()
    assert (client.url, client.api_token, client.timeout_seconds) == (
        "http://127.0.0.1:8080",
        None,
        60,
    )


@pytest.mark.parametrize(
    ("variable", "text", "field", "expected"),
    [
        ("REDIS_URL", "rediss://user:pw@cache.example:6380/2", "redis_url", None),
        ("REDIS_URL", "unix:///run/redis.sock?db=1", "redis_url", None),
        ("REDIS_URL", "redis+cluster://a:7000,b:7001", "redis_url", None),
        ("REDIS_URL", "redis+sentinel://s1:26379,s2:26379/mymaster/0", "redis_url", None),
        ("RESIZER_LEASE_SECONDS", "7", "lease_seconds", 7),
        ("RESIZER_MAX_ATTEMPTS", " 5 ", "max_attempts", 5),
        ("RESIZER_TTL_SECONDS", "60", "ttl_seconds", 60),
        ("RESIZER_MAX_BODY_BYTES", "1000", "max_body_bytes", 1000),
        ("RESIZER_MAX_PIXELS", "4096", "max_pixels", 4096),
        ("RESIZER_FAILED_TTL_SECONDS", "10", "failed_ttl_seconds", 10),
        ("RESIZER_PARTITIONS", "256", "partitions", 256),
        ("RESIZER_API_TOKEN", "s3cret-token", "api_token", "s3cret-token"),
        ("RESIZER_MAX_DECODE_BYTES", "1048576", "max_decode_bytes", MiB),
        ("RESIZER_ORIGINAL_TTL_SECONDS", "120", "original_ttl_seconds", 120),
        ("RESIZER_MIN_REPLICAS", "0", "min_replicas", 0),
        ("RESIZER_BODY_TIMEOUT", "2.5", "body_timeout_seconds", 2.5),
        ("RESIZER_BODY_MIN_RATE", "0", "body_min_rate", 0),
        ("RESIZER_IDLE_TIMEOUT", "15", "idle_timeout_seconds", 15),
        ("RESIZER_UPLOAD_BUDGET", "1048576", "upload_budget_bytes", MiB),
        ("RESIZER_METRICS_ADDR", "0.0.0.0:9100", "metrics_addr", Address("0.0.0.0", 9100)),
        ("RESIZER_METRICS_ADDR", "[::1]:9100", "metrics_addr", Address("::1", 9100)),
        ("RESIZER_LOG_LEVEL", "debug", "log_level", LogLevel.DEBUG),
        ("RESIZER_LOG_FORMAT", "JSON", "log_format", LogFormat.JSON),
    ],
)
def test_each_variable_is_read(variable: str, text: str, field: str, expected: object) -> None:
    settings = Settings.from_env({variable: text})
    assert getattr(settings, field) == (text if expected is None else expected)


@pytest.mark.parametrize(
    ("variable", "text", "allowed"),
    [
        ("RESIZER_LOG_LEVEL", "verbose", "one of DEBUG, INFO, WARNING, ERROR"),
        ("RESIZER_LOG_FORMAT", "xml", "one of auto, json, console"),
        ("REDIS_URL", "foo", "a Redis URL"),
        ("REDIS_URL", "http://localhost:6379", "a Redis URL"),
        ("REDIS_URL", "redis://localhost:port/0", "a Redis URL"),
        ("REDIS_URL", "redis://localhost:6379/zero", "a Redis URL"),
        ("REDIS_URL", "redis://", "a Redis URL"),
        ("REDIS_URL", "unix://", "a Redis URL"),
        ("RESIZER_LEASE_SECONDS", "0", "a positive integer"),
        ("RESIZER_LEASE_SECONDS", "ten", "a positive integer"),
        ("RESIZER_MAX_ATTEMPTS", "1.5", "a positive integer"),
        ("RESIZER_PARTITIONS", "257", "an integer from 1 to 256"),
        ("RESIZER_MIN_REPLICAS", "-1", "an integer >= 0"),
        ("RESIZER_BODY_TIMEOUT", "0", "a positive number of seconds"),
        ("RESIZER_BODY_TIMEOUT", "inf", "a positive number of seconds"),
        ("RESIZER_METRICS_ADDR", "9100", "host:port"),
        ("RESIZER_METRICS_ADDR", "host:99999", "host:port"),
    ],
)
def test_a_bad_value_is_one_line_naming_variable_value_and_what_is_allowed(
    variable: str, text: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: text})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{variable}={text!r} is not allowed: expected ")
    assert allowed in message


def test_secrets_never_appear_in_errors_or_repr() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"RESIZER_API_TOKEN": "tok en-secret"})
    assert "secret" not in str(caught.value)
    assert "RESIZER_API_TOKEN" in str(caught.value)

    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REDIS_URL": "redis://admin:hunter2@host:port/0"})
    assert "hunter2" not in str(caught.value)
    assert "redis://admin:***@host:port/0" in str(caught.value)

    settings = Settings.from_env(
        {"REDIS_URL": "redis://admin:hunter2@host:6379/0", "RESIZER_API_TOKEN": "tok-secret"}
    )
    assert settings.api_token == "tok-secret"
    assert "hunter2" not in repr(settings)
    assert "tok-secret" not in repr(settings)
    assert "redis://admin:***@host:6379/0" in repr(settings)
    client = ClientSettings.from_env({"RESIZER_API_TOKEN": "tok-secret"})
    assert "tok-secret" not in repr(client)


def test_typed_values_are_held_to_the_same_rules() -> None:
    with pytest.raises(ConfigError, match="partitions"):
        Settings(partitions=0)
    with pytest.raises(ConfigError, match="redis_url"):
        Settings(redis_url="foo")
    with pytest.raises(ConfigError, match="log_level"):
        Settings(log_level="verbose")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="lease_seconds"):
        Settings(lease_seconds=True)


def test_flags_win_over_the_environment_and_their_errors_name_the_flag() -> None:
    env = {"RESIZER_LEASE_SECONDS": "7", "REDIS_URL": "redis://from-env/0"}
    settings = Settings.from_env(env, flags={"lease_seconds": "9", "redis_url": None})
    assert (settings.lease_seconds, settings.redis_url) == (9, "redis://from-env/0")
    with pytest.raises(ConfigError, match=r"^--lease-seconds='x' is not allowed"):
        Settings.from_env(env, flags={"lease_seconds": "x"})


def test_an_empty_variable_counts_as_unset() -> None:
    assert Settings.from_env({"RESIZER_LEASE_SECONDS": "", "RESIZER_API_TOKEN": ""}) == Settings()


def test_the_originals_retention_follows_the_tasks_unless_set() -> None:
    assert Settings.from_env({"RESIZER_TTL_SECONDS": "60"}).original_ttl_seconds == 60
    both = {"RESIZER_TTL_SECONDS": "60", "RESIZER_ORIGINAL_TTL_SECONDS": "30"}
    assert Settings.from_env(both).original_ttl_seconds == 30


def test_to_env_gives_a_child_process_the_same_settings() -> None:
    settings = Settings(
        redis_url="redis://:pw@elsewhere:6380/3",
        lease_seconds=5,
        max_attempts=7,
        ttl_seconds=100,
        max_body_bytes=1234,
        max_pixels=5678,
        failed_ttl_seconds=50,
        partitions=4,
        api_token="tok",
        max_decode_bytes=4321,
        original_ttl_seconds=70,
        min_replicas=2,
        body_timeout_seconds=1234567.125,
        body_min_rate=0,
        upload_budget_bytes=4096,
        idle_timeout_seconds=0.25,
        max_connections=64,
        metrics_addr=Address("::1", 9100),
        log_level=LogLevel.DEBUG,
        log_format=LogFormat.CONSOLE,
    )
    assert all(getattr(settings, f.name) != f.default for f in attrs.fields(Settings))
    env = settings.to_env()
    assert env["REDIS_URL"] == "redis://:pw@elsewhere:6380/3"  # the child needs the password
    assert Settings.from_env(env) == settings
    assert Settings.from_env(Settings().to_env()) == Settings()


def test_client_settings_read_no_server_variable() -> None:
    broken_server = {"REDIS_URL": "foo", "RESIZER_LOG_LEVEL": "verbose", "RESIZER_PARTITIONS": "0"}
    client = ClientSettings.from_env(
        {**broken_server, "RESIZER_URL": "https://resizer.example", "RESIZER_API_TOKEN": "t"}
    )
    assert (client.url, client.api_token) == ("https://resizer.example", "t")
    with pytest.raises(ConfigError, match="RESIZER_URL='ftp://x'"):
        ClientSettings.from_env({"RESIZER_URL": "ftp://x"})
    with pytest.raises(ConfigError, match="RESIZER_CLIENT_TIMEOUT"):
        ClientSettings.from_env({"RESIZER_CLIENT_TIMEOUT": "-1"})


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:p%40ss@host/1", "rediss://user:***@host/1"),
        ("redis://user:p@ss@host/1", "redis://user:***@host/1"),
        ("redis://user@host/1", "redis://user@host/1"),
        ("unix:///run/r.sock?password=pw&db=1", "unix:///run/r.sock?password=***&db=1"),
        ("redis+sentinel://:pw@s1:26379,s2:26379/m", "redis+sentinel://:***@s1:26379,s2:26379/m"),
        ("http://u:pw@[::1", "http://u:***@[::1"),  # not even parseable: masked all the same
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


# --- the README's table is the settings' ------------------------------------------------------


def _expected_table() -> list[str]:
    rows: dict[str, list[str]] = {}
    for cls, user in ((Settings, "server"), (ClientSettings, "clients")):
        for field, spec in specs(cls):
            if spec.env in rows:
                rows[spec.env][3] += f", {user}"
                continue
            flag = f"`{flag_name(field.name)}`" if spec.flag else "-"
            rows[spec.env] = [f"`{spec.env}`", flag, spec.default_text(field), user, spec.help]
    header = ["| variable | flag | default | read by | meaning |", "|---|---|---|---|---|"]
    return header + ["| " + " | ".join(cells) + " |" for cells in rows.values()]


def test_the_readme_lists_every_variable_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text().splitlines()
    start = readme.index("| variable | flag | default | read by | meaning |")
    end = next(i for i in range(start, len(readme)) if not readme[i].startswith("|"))
    expected = _expected_table()
    assert readme[start:end] == expected, "README table differs; it should be:\n" + "\n".join(
        expected
    )


# --- logs -------------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def _log_once(stream: io.StringIO, **kwargs: Any) -> str:
    logs.configure("INFO", stream=stream, **kwargs)
    structlog.get_logger("test").info("thing.happened", count=3)
    structlog.get_logger("test").debug("detail.logged")
    return stream.getvalue()


@pytest.mark.usefixtures("restore_structlog")
def test_logs_are_json_lines_when_not_on_a_terminal() -> None:
    (line,) = _log_once(io.StringIO()).splitlines()
    event = json.loads(line)
    assert (event["event"], event["count"], event["level"]) == ("thing.happened", 3, "info")


@pytest.mark.usefixtures("restore_structlog")
def test_logs_on_a_terminal_are_coloured_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    coloured = _log_once(_Terminal())
    assert "thing.happened" in coloured
    assert "\x1b[" in coloured
    monkeypatch.setenv("NO_COLOR", "1")
    plain = _log_once(_Terminal())
    assert "thing.happened" in plain
    assert "\x1b[" not in plain
    assert not plain.startswith("{")


@pytest.mark.usefixtures("restore_structlog")
def test_the_log_format_can_be_forced_either_way() -> None:
    console = _log_once(io.StringIO(), json=LogFormat.CONSOLE.json)
    assert "thing.happened" in console
    assert not console.startswith("{")
    assert "\x1b[" not in console  # no colours into a file or a pipe
    on_terminal = _log_once(_Terminal(), json=LogFormat.JSON.json)
    assert json.loads(on_terminal)["event"] == "thing.happened"


@pytest.mark.usefixtures("restore_structlog")
def test_a_librarys_standard_logging_comes_out_as_one_json_line() -> None:
    stream = io.StringIO()
    logs.configure("INFO", stream=stream)
    library = logging.getLogger("asyncio")
    error = OSError(24, "Too many open files")
    library.error("socket.accept() out of system resource", exc_info=(OSError, error, None))
    library.debug("below the level")
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert event["event"] == "socket.accept() out of system resource"
    assert (event["level"], event["logger"]) == ("error", "asyncio")
    assert "OSError: [Errno 24] Too many open files" in event["exception"]
    assert "timestamp" in event


@pytest.mark.usefixtures("restore_structlog")
def test_a_warning_comes_out_as_a_json_line() -> None:
    stream = io.StringIO()
    logs.configure("INFO", stream=stream)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("could be decompression bomb DOS attack", UserWarning, stacklevel=1)
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert (event["level"], event["logger"]) == ("warning", "py.warnings")
    assert "could be decompression bomb DOS attack" in event["event"]


@pytest.mark.usefixtures("restore_structlog")
def test_setting_logs_up_again_replaces_its_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    logs.configure("INFO", stream=first)
    logs.configure("WARNING", stream=second)
    logging.getLogger("aiohttp.server").warning("once")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["event"] == "once"


@pytest.mark.usefixtures("restore_structlog")
def test_a_line_the_log_stream_cannot_take_is_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    """The reader of the pipe is gone (EPIPE): whatever logs goes on; the web answered 500 to
    every request that logged, and its shutdown ended in a traceback."""
    read, write = os.pipe()
    os.close(read)
    stream = os.fdopen(write, "w")
    try:
        logs.configure("INFO", stream=stream)
        structlog.get_logger("test").info("thing.happened", count=3)
        logging.getLogger("aiohttp.server").warning("a library's line")
    finally:
        with contextlib.suppress(BrokenPipeError):
            stream.close()
    assert "Logging error" not in capsys.readouterr().err


# --- the command, as a user runs it -----------------------------------------------------------


def _resizer(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("RESIZER_") and k != "REDIS_URL"
    }
    return subprocess.run(
        resizer_command(*args),
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("command", "env", "expected"),
    [
        (["serve"], {"RESIZER_LOG_LEVEL": "verbose"}, "RESIZER_LOG_LEVEL='verbose'"),
        (["recover"], {"REDIS_URL": "foo"}, "REDIS_URL='foo'"),
        (["work"], {"RESIZER_PARTITIONS": "0"}, "RESIZER_PARTITIONS='0'"),
        (["--lease-seconds", "x", "up"], {}, "--lease-seconds='x'"),
        (["status", "abc"], {"RESIZER_URL": "localhost:8080"}, "RESIZER_URL='localhost:8080'"),
    ],
)
def test_a_bad_setting_is_one_line_on_stderr_and_exit_code_2(
    command: list[str], env: dict[str, str], expected: str
) -> None:
    result = _resizer(*command, **env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"resizer: {expected} is not allowed: expected ")
    assert result.stdout == ""


def test_client_commands_do_not_read_server_settings() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = _resizer(
        "status", "abc", "--url", nowhere, REDIS_URL="foo", RESIZER_LOG_LEVEL="verbose"
    )
    assert result.returncode == 3  # got as far as trying the server
    assert nowhere in result.stderr


def test_help_documents_the_exit_codes_and_each_settings_flag() -> None:
    result = _resizer("--help", COLUMNS="200")
    assert result.returncode == 0
    text = re.sub(r"\s+", " ", result.stdout)
    assert "3 the server could not be reached" in text
    for field, spec in specs(Settings):
        if spec.flag:
            assert flag_name(field.name) in text
            assert spec.env in text


async def test_probes_are_logged_at_debug_other_requests_at_info(
    aiohttp_client: Any, fake_store: Any, settings: Settings
) -> None:
    from resizer.api import make_app

    client = await aiohttp_client(make_app(settings, fake_store))
    with capture_logs() as events:
        for path in ("/health", "/ready", "/metrics", "/tasks/nope"):
            response = await client.get(path)
            await response.read()
    levels = {e["route"]: e["log_level"] for e in events if e["event"] == "request.handled"}
    assert levels == {
        "/health": "debug",
        "/ready": "debug",
        "/metrics": "debug",
        "/tasks/{task_id}": "info",
    }
