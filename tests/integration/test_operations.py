"""Operations endpoints: /metrics, /openapi.json, and the API checked against its own document."""

from __future__ import annotations

import asyncio
import os
import subprocess
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
import schemathesis

# schemathesis.openapi.from_url imports its OpenAPI modules on first use; imported here, they are
# parsed (pytest rewrites a plugin's asserts) while collecting, not while a test's threads run:
# CPython 3.11.7's ast.parse can then fail with a spurious "AST constructor recursion depth
# mismatch" (python/cpython#106905, fixed in 3.11.8), as one run of the suite did.
import schemathesis.specs.openapi.adapter
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from resizer import __version__, openapi
from resizer.api import STORE, make_app
from resizer.config import Settings
from resizer.embedded import free_port
from resizer.models import QueueInfo, WorkerRecord
from resizer.processes import resizer_command
from resizer.store import Store, client_for, keys
from tests.helpers import answers, await_until, make_image, wait_until
from tests.integration.test_api import b64, post_image, run_worker_until_idle

pytestmark = pytest.mark.integration
Client = TestClient[Any, Any]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.mark.topologies("single", "cluster")
async def test_metrics_count_tasks_from_every_process_and_http_requests(
    client: Client, real_settings: Settings
) -> None:
    data = make_image("PNG", unique=True)
    await post_image(client, data)
    await post_image(client, data)  # deduplicated: joins the first
    await post_image(client, make_image("PNG", unique=True))
    await run_worker_until_idle(real_settings, 2)  # the worker counts into Redis
    await client.get("/tasks/nope")

    response = await client.get("/metrics/cluster")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    found = samples(await response.text())
    assert found[("resizer_redis_up", ())] == 1
    assert found[("resizer_tasks_created_total", ())] == 3
    assert found[("resizer_tasks_deduplicated_total", ())] == 1
    assert found[("resizer_tasks_finished_total", (("outcome", "done"),))] == 3
    assert found[("resizer_tasks_finished_total", (("outcome", "failed"),))] == 0
    assert found[("resizer_task_processing_seconds_count", ())] == 2
    assert found[("resizer_task_processing_seconds_bucket", (("le", "+Inf"),))] == 2
    assert found[("resizer_task_claim_wait_seconds_count", ())] == 2  # the joined one: never
    assert found[("resizer_task_claim_wait_seconds_bucket", (("le", "+Inf"),))] == 2
    assert found[("resizer_tasks_recovered_total", ())] == 0
    assert found[("resizer_tasks_attempt_cap_failures_total", ())] == 0
    assert found[("resizer_queue_waiting", ())] == 0
    assert found[("resizer_queue_in_flight", ())] == 0
    assert found[("resizer_queue_oldest_waiting_seconds", ())] == 0
    assert found[("resizer_queue_lease_overdue_seconds", ())] == 0
    assert found[("resizer_workers", (("state", "busy"),))] == 0

    own = samples(await (await client.get("/metrics")).text())
    post = (("method", "POST"), ("route", "/tasks"), ("status", "201"))
    assert own[("resizer_http_requests_total", post)] == 3
    missing = (("method", "GET"), ("route", "/tasks/{task_id}"), ("status", "404"))
    assert own[("resizer_http_requests_total", missing)] == 1
    latency = (("le", "+Inf"), ("method", "POST"), ("route", "/tasks"))
    assert own[("resizer_http_request_duration_seconds_bucket", latency)] == 3
    version = own[("resizer_build_info", (("version", __version__),))]
    assert version == 1
    assert own[("process_resident_memory_bytes", ())] > 0
    assert ("python_info", (("implementation", "CPython"), *python_labels())) in own
    # What one replica knows of the queue is not in its own metrics: summing those over
    # replicas must not count a task twice.
    assert not any(name.startswith("resizer_tasks") for name, _ in own)


def python_labels() -> tuple[tuple[str, str], ...]:
    import platform

    major, minor, patch = platform.python_version_tuple()
    return (
        ("major", major),
        ("minor", minor),
        ("patchlevel", patch),
        ("version", platform.python_version()),
    )


async def test_the_oldest_waiting_task_and_the_workers(
    client: Client, real_settings: Settings
) -> None:
    await post_image(client, make_image("PNG", unique=True))
    store = Store(client_for(real_settings.redis_url), real_settings)
    try:
        now = datetime.now(UTC)
        record = WorkerRecord("w1", "host", 1, __version__, now, now, done=5, failed=1)
        await store.heartbeat_worker(record, ttl_seconds=60)
        await asyncio.sleep(0.3)  # the task ages on Redis's clock
        found = samples(await (await client.get("/metrics/cluster")).text())
        assert found[("resizer_queue_waiting", ())] == 1
        assert found[("resizer_queue_oldest_waiting_seconds", ())] >= 0.3
        assert found[("resizer_workers", (("state", "idle"),))] == 1
    finally:
        await store.close()


async def test_a_lease_left_expired_shows_until_recovery_acts(
    client: Client, real_store: Store
) -> None:
    await post_image(client, make_image("PNG", unique=True))
    real_store.settings = attrs.evolve(real_store.settings, lease_seconds=2)
    task_id = await real_store.take(1)
    assert task_id is not None
    assert await real_store.claim(task_id, "gone") is not None  # and no worker renews it

    async def overdue() -> float:
        found = samples(await (await client.get("/metrics/cluster")).text())
        return found[("resizer_queue_lease_overdue_seconds", ())]

    assert await overdue() == 0  # not expired yet: a lease of two seconds
    await await_until(lambda: _above(overdue, 0.2), 10, "the lease to be 0.2 s overdue")
    assert (await real_store.recover()).requeued == [task_id]

    async def caught_up() -> bool:  # once the view (read at most once a second) is read again
        return await overdue() == 0

    await await_until(caught_up, 5, "the gauge to drop back to 0")


async def test_the_queue_view_reads_around_records_edited_by_hand(
    client: Client, real_store: Store
) -> None:
    await post_image(client, make_image("PNG", unique=True))
    await post_image(client, make_image("PNG", unique=True))
    redis, part = real_store.redis, real_store.partitions[0]
    task_id = await real_store.take(1)
    assert task_id is not None
    assert await real_store.claim(task_id, "w1") is not None
    await redis.hset(part.task(task_id), mapping={"attempts": "x", "updated_at": "?"})
    oldest = await redis.lindex(part.waiting, -1)
    assert isinstance(oldest, bytes)
    await redis.hset(part.task(oldest.decode()), "created_at", "long ago")
    await redis.lpush(part.failures, "not\ta failure")
    now = datetime.now(UTC)
    for name in ("w1", "w2"):
        record = WorkerRecord(name, "host", 1, __version__, now, now, done=0, failed=0)
        await real_store.heartbeat_worker(record, ttl_seconds=60)
    await redis.hset(keys.worker_key("w2"), "pid", "one")

    response = await client.get("/info")
    assert response.status == 200, await response.text()
    view = await response.json()
    assert [(f["task_id"], f["attempt"]) for f in view["in_flight"]] == [(task_id, 0)]
    assert view["failures"] == []
    assert [w["record"]["name"] for w in view["workers"]] == ["w1"]
    assert view["stats"]["waiting"] == 1
    assert view["stats"]["oldest_waiting_seconds"] == 0  # its age is unknown
    assert (await client.get("/metrics/cluster")).status == 200


async def test_the_queue_view_is_read_once_however_many_ask(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    await post_image(client, make_image("PNG", unique=True))
    assert client.app is not None
    store = client.app[STORE]
    reads = 0
    read = store.info

    async def counted(failures: int = 10) -> QueueInfo:
        nonlocal reads
        reads += 1
        view: QueueInfo = await read(failures)
        return view

    monkeypatch.setattr(store, "info", counted)
    asked = [client.get("/info?failures=1") for _ in range(20)]
    asked += [client.get("/metrics/cluster") for _ in range(20)]
    for answer in await asyncio.gather(*asked):
        assert answer.status == 200
    assert reads == 1
    view = await (await client.get("/info")).json()
    assert view["stats"]["waiting"] == 1
    assert reads == 1  # within the second: the same view


async def _above(value: Callable[[], Awaitable[float]], floor: float) -> bool:
    return await value() > floor


async def test_the_metrics_pass_the_exposition_rules(client: Client) -> None:
    """What `promtool check metrics` checks, with the library's own parser."""
    import re

    await post_image(client, make_image("PNG", unique=True))
    for path in ("/metrics", "/metrics/cluster"):
        text = await (await client.get(path)).text()
        names = set()
        for family in text_string_to_metric_families(text):
            assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", family.name), family.name
            assert family.documentation, f"{family.name} has no HELP"
            assert family.name not in names, f"{family.name} twice"
            names.add(family.name)
            if family.type == "counter":
                assert all(s.name.endswith("_total") for s in family.samples), family.name
            assert not family.name.endswith("_total") or family.type == "counter", family.name
            for sample in family.samples:
                assert not sample.name.endswith("_created"), sample.name
            if "seconds" in family.name or "bytes" in family.name:
                assert family.name.endswith(("_seconds", "_bytes", "_seconds_total")), family.name
        assert not re.search(r"_created\b", text)
    openmetrics = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await openmetrics.text()).rstrip().endswith("# EOF")


async def test_metrics_still_answer_when_redis_is_down(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
) -> None:
    client = await aiohttp_client(make_app(Settings(redis_url=f"redis://127.0.0.1:{free_port()}")))
    response = await client.get("/metrics/cluster")
    assert response.status == 200
    assert samples(await response.text())[("resizer_redis_up", ())] == 0
    assert (await client.get("/metrics")).status == 200


async def test_metrics_on_their_own_address(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
    aiohttp_server: Callable[[web.Application], Awaitable[Any]],
    real_settings: Settings,
) -> None:
    import attrs

    from resizer.api import make_metrics_app
    from resizer.config import Address

    address = Address("127.0.0.1", free_port())
    private = attrs.evolve(real_settings, metrics_addr=address, api_token="tok")
    main = make_app(private)
    client = await aiohttp_client(main)
    assert (await client.get("/metrics", headers={"Authorization": "Bearer tok"})).status == 404
    metrics = await aiohttp_server(make_metrics_app(main))
    async with metrics_session() as session:
        for path in ("/metrics", "/metrics/cluster"):
            async with session.get(f"http://{metrics.host}:{metrics.port}{path}") as response:
                assert response.status == 200  # no token needed on the private address
                assert "resizer_" in await response.text()


def metrics_session() -> Any:
    import aiohttp

    return aiohttp.ClientSession()


async def test_the_openapi_document_is_valid_and_served(client: Client) -> None:
    served = await (await client.get("/openapi.json")).json()
    assert served == openapi.document()
    validate(served)  # OpenAPI 3.1 schema validation; raises on any error
    routes = {
        (resource.canonical, route.method.lower())
        for resource in client.app.router.resources()
        for route in resource
        if route.method != "HEAD"
    }
    documented = {(path, method) for path, ops in served["paths"].items() for method in ops}
    assert documented == routes


# --- the live app against its own document -------------------------------------------------------


@pytest.fixture(scope="module")
def live_url(redis_server: Any) -> Iterator[str]:
    """A real ``resizer serve`` process on a real Redis, with some tasks of every status."""
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_server.url, "RESIZER_MAX_BODY_BYTES": "200000"}
    proc = subprocess.Popen(
        resizer_command("serve", "--host", "127.0.0.1", "--port", str(port)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    try:
        wait_until(lambda: answers(url), 60, "resizer serve")
        request = urllib.request.Request(  # noqa: S310
            f"{url}/tasks",
            data=f'{{"data": "{b64(make_image("PNG", unique=True))}"}}'.encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).close()  # noqa: S310
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_api_conforms_to_its_document(live_url: str) -> None:
    """Every operation, with inputs generated from the document (valid and invalid):
    no 5xx, and every response as documented (status, content type, body, headers).

    (schemathesis' own pytest plugin does not load under pytest 9 yet, so the hypothesis
    strategies it builds per operation are driven here.)
    """
    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        response_headers_conformance,
    ]
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    # Every route but /openapi.json itself, which schemathesis leaves out.
    assert len(operations) == 9
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=30,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def conforms(case: Any) -> None:
            case.call_and_validate(checks=checks, timeout=40)

        conforms()


async def test_each_request_is_one_log_event_with_route_status_duration_and_id(
    client: Client,
) -> None:
    import structlog
    from structlog.testing import capture_logs

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        response = await client.get("/tasks/abc", headers={"X-Request-Id": "req-42"})
    handled = [e for e in events if e["event"] == "request.handled"]
    assert len(handled) == 1
    event = handled[0]
    assert (event["method"], event["route"], event["status"]) == ("GET", "/tasks/{task_id}", 404)
    assert event["request_id"] == "req-42" == response.headers["X-Request-Id"]
    assert event["duration_ms"] >= 0
