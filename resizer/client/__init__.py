"""The Python client of the resizer API: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

Both make the same requests and read the answers the same way (``_protocol``); they differ only
in how bytes move. Neither imports the server, Redis or the image stack; ``Client`` needs only
the standard library, so ``AsyncClient`` (aiohttp) is imported only when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resizer.client._protocol import EXTENSIONS, FetchedImage, TaskFailed, WaitTimeout
from resizer.errors import ApiError, BadResponse, ResizerError, ServerUnreachable
from resizer.models import ImageSize, TaskCreated, TaskStatus, TaskView

if TYPE_CHECKING:
    from resizer.client._async import AsyncClient
    from resizer.client._sync import Client

__all__ = [
    "EXTENSIONS",
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
]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from resizer.client._sync import Client

        return Client
    if name == "AsyncClient":
        from resizer.client._async import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
