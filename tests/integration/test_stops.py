"""Every role stops within its grace whatever state Redis is in: gone, or a host name that does
not resolve; and whatever thread is stuck (as one in getaddrinfo would be)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from resizer.embedded import free_port
from resizer.processes import resizer_command
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

GONE = f"redis://127.0.0.1:{free_port()}/0"
UNRESOLVABLE = "redis://redis-that-does-not-resolve.invalid:6379/0"
# (command, the grace it must exit within: compose gives web 30 s, workers 60 s, recover 10 s)
ROLES = {
    "serve": (("serve", "--host", "127.0.0.1", "--port", str(free_port())), 16.0),
    "work": (("work",), 30.0),
    "recover": (("recover", "--every", "5"), 10.0),
}


@pytest.mark.parametrize("redis_url", [GONE, UNRESOLVABLE], ids=["gone", "unresolvable"])
@pytest.mark.parametrize("stuck", [False, True], ids=["", "stuck-thread"])
@pytest.mark.parametrize("role", list(ROLES))
def test_a_role_stops_within_its_grace(
    role: str, redis_url: str, stuck: bool, tmp_path: Path
) -> None:
    argv, grace = ROLES[role]
    log = tmp_path / "log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RESIZER_")},
        "REDIS_URL": redis_url,
        "RESIZER_LEASE_SECONDS": "10",
        "RESIZER_FAILPOINTS": "at_start=stuck_thread" if stuck else "",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(resizer_command(*argv), env=env, stdout=out, stderr=out)
    try:
        # Running, and already failing to reach Redis.
        wait_until(lambda: "redis" in log.read_text().lower(), 30, f"{role} to try Redis")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(grace + 10)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert took <= grace, f"{role} took {took:.1f} s to stop: {log.read_text()[-800:]}"
