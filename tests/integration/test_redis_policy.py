"""Every role refuses a Redis that may evict keys: eviction would drop queued tasks silently."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
import redis

from resizer.embedded import RedisServer
from resizer.processes import resizer_command

pytestmark = pytest.mark.integration


@pytest.fixture
def evicting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(
        directory=tmp_path_factory.mktemp("evicting"),
        extra_args=["--maxmemory", "100mb", "--maxmemory-policy", "volatile-lru"],
    )
    yield server.start()
    server.stop()


def run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": url}
    return subprocess.run(
        resizer_command(*args), env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    "command", [("work",), ("recover",), ("serve", "--host", "127.0.0.1", "--port", "0")]
)
def test_each_role_refuses_an_evicting_redis_in_one_line(
    evicting: RedisServer, command: tuple[str, ...]
) -> None:
    done = run(evicting.url, *command)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line
    assert "maxmemory-policy volatile-lru" in line
    assert "noeviction" in line


def test_a_redis_that_hides_its_config_gets_a_warning_not_a_refusal(
    redis_server: RedisServer, redis_url: str
) -> None:
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(
        "limited", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-config"],
    )  # fmt: skip
    admin.close()
    url = f"redis://limited:pw@127.0.0.1:{redis_server.port}/0"
    done = run(url, "recover")
    assert done.returncode == 0, done.stderr
    assert "redis.policy_unchecked" in done.stdout + done.stderr
