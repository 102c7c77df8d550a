"""resizer: square images in, 64x64 and 32x32 out, through a Redis queue that never loses a task.

``resizer.Client`` and ``resizer.AsyncClient`` are the Python clients of its API (see
``resizer.client``); they are imported on first use, so ``import resizer`` stays light. So is
``__version__``: reading the installed metadata imports ``importlib.metadata`` (~20 ms), which a
container health check has no use for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    __version__: str
    from resizer.client import (
        ApiError,
        AsyncClient,
        BadResponse,
        Client,
        FetchedImage,
        ImageSize,
        ResizerError,
        ServerUnreachable,
        TaskCreated,
        TaskFailed,
        TaskStatus,
        TaskView,
        WaitTimeout,
    )

__all__ = [
    "ApiError",
    "AsyncClient",
    "BadResponse",
    "Client",
    "FetchedImage",
    "ImageSize",
    "ResizerError",
    "ServerUnreachable",
    "TaskCreated",
    "TaskFailed",
    "TaskStatus",
    "TaskView",
    "WaitTimeout",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("resizer")
        except PackageNotFoundError:  # running from a source tree that was never installed
            found = "0.0.0"
        globals()["__version__"] = found
        return found
    if name in __all__:
        from resizer import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
