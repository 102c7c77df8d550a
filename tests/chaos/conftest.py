"""Fixtures of the chaos scenarios, and the table of figures printed at the end of the run.

Every test here is marked ``chaos``: the default ``pytest`` run skips them (``-m "not chaos"``
in pyproject.toml); ``make chaos`` runs them and prints the table. ``CHAOS_RESULTS=path``
also saves the figures as JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from resizer.config import Settings
from resizer.embedded import RedisServer
from tests.chaos import report
from tests.chaos.harness import Cluster, Figures, start_cluster
from tests.chaos.photos import photo_pool

HERE = Path(__file__).parent
_ROWS = pytest.StashKey[list[dict[str, Any]]]()
_REPORT = pytest.StashKey[pytest.TestReport]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.chaos)
            item.add_marker(pytest.mark.timeout(240))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    if rep.when == "call" or rep.failed:
        item.stash[_REPORT] = rep
    return rep


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rows = config.stash.get(_ROWS, [])
    if not rows:
        return
    terminalreporter.write_sep("=", "chaos: every accepted task must end DONE or FAILED")
    terminalreporter.write_line(report.table(rows))
    terminalreporter.write_line("")
    terminalreporter.write_line(report.notes(rows))
    target = os.environ.get("CHAOS_RESULTS")
    if target:
        Path(target).write_text(json.dumps(rows, indent=2))


@pytest.fixture(scope="session")
def photos() -> list[bytes]:
    """60 distinct real-looking photos, 48 to 400 px, JPEG, PNG and WebP, RGB, L and RGBA."""
    return photo_pool(60, (48, 96, 160, 256, 400))


@pytest.fixture(scope="session")
def small_photos() -> list[bytes]:
    return photo_pool(30, (32, 48, 64))


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    # The scenario's name: its docstring up to the first colon, and its parameters if any.
    title = request.node.function.__doc__.strip().partition(":")[0]
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and "redis_version" in callspec.params:
        title += f" (Redis {callspec.params['redis_version']})"
    row = Figures(scenario=title)
    yield row
    if not row.wall_seconds:
        row.stop_clock()
    rep = request.node.stash.get(_REPORT, None)
    row.outcome = "pass" if rep is not None and rep.passed else "FAIL"
    request.config.stash.setdefault(_ROWS, []).append(row.as_json())


RedisFactory = Callable[..., RedisServer]


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[RedisFactory]:
    """Start a fresh Redis server for the scenario (optionally with persistence or limits)."""
    servers: list[RedisServer] = []

    def start(
        *extra_args: str, directory: Path | None = None, port: int | None = None
    ) -> RedisServer:
        where = directory or tmp_path / f"redis-{len(servers)}"
        where.mkdir(parents=True, exist_ok=True)
        server = RedisServer(port=port, directory=where, extra_args=extra_args).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def cluster_factory(make_redis: RedisFactory, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    clusters: list[Cluster] = []

    def make(settings: Settings, *redis_args: str) -> Cluster:
        cluster = start_cluster(make_redis(*redis_args), settings, tmp_path / "logs")
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.kill_all()
