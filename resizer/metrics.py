"""Prometheus metrics, served by prometheus_client's own aiohttp handler (content negotiation,
OpenMetrics).

Two endpoints, so that a sum over web replicas is right:

- ``/metrics``: this process. HTTP requests and their latency, the process and platform
  collectors (CPU, memory, file descriptors, Python), ``resizer_build_info``. Scrape every
  replica; ``sum()`` adds them up.
- ``/metrics/cluster``: the queue as Redis holds it, the same whichever replica answers. Task
  counters kept by the scripts that change task state (exact, and including every worker's
  work), the processing-time and claim-wait histograms, queue lengths, the oldest waiting
  task's age, workers by state. Scrape it once, through the Service: scraping it on every
  replica would count it once per replica.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import prometheus_client
from aiohttp import web
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from resizer import __version__
from resizer.models import CLAIM_WAIT_BUCKETS, DURATION_BUCKETS, QueueInfo

# A `_created` sample beside every counter and histogram only doubles the series.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

_TASK_COUNTERS = {
    "created": "Tasks accepted by POST /tasks",
    "deduplicated": "Tasks whose image was already stored (joined or DONE at once)",
    "retried": "Tasks given back by a worker after an unexpected error",
    "recovered": "Tasks re-queued by recovery after their lease expired",
    "attempt_cap_failures": "Tasks FAILED because they reached RESIZER_MAX_ATTEMPTS",
}


class Metrics:
    """This process's metrics: one registry per app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(PROCESS_COLLECTOR)
        self.registry.register(PLATFORM_COLLECTOR)
        self.registry.register(GC_COLLECTOR)
        Info("resizer_build", "The running version", registry=self.registry).info(
            {"version": __version__}
        )
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
        self.connections = Gauge(
            "resizer_http_connections",
            "Connections the web holds open",
            registry=self.registry,
        )
        self.max_connections = Gauge(
            "resizer_http_connections_max",
            "Connections the web holds at most before it stops accepting",
            registry=self.registry,
        )
        self.accept_pauses = Counter(
            "resizer_http_accept_pauses",
            "Times the web stopped accepting: at its cap, or out of open files",
            ["reason"],
            registry=self.registry,
        )
        self.handler = make_aiohttp_handler(self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


async def cluster_response(request: web.Request, info: QueueInfo | None) -> web.StreamResponse:
    """The queue's metrics read once for this scrape; ``info`` is None when Redis is away."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(_cluster_families(info)))
    return await make_aiohttp_handler(registry)(request)


class _Snapshot:
    """A collector of metric families read once for one scrape."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _cluster_families(info: QueueInfo | None) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "resizer_redis_up", "1 if the task store answered this scrape", value=int(info is not None)
    )
    if info is None:
        return
    stats = info.stats
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
    yield _histogram(
        "resizer_task_processing_seconds",
        "Time a worker spent on a task (decode, resize, encode)",
        DURATION_BUCKETS,
        stats.durations,
    )
    yield _histogram(
        "resizer_task_claim_wait_seconds",
        "Time from a task's creation to its first claim by a worker",
        CLAIM_WAIT_BUCKETS,
        stats.claim_waits,
    )
    yield GaugeMetricFamily("resizer_queue_waiting", "Tasks waiting", value=stats.waiting)
    yield GaugeMetricFamily(
        "resizer_queue_in_flight", "Tasks held by a worker (leased)", value=stats.in_flight
    )
    yield GaugeMetricFamily(
        "resizer_queue_oldest_waiting_seconds",
        "Age of the oldest waiting task (0 when none waits)",
        value=stats.oldest_waiting_seconds,
    )
    yield GaugeMetricFamily(
        "resizer_queue_lease_overdue_seconds",
        "How long ago the most overdue lease expired (0 while recovery keeps up)",
        value=stats.lease_overdue_seconds,
    )
    workers = GaugeMetricFamily("resizer_workers", "Live workers, by state", labels=["state"])
    for state in ("idle", "busy"):
        workers.add_metric([state], sum(1 for w in info.workers if w.state == state))
    yield workers


def _histogram(
    name: str, help_text: str, bounds: tuple[float, ...], counts: dict[str, float]
) -> HistogramMetricFamily:
    # The scripts count each observation in its own bucket only; the exposition is cumulative.
    buckets, total = [], 0.0
    for le in [*(repr(b) for b in bounds), "+Inf"]:
        total += counts.get(le, 0.0)
        buckets.append((le, total))
    return HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=counts.get("sum", 0.0))
