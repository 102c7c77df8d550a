"""The Lua scripts, one file per state change under ``lua/``, loaded from the package.

A script names the shared functions it needs with ``--@include NAME`` lines (files under
``lua/includes/``); the loader puts each one in once, ahead of the script, in the order first
named. Includes hold functions only, so a script never relies on another file's locals.

One constant comes from the loader, ahead of everything: ``PUBLISH``, the command that
announces on a channel. On a Redis Cluster with sharded pub/sub (Redis >= 7) it is
``SPUBLISH``: the message goes to the shard that owns the channel's slot (the partition's),
where ``PUBLISH`` would send it over the cluster bus to every node.
"""

from __future__ import annotations

import functools
import re
from importlib.resources import files
from typing import Any, Final

import redis.exceptions
from redis._parsers import BaseParser

from resizer.store.connection import WrongType

_INCLUDE: Final = re.compile(r"^--@include\s+([a-z_]+)\s*$", re.MULTILINE)
_LUA = files("resizer.store") / "lua"


@functools.cache
def source(name: str, *, sharded: bool = False) -> str:
    """The whole text of script ``name``, its includes resolved; ``sharded``: announcing with
    ``SPUBLISH``."""
    seen: list[str] = []
    body = _resolve(_LUA.joinpath(f"{name}.lua").read_text(), seen)
    parts = [_INCLUDE.sub("", _LUA.joinpath("includes", f"{i}.lua").read_text()) for i in seen]
    publish = "local PUBLISH = '" + ("SPUBLISH" if sharded else "PUBLISH") + "'"
    return "\n".join([publish, *parts, body])


def _resolve(text: str, seen: list[str]) -> str:
    for include in _INCLUDE.findall(text):
        if include not in seen:
            _resolve(_LUA.joinpath("includes", f"{include}.lua").read_text(), seen)
            seen.append(include)
    return _INCLUDE.sub("", text)


# An error reply quoted inside a script error: "... @user_script: 9: -OOM command not allowed"
# where Redis refused a command, "@user_script:9: WRONGTYPE Operation" where a command failed.
_INNER_ERROR: Final = re.compile(r"@user_script: ?\d+: -?([A-Z]+) ")


# Redis's refusal of a script that reaches a key its node no longer holds.
_MOVING: Final = "attempted to access a non local key"


class Script:
    """A script registered on a client; a write it was refused (no memory, no writes for now)
    raises as a plain command's would (``OutOfMemoryError``, ``ReadOnlyError``,
    ``WritesRefused``...)."""

    def __init__(self, client: Any, name: str, *, sharded: bool = False) -> None:
        self.name = name
        self._client = client
        self._script = client.register_script(source(name, sharded=sharded))

    @property
    def sha(self) -> str:
        sha: str = self._script.sha
        return sha

    async def load(self) -> None:
        """Have Redis cache the script now rather than on its first call."""
        await self._client.script_load(self._script.script)

    async def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        try:
            return await self._script(keys=keys, args=args)
        except redis.exceptions.ResponseError as exc:
            if _MOVING in str(exc):
                # A cluster slot is moving between nodes (resharding), and a key the script
                # reaches through another (an original through its task's digest) is on the
                # other node already. Each script reaches such keys (checking their type) before
                # its first write, so nothing was written: retry once the slot has moved.
                raise redis.exceptions.TryAgainError(str(exc)) from exc
            # Redis 6.2 wraps a refusal inside a script in a script error: typed by its code,
            # through the table redis-py's parsers type a plain reply by (with what
            # store.connection adds to it).
            quoted = _INNER_ERROR.search(str(exc))
            inner = BaseParser.EXCEPTION_CLASSES.get(quoted.group(1)) if quoted else None
            if not isinstance(inner, type) or isinstance(exc, inner):
                raise
            if inner is WrongType:
                # A key read before the script's first write (prelude's wrong_type checks the
                # others): Redis does not say which.
                raise WrongType.among(str(exc), keys) from exc
            raise inner(str(exc)) from exc
