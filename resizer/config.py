"""Settings, read once from the environment and flags, then passed around as one record."""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs

from resizer.budget import DEFAULT_MAX_DECODE_BYTES

MiB = 1024 * 1024


def _positive_int(name: str, value: str, minimum: int = 1) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {number}")
    return number


@attrs.frozen
class Settings:
    redis_url: str = "redis://localhost:6379/0"
    lease_seconds: int = 30
    max_attempts: int = 3
    ttl_seconds: int = 86400
    max_body_bytes: int = 32 * MiB
    max_pixels: int = 50_000_000
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES
    failed_ttl_seconds: int = 3600
    partitions: int = 1
    min_replicas: int = 0
    original_ttl_seconds: int = attrs.field(
        default=attrs.Factory(lambda self: self.ttl_seconds, takes_self=True)
    )
    api_token: str | None = attrs.field(default=None, repr=False)
    body_timeout_seconds: float = 30.0

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
        env = {name: str(getattr(self, field)) for field, name in _INT_ENV.items()}
        env["REDIS_URL"] = self.redis_url
        if self.api_token:
            env["RESIZER_API_TOKEN"] = self.api_token
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if "REDIS_URL" in env:
            values["redis_url"] = env["REDIS_URL"]
        if env.get("RESIZER_API_TOKEN"):
            values["api_token"] = env["RESIZER_API_TOKEN"]
        for field, name in _INT_ENV.items():
            if name in env:
                values[field] = _positive_int(name, env[name], 0 if field in _ZERO_OK else 1)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


_INT_ENV = {
    "lease_seconds": "RESIZER_LEASE_SECONDS",
    "max_attempts": "RESIZER_MAX_ATTEMPTS",
    "ttl_seconds": "RESIZER_TTL_SECONDS",
    "max_body_bytes": "RESIZER_MAX_BODY_BYTES",
    "max_pixels": "RESIZER_MAX_PIXELS",
    "max_decode_bytes": "RESIZER_MAX_DECODE_BYTES",
    "failed_ttl_seconds": "RESIZER_FAILED_TTL_SECONDS",
    "partitions": "RESIZER_PARTITIONS",
    "min_replicas": "RESIZER_MIN_REPLICAS",
    "original_ttl_seconds": "RESIZER_ORIGINAL_TTL_SECONDS",
}
_ZERO_OK = {"min_replicas"}
