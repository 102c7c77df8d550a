"""The error hierarchy. Each error knows its HTTP status and its machine-readable code.

The API maps these to responses in one place (``api.error_middleware``); the CLI prints their
message on one line. Nothing else needs to know about HTTP.
"""

from __future__ import annotations


class ResizerError(Exception):
    """Base of every error this service raises on purpose."""

    status: int = 500
    code: str = "internal"
    closes_connection: bool = False
    """The answer is the last thing sent on its connection (the client misbehaved)."""
    exit_code: int = 1
    """The ``resizer`` command's exit code when this error ends it."""
    retry_after: int | None = None
    """Seconds after which the same request may succeed (the ``Retry-After`` header)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ResizerError):
    """The request itself is malformed: not JSON, wrong shape, a bad parameter."""

    status = 400
    code = "bad_request"


class FragmentedBody(BadRequest):
    """A body sent in pieces so small that taking them costs more than their bytes (a chunked
    body of 1-byte chunks); its connection is closed."""

    closes_connection = True


class RequestTimeout(ResizerError):
    """The request body stalled for longer than ``RESIZER_BODY_TIMEOUT``."""

    status = 408
    code = "request_timeout"
    closes_connection = True


class PayloadTooLarge(ResizerError):
    status = 413
    code = "payload_too_large"


class UnsupportedEncoding(ResizerError):
    """The body came compressed (``Content-Encoding``): it is taken only as sent."""

    status = 415
    code = "unsupported_encoding"


class InvalidImage(ResizerError):
    """The payload is well-formed but is not an image we accept (not base64, not square...)."""

    status = 422
    code = "invalid_image"


class Unauthorized(ResizerError):
    """``RESIZER_API_TOKEN`` is set and the request did not carry it."""

    status = 401
    code = "unauthorized"


class TaskNotFound(ResizerError):
    status = 404
    code = "not_found"


class ImageGone(ResizerError):
    """The task exists but this image's retention ran out."""

    status = 410
    code = "gone"


class TaskNotReady(ResizerError):
    """A resized image was asked for before the task is DONE."""

    status = 409
    code = "not_ready"


class ServiceUnavailable(ResizerError):
    """A dependency (Redis) cannot be reached; retrying later may work."""

    status = 503
    code = "unavailable"
    retry_after = 5


class Overloaded(ServiceUnavailable):
    """The web process holds as many upload bytes as it may (``RESIZER_UPLOAD_BUDGET``)."""

    code = "overloaded"
    retry_after = 1


class ImageDecodeError(ResizerError):
    """The worker could not decode an image that passed the header check: a permanent failure."""

    status = 422
    code = "undecodable_image"


class StorageFull(ResizerError):
    """Redis reached its ``maxmemory`` (with ``noeviction``): nothing was written; retry later."""

    status = 507
    code = "storage_full"
    # Room comes back as tasks expire or are deleted: not within seconds.
    retry_after = 60


class EvictingRedis(ResizerError):
    """Redis may evict keys under memory pressure: queued tasks would silently vanish."""

    code = "evicting_redis"
    exit_code = 2


class ApiError(ResizerError):
    """The server answered with an error (the client side of the JSON error shape)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ServerUnreachable(ResizerError):
    """The client could not connect to the server at all."""

    code = "unreachable"


class BadResponse(ResizerError):
    """The server's answer does not fit the request (another task, an unknown format, a redirect,
    a body of the wrong shape): the client acts on none of it."""

    code = "bad_response"
