"""Settings: every ``RESIZER_*`` variable and ``REDIS_URL`` is named, parsed and validated here.

Each field of ``Settings`` (the server's) and ``ClientSettings`` (the client commands' and the
client library's) carries a ``Spec`` in its metadata: the variable, the help text and the kind
of value, which parses text, checks values and renders them back. The CLI derives its flags
from these specs, the README's table is tested against them, and ``to_env`` hands the settings
to child processes; nothing else names a variable.

A value that is not allowed raises ``ConfigError``, one line naming the variable (or flag), the
value and what is allowed; secrets are never part of it.
"""

from __future__ import annotations

import enum
import math
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import SplitResult, urlsplit

import attrs

from resizer.budget import DEFAULT_MAX_DECODE_BYTES

MiB = 1024 * 1024
DEFAULT_URL = "http://127.0.0.1:8080"
REDIS_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
)

S = TypeVar("S")


class ConfigError(ValueError):
    """A setting's value is not allowed."""

    def __init__(self, source: str, value: str, allowed: str) -> None:
        shown = value if len(value) <= 200 else value[:200] + "..."
        super().__init__(f"{source}={shown!r} is not allowed: expected {allowed}")
        self.source = source
        self.allowed = allowed


class LogLevel(enum.StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class LogFormat(enum.StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"

    @property
    def json(self) -> bool | None:
        """True for JSON lines, False for the console renderer, None to decide by the stream."""
        return {LogFormat.AUTO: None, LogFormat.JSON: True, LogFormat.CONSOLE: False}[self]


@attrs.frozen
class Address:
    """A ``host:port`` to listen on; an empty host means every interface."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# --- masking ----------------------------------------------------------------------------------

_SECRET_PARAM = re.compile(r"pass|token|secret|key", re.IGNORECASE)
_USERINFO_PASSWORD = re.compile(r"(//[^/?#@:]*):[^/?#]*@")


def mask_url(url: str) -> str:
    """``url`` fit to print: its password, and query values named like secrets, become ``***``.

    The user name stays: it is what one needs to debug an authentication failure. Only those
    parts change; the rest is the text as given.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # unparseable (a bad IPv6 literal...): mask by pattern instead
        return _USERINFO_PASSWORD.sub(r"\1:***@", url)
    masked = url
    userinfo, at, _hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.partition(":")[0]
        masked = masked.replace(f"//{userinfo}@", f"//{user}:***@", 1)
    if parts.query:
        query = "&".join(
            f"{name}=***" if sep and _SECRET_PARAM.search(name) else f"{name}{sep}{value}"
            for name, sep, value in (pair.partition("=") for pair in parts.query.split("&"))
        )
        masked = masked.replace(f"?{parts.query}", f"?{query}", 1)
    return masked


# --- kinds of values --------------------------------------------------------------------------


class Kind:
    """How one kind of setting is parsed from text, checked, and rendered back to text."""

    @property
    def allowed(self) -> str:
        """What is allowed, as error messages end: "expected <allowed>"."""
        return "a value"

    def parse(self, text: str) -> Any:
        """The value ``text`` stands for; ValueError when it is not allowed."""
        value = self._from_text(text.strip())
        self.check(value)
        return value

    def check(self, value: Any) -> None:
        """ValueError (TypeError for the wrong type) unless ``value`` is allowed."""

    @property
    def metavar(self) -> str:
        """How help texts name the value."""
        return "TEXT"

    def render(self, value: Any) -> str:
        return str(value)

    def document(self, value: Any) -> str:
        """The value as the README's table shows it."""
        return f"`{self.render(value)}`"

    def _from_text(self, text: str) -> Any:
        return text


@attrs.frozen
class Integer(Kind):
    low: int = 1
    high: int | None = None
    unit: str = ""

    @property
    def allowed(self) -> str:
        if self.high is not None:
            return f"an integer from {self.low} to {self.high}"
        return "a positive integer" if self.low == 1 else f"an integer >= {self.low}"

    @property
    def metavar(self) -> str:
        return "BYTES" if self.unit == "bytes" else "N"

    def _from_text(self, text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(self.allowed) from None

    def check(self, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(self.allowed)
        if value < self.low or (self.high is not None and value > self.high):
            raise ValueError(self.allowed)

    def document(self, value: Any) -> str:
        if self.unit == "bytes" and value % MiB == 0:
            return f"{value} ({value // MiB} MiB)"
        return str(value)


@attrs.frozen
class Seconds(Kind):
    @property
    def allowed(self) -> str:
        return "a positive number of seconds"

    @property
    def metavar(self) -> str:
        return "SECONDS"

    def _from_text(self, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(self.allowed) from None

    def check(self, value: Any) -> None:
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ValueError(self.allowed)

    def render(self, value: Any) -> str:
        # repr is exact (a child process must read back the same float); "30", not "30.0".
        text = repr(float(value))
        return text.removesuffix(".0")

    def document(self, value: Any) -> str:
        return self.render(value)


@attrs.frozen
class Choice(Kind):
    """One member of a string enum, case-insensitively."""

    choices: type[enum.StrEnum]

    @property
    def allowed(self) -> str:
        return "one of " + ", ".join(member.value for member in self.choices)

    @property
    def metavar(self) -> str:
        return "|".join(member.value for member in self.choices)

    def _from_text(self, text: str) -> enum.StrEnum:
        for member in self.choices:
            if member.value.casefold() == text.casefold():
                return member
        raise ValueError(self.allowed)

    def check(self, value: Any) -> None:
        if not isinstance(value, self.choices):
            raise TypeError(self.allowed)


@attrs.frozen
class Url(Kind):
    """A URL with one of ``schemes``; for Redis, a database number if any."""

    schemes: tuple[str, ...]
    description: str

    @property
    def allowed(self) -> str:
        return self.description

    @property
    def metavar(self) -> str:
        return "URL"

    def check(self, value: Any) -> None:
        if not isinstance(value, str):
            raise TypeError(self.allowed)
        try:
            parts = urlsplit(value)
            self._check_parts(parts)
        except ValueError:  # includes a port that is not a number
            raise ValueError(self.allowed) from None

    def _check_parts(self, parts: SplitResult) -> None:
        scheme = parts.scheme.lower()
        if scheme not in self.schemes:
            raise ValueError(scheme)
        if scheme == "unix":
            if not parts.path:
                raise ValueError("no socket path")
            return
        if not parts.netloc or not parts.netloc.rpartition("@")[2]:
            raise ValueError("no host")
        if scheme in ("redis+cluster", "redis+sentinel"):
            return  # several hosts, and a path naming a service: their own formats
        if not parts.hostname:
            raise ValueError("no host")
        _ = parts.port  # raises ValueError when it is not a number from 0 to 65535
        if scheme in ("redis", "rediss"):
            database = parts.path.lstrip("/")
            if database and not database.isdigit():
                raise ValueError("the database must be a number")

    def document(self, value: Any) -> str:
        return f"`{mask_url(value)}`"


@attrs.frozen
class HostPort(Kind):
    @property
    def allowed(self) -> str:
        return "host:port, e.g. 0.0.0.0:9100 or [::1]:9100"

    @property
    def metavar(self) -> str:
        return "HOST:PORT"

    def _from_text(self, text: str) -> Address:
        host, colon, port = text.rpartition(":")
        if not colon or not port.isdigit():
            raise ValueError(self.allowed)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return Address(host, int(port))

    def check(self, value: Any) -> None:
        if not isinstance(value, Address) or not 1 <= value.port <= 65535:
            raise ValueError(self.allowed)
        if any(c.isspace() or c in "[]/" for c in value.host):
            raise ValueError(self.allowed)


@attrs.frozen
class Token(Kind):
    """Visible ASCII without spaces: it travels in an ``Authorization`` header."""

    @property
    def allowed(self) -> str:
        return "visible ASCII characters without spaces"

    def check(self, value: Any) -> None:
        if not isinstance(value, str) or not re.fullmatch(r"[\x21-\x7e]+", value):
            raise ValueError(self.allowed)


# --- specs ------------------------------------------------------------------------------------

_SPEC = "resizer.setting"


@attrs.frozen
class Spec:
    """What a settings field is to its users: a variable, maybe a flag, a help text."""

    env: str
    help: str
    kind: Kind
    flag: bool = True
    secret: bool = False
    default_doc: str | None = None
    """The README's default when it is not the field's default value (a derived default)."""

    def default_text(self, field: attrs.Attribute[Any]) -> str:
        """The default as the README and help texts show it."""
        if self.default_doc is not None:
            return self.default_doc
        return self.kind.document(field.default)

    def shown(self, text: str) -> str:
        """A value as error messages may show it."""
        if self.secret:
            return "<hidden>"
        return mask_url(text) if isinstance(self.kind, Url) else text


def setting(
    default: Any,
    *,
    env: str,
    kind: Kind,
    help: str,
    flag: bool = True,
    secret: bool = False,
    default_doc: str | None = None,
) -> Any:
    """An attrs field with its ``Spec``; its validator holds typed values to the same rule."""
    spec = Spec(env, help, kind, flag=flag, secret=secret, default_doc=default_doc)

    def validate(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and default is None:
            return
        try:
            kind.check(value)
        except (ValueError, TypeError):
            raise ConfigError(
                attribute.name, "<hidden>" if secret else str(value), kind.allowed
            ) from None

    return attrs.field(
        default=default,
        validator=validate,
        repr=False if secret else (mask_url if isinstance(kind, Url) else True),
        metadata={_SPEC: spec},
    )


def specs(cls: type[Any]) -> Iterator[tuple[attrs.Attribute[Any], Spec]]:
    """The fields of a settings class with their specs, in declaration order."""
    for field in attrs.fields(cls):
        if _SPEC in field.metadata:
            yield field, field.metadata[_SPEC]


def spec_of(cls: type[Any], name: str) -> Spec:
    spec: Spec = attrs.fields_dict(cls)[name].metadata[_SPEC]
    return spec


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _load(
    cls: type[S],
    environ: Mapping[str, str] | None,
    flags: Mapping[str, str | None],
    overrides: Mapping[str, object],
) -> S:
    """Typed ``overrides`` first, then flags (raw text), then the environment, then defaults.

    An empty variable counts as unset, as ``VAR= command`` and compose's ``${VAR:-}`` mean.
    """
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for field, spec in specs(cls):
        if overrides.get(field.name) is not None:
            values[field.name] = overrides[field.name]
            continue
        source, text = flag_name(field.name), flags.get(field.name)
        if text is None:
            source, text = spec.env, env.get(spec.env) or None
        if text is None:
            continue
        try:
            values[field.name] = spec.kind.parse(text)
        except ValueError:
            raise ConfigError(source, spec.shown(text), spec.kind.allowed) from None
    return cls(**values)


def _to_env(settings: object) -> dict[str, str]:
    return {
        spec.env: spec.kind.render(getattr(settings, field.name))
        for field, spec in specs(type(settings))
        if getattr(settings, field.name) is not None
    }


def _api_token() -> Any:
    return setting(
        None,
        env="RESIZER_API_TOKEN",
        kind=Token(),
        help="bearer token: the server requires it on every route but the probes, clients send it",
        flag=False,  # a flag would show the token in `ps`
        secret=True,
        default_doc="none (no authentication)",
    )


# --- the settings -----------------------------------------------------------------------------


@attrs.frozen
class Settings:
    """What the server roles (serve, work, recover, up) run with."""

    redis_url: str = setting(
        "redis://localhost:6379/0",
        env="REDIS_URL",
        kind=Url(
            REDIS_SCHEMES,
            "a Redis URL: redis://[[user]:password@]host[:port][/db], rediss://..., "
            "unix:///path/to/socket, redis+cluster://... or redis+sentinel://...",
        ),
        help="the Redis (or Valkey >= 6.2) to use",
    )
    lease_seconds: int = setting(
        30,
        env="RESIZER_LEASE_SECONDS",
        kind=Integer(),
        help="how long a claim lives without a heartbeat; heartbeats come every third of it",
    )
    max_attempts: int = setting(
        3,
        env="RESIZER_MAX_ATTEMPTS",
        kind=Integer(),
        help="claims before a task that keeps crashing workers ends FAILED",
    )
    ttl_seconds: int = setting(
        86400,
        env="RESIZER_TTL_SECONDS",
        kind=Integer(),
        help="retention of a task and its thumbnails",
    )
    max_body_bytes: int = setting(
        32 * MiB,
        env="RESIZER_MAX_BODY_BYTES",
        kind=Integer(unit="bytes"),
        help="largest request body",
    )
    max_pixels: int = setting(
        50_000_000,
        env="RESIZER_MAX_PIXELS",
        kind=Integer(),
        help="largest image (width x height), checked from the header",
    )
    failed_ttl_seconds: int = setting(
        3600,
        env="RESIZER_FAILED_TTL_SECONDS",
        kind=Integer(),
        help="retention of a FAILED task's image (its record keeps RESIZER_TTL_SECONDS)",
    )
    partitions: int = setting(
        1,
        env="RESIZER_PARTITIONS",
        kind=Integer(1, 256),
        help="queue partitions the keyspace is split into",
    )
    api_token: str | None = _api_token()
    max_decode_bytes: int = setting(
        DEFAULT_MAX_DECODE_BYTES,
        env="RESIZER_MAX_DECODE_BYTES",
        kind=Integer(unit="bytes"),
        help="largest decoded image a worker holds in memory",
    )
    original_ttl_seconds: int = setting(
        attrs.Factory(lambda self: self.ttl_seconds, takes_self=True),
        env="RESIZER_ORIGINAL_TTL_SECONDS",
        kind=Integer(),
        help="retention of a submitted original",
        default_doc="`RESIZER_TTL_SECONDS`",
    )
    min_replicas: int = setting(
        0,
        env="RESIZER_MIN_REPLICAS",
        kind=Integer(0),
        help="replicas a write must reach before it counts (a POST's 201, a completion)",
    )
    body_timeout_seconds: float = setting(
        30.0,
        env="RESIZER_BODY_TIMEOUT",
        kind=Seconds(),
        help="longest a request or response body may stall before its connection is closed",
    )
    body_min_rate: int = setting(
        1024,
        env="RESIZER_BODY_MIN_RATE",
        kind=Integer(0),
        help="slowest a request body may arrive, in bytes a second, over each "
        "RESIZER_BODY_TIMEOUT of it (0: any progress will do)",
    )
    upload_budget_bytes: int = setting(
        128 * MiB,
        env="RESIZER_UPLOAD_BUDGET",
        kind=Integer(unit="bytes"),
        help="most upload bytes a web process holds at once; an upload that would take it past "
        "this is answered 503 (one upload alone always proceeds)",
    )
    idle_timeout_seconds: float = setting(
        75.0,
        env="RESIZER_IDLE_TIMEOUT",
        kind=Seconds(),
        help="longest a connection may go without a whole request's headers (idle, or sending "
        "them slowly) before it is closed",
    )
    max_connections: int = setting(
        8192,
        env="RESIZER_MAX_CONNECTIONS",
        kind=Integer(1),
        help="most connections a web process holds open; past it, new ones wait in the kernel's "
        "backlog until one closes (fewer if its limit on open files is lower)",
    )
    metrics_addr: Address | None = setting(
        None,
        env="RESIZER_METRICS_ADDR",
        kind=HostPort(),
        help="host:port of a separate metrics listener",
        default_doc="none (metrics on the API's port)",
    )
    log_level: LogLevel = setting(
        LogLevel.INFO,
        env="RESIZER_LOG_LEVEL",
        kind=Choice(LogLevel),
        help="DEBUG, INFO, WARNING or ERROR",
    )
    log_format: LogFormat = setting(
        LogFormat.AUTO,
        env="RESIZER_LOG_FORMAT",
        kind=Choice(LogFormat),
        help="auto (JSON lines when stdout is not a terminal, else console), json or console",
    )

    @property
    def heartbeat_seconds(self) -> float:
        # Three renewals per lease: one lost or late renewal never lets a live lease expire.
        return self.lease_seconds / 3

    @property
    def recover_every_seconds(self) -> float:
        # A crashed worker's task waits at most lease + this before it is re-queued.
        return max(1.0, self.lease_seconds / 2)

    def to_env(self) -> dict[str, str]:
        """The environment that makes a child process (``up``'s workers) see these settings."""
        return _to_env(self)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        flags: Mapping[str, str | None] | None = None,
        **overrides: object,
    ) -> Settings:
        """Settings from typed ``overrides``, raw ``flags`` (by field name), the environment."""
        return _load(cls, environ, flags or {}, overrides)


@attrs.frozen
class ClientSettings:
    """What client commands and ``resizer.Client`` read: never a server setting."""

    url: str = setting(
        DEFAULT_URL,
        env="RESIZER_URL",
        kind=Url(("http", "https"), "an http:// or https:// URL such as http://127.0.0.1:8080"),
        help="where clients find the server",
    )
    api_token: str | None = _api_token()
    timeout_seconds: float = setting(
        60.0,
        env="RESIZER_CLIENT_TIMEOUT",
        kind=Seconds(),
        help="longest a client waits for one answer, on top of any long-poll",
        flag=False,
    )

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        flags: Mapping[str, str | None] | None = None,
        **overrides: object,
    ) -> ClientSettings:
        return _load(cls, environ, flags or {}, overrides)


def is_given(cls: type[Any], name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment sets this field (rather than leaving it to its default)."""
    env = os.environ if environ is None else environ
    return bool(env.get(spec_of(cls, name).env))
