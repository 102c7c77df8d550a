"""The one back-off policy of every retry loop: reconnecting to Redis, restarting a child."""

from __future__ import annotations

from redis.backoff import EqualJitterBackoff


class Backoff:
    """Exponential with jitter, ``first`` doubling to ``cap`` seconds; ``reset()`` on success.

    The jitter keeps many workers that lost Redis at once from reconnecting in lockstep.
    """

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self._policy = EqualJitterBackoff(cap=cap, base=first)
        self._failures = 0

    def next(self) -> float:
        """The delay before the next try."""
        delay = self._policy.compute(self._failures)
        self._failures = min(self._failures + 1, 32)
        return delay

    def reset(self) -> None:
        self._failures = 0
