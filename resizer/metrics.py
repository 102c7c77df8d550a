"""Prometheus metrics for ``GET /metrics``.

Two sources, on purpose:

- HTTP metrics are the web process's own (prometheus-client objects in a per-app registry).
- Task metrics are counted *in Redis* by the same Lua scripts that change task state, so they
  are exact, atomic with the transitions, and include every worker's work. Workers are many,
  short-lived and have no stable address to scrape; the web process exports their counts at
  scrape time. (Summing across several web replicas would double them: scrape one, or use
  ``max`` in queries.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from resizer.models import DURATION_BUCKETS, QueueStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TASK_COUNTERS = {
    "created": "Tasks accepted by POST /tasks",
    "deduplicated": "Tasks whose image was already stored (joined or DONE at once)",
    "retried": "Tasks given back by a worker after an unexpected error",
    "recovered": "Tasks re-queued by recovery after their lease expired",
    "attempt_cap_failures": "Tasks FAILED because they reached RESIZER_MAX_ATTEMPTS",
}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "resizer_http_requests",
            "HTTP requests answered, by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "resizer_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self, stats: QueueStats | None) -> bytes:
        """The exposition text; ``stats`` is None when Redis could not be read."""
        return generate_latest(self.registry) + generate_latest(_Snapshot(_task_metrics(stats)))


class _Snapshot:
    """A registry-like object holding metric families read once for this scrape."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _task_metrics(stats: QueueStats | None) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "resizer_redis_up", "1 if the task store answered this scrape", value=int(stats is not None)
    )
    if stats is None:
        return
    for name, help_text in _TASK_COUNTERS.items():
        yield CounterMetricFamily(
            f"resizer_tasks_{name}", help_text, value=stats.counters.get(name, 0)
        )
    finished = CounterMetricFamily(
        "resizer_tasks_finished", "Tasks that reached DONE or FAILED", labels=["outcome"]
    )
    for outcome in ("done", "failed"):
        finished.add_metric([outcome], stats.counters.get(outcome, 0))
    yield finished
    # The scripts count each observation in its own bucket only; the exposition is cumulative.
    buckets, total = [], 0.0
    for le in [*(str(le) for le in DURATION_BUCKETS), "+Inf"]:
        total += stats.durations.get(le, 0.0)
        buckets.append((le, total))
    yield HistogramMetricFamily(
        "resizer_task_processing_seconds",
        "Time a worker spent on a task (decode, resize, encode)",
        buckets=buckets,
        sum_value=stats.durations.get("sum", 0.0),
    )
    yield GaugeMetricFamily("resizer_queue_waiting", "Tasks waiting", value=stats.waiting)
    yield GaugeMetricFamily(
        "resizer_queue_in_flight", "Tasks held by a worker (leased)", value=stats.in_flight
    )
