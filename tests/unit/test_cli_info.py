"""``resizer info``'s text for a person, from a queue as the store reports it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from resizer.cli import _describe
from resizer.models import QueueInfo, QueueStats


def view(overdue: float) -> QueueInfo:
    stats = QueueStats(
        counters={}, durations={}, waiting=0, in_flight=1, lease_overdue_seconds=overdue
    )
    at = datetime(2026, 12, 2, tzinfo=UTC)
    return QueueInfo(at=at, stats=stats, taken_unclaimed=0, in_flight=[], workers=[], failures=[])


@pytest.mark.parametrize(
    ("overdue", "said"),
    [
        (0.0, "in flight  0"),
        (12.5, "in flight  0  (a lease expired 12.5 s ago: is recovery running?)"),
    ],
)
def test_a_lease_left_expired_is_pointed_out(overdue: float, said: str) -> None:
    lines = _describe(view(overdue)).splitlines()
    assert said in lines
