"""resizer: square images in, 64x64 and 32x32 out, through a Redis queue that never loses a task.

``resizer.Client`` and ``resizer.AsyncClient`` are the Python clients of its API (see
``resizer.client``); they are imported on first use, so ``import resizer`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Written here, not read from the installed metadata: that imports ``importlib.metadata`` and
# scans sys.path, ~10 ms of a health probe's or an app's start (2-3 ms where redis-py has imported
# it already). tests/unit/test_version.py keeps it equal to pyproject.toml's.
__version__ = "0.1.0"

if TYPE_CHECKING:
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
    if name in __all__:
        from resizer import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
