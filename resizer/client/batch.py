"""Many tasks at once, for the CLI's client commands: the sources to submit, one result record
per item, and running the items concurrently so that one item's error does not stop the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import attrs

from resizer.errors import ResizerError, ServerUnreachable
from resizer.models import TaskStatus, TaskView

A = TypeVar("A")
R = TypeVar("R")

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp", ".avif", ".mpo"}
)


@attrs.frozen
class Source:
    """One image to submit: a file, or the bytes read from stdin (named ``-``)."""

    name: str
    path: Path | None = None
    data: bytes | None = attrs.field(default=None, repr=False)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise Unreadable(f"cannot read {self.path}: {exc.strerror}") from None


class Unreadable(ResizerError):
    code = "unreadable"


def find_sources(paths: Sequence[str], stdin: Callable[[], bytes]) -> list[Source]:
    """Files as given; directories searched recursively for image files; ``-`` is stdin."""
    sources: list[Source] = []
    for raw in paths:
        if raw == "-":
            sources.append(Source(name="-", data=stdin()))
            continue
        path = Path(raw)
        if path.is_dir():
            sources.extend(
                Source(name=str(found), path=found)
                for found in sorted(path.rglob("*"))
                if found.is_file() and found.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            sources.append(Source(name=raw, path=path))
    return sources


# --- one record per item, as `--json` prints them -----------------------------------------------


@attrs.frozen
class ItemError:
    code: str
    message: str

    @classmethod
    def of(cls, exc: ResizerError) -> ItemError:
        return cls(exc.code, exc.message)


@attrs.frozen
class SubmitItem:
    source: str
    id: str | None = None
    status: TaskStatus | None = None
    error: ItemError | None = None


@attrs.frozen
class StatusItem:
    id: str
    status: TaskStatus | None = None
    attempts: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    error: ItemError | None = None
    """Why the request failed, or why the task FAILED (code ``task_failed``)."""

    @classmethod
    def of(cls, view: TaskView) -> StatusItem:
        failed = view.status is TaskStatus.FAILED
        return cls(
            id=view.id,
            status=view.status,
            attempts=view.attempts,
            created_at=view.created_at,
            updated_at=view.updated_at,
            error=ItemError("task_failed", view.error or "no reason given") if failed else None,
        )


@attrs.frozen
class FetchItem:
    id: str
    size: str
    path: str | None = None
    format: str | None = None
    error: ItemError | None = None


@attrs.frozen
class DeleteItem:
    id: str
    deleted: bool = False
    error: ItemError | None = None


async def run_each(
    items: Sequence[A],
    work: Callable[[A], Awaitable[R]],
    failed: Callable[[A, ItemError], R],
    *,
    concurrency: int = 8,
    on_result: Callable[[int, R], None] = lambda _i, _r: None,
) -> list[R]:
    """``work`` on every item, at most ``concurrency`` at once; results in the items' order.

    A ResizerError of one item becomes that item's result (through ``failed``) and the others go
    on. Only an unreachable server stops them all: every other item would fail the same way.
    ``on_result`` sees each result (with its index in ``items``) as soon as it is known.
    """
    limit = asyncio.Semaphore(concurrency)

    async def one(index: int, item: A) -> R:
        async with limit:
            try:
                result = await work(item)
            except ServerUnreachable:
                raise
            except ResizerError as exc:
                result = failed(item, ItemError.of(exc))
        on_result(index, result)
        return result

    return list(await asyncio.gather(*(one(i, item) for i, item in enumerate(items))))
