"""The one back-off policy of every retry loop."""

from __future__ import annotations

from resizer.backoff import Backoff


def test_backoff_doubles_to_a_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(first=0.1, cap=0.5)
    for ceiling in [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]:
        # Equal jitter: at least half the exponential step, so a retry never comes at once.
        assert ceiling / 2 <= backoff.next() <= ceiling
    backoff.reset()
    assert 0.05 <= backoff.next() <= 0.1


def test_backoff_stays_at_its_cap_however_long_it_fails() -> None:
    backoff = Backoff(first=0.1, cap=5.0)
    delays = [backoff.next() for _ in range(10_000)]
    assert max(delays) <= 5.0
    assert min(delays[10:]) >= 2.5
