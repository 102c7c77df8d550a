"""Writing fetched images where the user asked and nowhere else.

A file name is made from what the user typed (a task id) and an extension from a fixed table,
never from the server's answer. Files are created exclusively without following a symlink at
their name; ``force`` replaces one atomically by renaming a finished temporary file over it.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from resizer.errors import ResizerError

_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
# Exclusive create: an existing file, or a symlink (dangling or not), at the name is an error.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class FileExists(ResizerError):
    code = "exists"


class NotWritten(ResizerError):
    code = "not_written"


def file_name(task_id: str, size: str, extension: str) -> str:
    """``<id>_<size>.<ext>``, for an id that is a plain name (no separator, no leading dot)."""
    if not _NAME.fullmatch(task_id):
        raise NotWritten(
            f"{task_id!r} cannot name a file: a task id of letters, digits, '.', '_' and '-' "
            "is expected"
        )
    return f"{task_id}_{size}.{extension}"


def write_file(path: Path, data: bytes, *, force: bool = False) -> None:
    """Write ``data`` as a new file at ``path``; with ``force``, replace what is there."""
    try:
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise NotWritten(f"cannot write {path}: {exc.strerror}") from None
    try:
        if force:
            _replace(directory, path, data)
        else:
            _create(directory, path.name, data, path)
    finally:
        os.close(directory)


def _create(directory: int, name: str, data: bytes, path: Path) -> None:
    try:
        fd = os.open(name, _CREATE, 0o666, dir_fd=directory)
    except FileExistsError:
        raise FileExists(f"{path} exists; pass --force to overwrite it") from None
    except OSError as exc:
        raise NotWritten(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except OSError as exc:
        os.unlink(name, dir_fd=directory)  # no half-written image left behind
        raise NotWritten(f"cannot write {path}: {exc.strerror}") from None


def _replace(directory: int, path: Path, data: bytes) -> None:
    temporary = f".{path.name}.{secrets.token_hex(6)}.tmp"
    _create(directory, temporary, data, path.parent / temporary)
    try:
        # rename(2) replaces the name itself: a symlink there is replaced, not followed.
        os.replace(temporary, path.name, src_dir_fd=directory, dst_dir_fd=directory)
    except OSError as exc:
        os.unlink(temporary, dir_fd=directory)
        raise NotWritten(f"cannot replace {path}: {exc.strerror}") from None
