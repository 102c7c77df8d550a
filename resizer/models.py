"""Records that cross module boundaries, and the one cattrs converter that (un)structures them."""

from __future__ import annotations

import enum
import hashlib
from datetime import UTC, datetime

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

MAX_WAIT_SECONDS = 30.0
"""The longest single long-poll (``GET /tasks/{id}?wait=``) the server accepts."""

SIZES: tuple[int, ...] = (64, 32)
"""The sizes every task is resized to, largest first (smaller ones may derive from larger)."""


class TaskStatus(enum.StrEnum):
    WAITING = "WAITING"
    IN_PROGRESS = "IN_PROGRESS"
    DONE = "DONE"
    FAILED = "FAILED"

    @property
    def finished(self) -> bool:
        return self in (TaskStatus.DONE, TaskStatus.FAILED)


class ImageSize(enum.StrEnum):
    ORIGINAL = "original"
    S64 = "64"
    S32 = "32"

    @property
    def pixels(self) -> int | None:
        return None if self is ImageSize.ORIGINAL else int(self.value)


@attrs.frozen
class ImageInfo:
    """What the header of an image says, without decoding its pixels."""

    format: str  # lower-case Pillow format name: "jpeg", "png", "webp", ...
    width: int
    height: int


@attrs.frozen
class Thumbnail:
    size: int
    format: str
    data: bytes


@attrs.frozen
class Task:
    """A task as stored: its state and the metadata of its original image."""

    id: str
    status: TaskStatus
    created_at: datetime
    updated_at: datetime
    attempts: int
    original: ImageInfo
    digest: str
    error: str | None = None
    result_format: str | None = None
    leader: str | None = None
    """The task whose work this one joined (same bytes, in flight when it was created)."""

    @property
    def watch_id(self) -> str:
        """The id whose finish is announced for this task."""
        return self.leader or self.id


@attrs.frozen
class Upload:
    """A validated upload: the image bytes, their header, and their SHA-256 (for deduplication)."""

    info: ImageInfo
    data: bytes
    digest: str

    @classmethod
    def of(cls, info: ImageInfo, data: bytes) -> Upload:
        return cls(info=info, data=data, digest=hashlib.sha256(data).hexdigest())


@attrs.frozen
class Claim:
    """A worker's hold on a task. Only the holder of the current token may finish the task."""

    task_id: str
    token: str
    attempt: int
    digest: str
    original: bytes | None = attrs.field(default=None, repr=False)
    """The image to resize, read in the same step (None once its retention expired)."""


DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Upper bounds (seconds) of the processing-time histogram's buckets."""

CLAIM_WAIT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
"""Upper bounds (seconds) of the histogram of how long tasks wait for their first claim."""


@attrs.frozen
class QueueStats:
    """What the store counts for the metrics endpoint, shared by every process."""

    counters: dict[str, int]  # created, deduplicated, done, failed, retried, recovered, ...
    durations: dict[str, float]  # observations per bucket ("0.1", ..., "+Inf"), "count", "sum"
    waiting: int
    in_flight: int
    claim_waits: dict[str, float] = attrs.Factory(dict)  # per bucket (seconds), "count", "sum"
    oldest_waiting_seconds: float = 0.0
    # How long ago the first lease to expire did, 0 while none has: recovery acts on an expired
    # lease within one of its passes (half a lease), so more means it is not running, or a task
    # it cannot act on (``task.unrecoverable``).
    lease_overdue_seconds: float = 0.0


@attrs.frozen
class WorkerRecord:
    """Who a worker is and what it did, as its heartbeat keeps it in the store."""

    name: str
    host: str
    pid: int
    version: str
    started_at: datetime
    seen_at: datetime
    done: int = 0
    failed: int = 0


@attrs.frozen
class WorkerView:
    record: WorkerRecord
    task_id: str | None = None
    """The task it holds now (None: idle)."""

    @property
    def state(self) -> str:
        return "idle" if self.task_id is None else "busy"


@attrs.frozen
class InFlight:
    """A task a worker holds: who, since when, which attempt."""

    task_id: str
    worker: str
    attempt: int
    since: datetime


@attrs.frozen
class Failure:
    task_id: str
    at: datetime
    error: str


@attrs.frozen
class QueueInfo:
    """The operator's view of the queue (``resizer info``)."""

    at: datetime
    stats: QueueStats
    taken_unclaimed: int
    in_flight: list[InFlight]
    workers: list[WorkerView]
    failures: list[Failure]


@attrs.frozen
class RecoveryReport:
    requeued: list[str] = attrs.Factory(list)
    failed: list[str] = attrs.Factory(list)
    adopted: list[str] = attrs.Factory(list)
    # Expired leases Redis refused to act on (task id -> its error): a record it cannot read.
    unrecoverable: dict[str, str] = attrs.Factory(dict)


# --- API payloads ---------------------------------------------------------------------------


@attrs.frozen
class TaskCreated:
    id: str
    status: TaskStatus


@attrs.frozen
class TaskView:
    id: str
    status: TaskStatus
    created_at: datetime
    updated_at: datetime
    attempts: int
    error: str | None = None

    @classmethod
    def of(cls, task: Task) -> TaskView:
        return cls(
            id=task.id,
            status=task.status,
            created_at=task.created_at,
            updated_at=task.updated_at,
            attempts=task.attempts,
            error=task.error if task.status is TaskStatus.FAILED else None,
        )


@attrs.frozen
class ImageView:
    id: str
    size: ImageSize
    width: int
    height: int
    format: str
    data: str  # base64


@attrs.frozen
class ErrorDetail:
    code: str
    message: str


@attrs.frozen
class ErrorBody:
    error: ErrorDetail


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=False)
    conv.register_unstructure_hook(datetime, lambda d: d.isoformat().replace("+00:00", "Z"))

    def _parse_datetime(value: object, _: type) -> datetime:
        if not isinstance(value, str):
            raise TypeError(f"expected an ISO 8601 string, got {type(value).__name__}")
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    conv.register_structure_hook(datetime, _parse_datetime)

    def _strict_str(value: object, _: type) -> str:
        # cattrs would happily turn 5 into "5"; a JSON API must not.
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {type(value).__name__}")
        return value

    conv.register_structure_hook(str, _strict_str)
    for enum_type in (TaskStatus, ImageSize):  # str subclasses: keep them off the str hook
        conv.register_structure_hook(enum_type, lambda value, cls: cls(value))
    # `error` is present only when a task FAILED: drop it rather than send null.
    conv.register_unstructure_hook(
        TaskView,
        make_dict_unstructure_fn(TaskView, conv, error=override(omit_if_default=True)),
    )
    return conv


converter = _make_converter()
