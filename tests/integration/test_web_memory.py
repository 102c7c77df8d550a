"""The web process reuses the memory of one upload for the next, rather than having the OS fault
fresh pages in for every body (resizer.memory)."""

from __future__ import annotations

import base64
import json
import os
import platform
import subprocess
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from resizer.embedded import free_port
from resizer.processes import resizer_command
from tests.helpers import answers, make_noise_image, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning is glibc's"),
]

IN_FLIGHT = 8
UPLOADS = 64


def minor_faults(pid: int) -> int:
    # /proc/PID/stat: the command may hold spaces, so count fields after its closing ")".
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[7])  # minflt, the 10th field


@pytest.fixture
def web(redis_server: Any) -> Iterator[tuple[int, str]]:
    port = free_port()
    proc = subprocess.Popen(
        resizer_command("serve", "--host", "127.0.0.1", "--port", str(port)),
        env={**os.environ, "REDIS_URL": redis_server.url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(url), 60, "resizer serve")
        yield proc.pid, url
    finally:
        proc.terminate()
        proc.wait(30)


def post(url: str, body: bytes) -> None:
    request = urllib.request.Request(  # noqa: S310
        f"{url}/tasks", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        assert response.status == 201


def test_uploads_reuse_the_web_process_memory(web: tuple[int, str]) -> None:
    """8 uploads of ~1.2 MB photos in flight: each upload allocates its body, the decoded image
    and copies between. Left to glibc's own thresholds, the web faulted 220-300 pages in for
    each here; kept in the heap, under 10."""
    pid, url = web
    photo = make_noise_image("JPEG", size=1400)
    assert len(photo) > 1_000_000

    def body(serial: int) -> bytes:
        # Unique images (a JPEG comment with a serial): the same bytes twice would be stored once.
        comment = f"{serial:08d}".encode()
        unique = (
            photo[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + photo[2:]
        )
        return json.dumps({"data": base64.b64encode(unique).decode()}).encode()

    def uploads(first: int) -> None:
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            list(pool.map(lambda s: post(url, body(s)), range(first, first + UPLOADS)))

    uploads(0)  # the heap grows to what 8 uploads in flight need
    before = minor_faults(pid)
    uploads(10_000)
    per_upload = (minor_faults(pid) - before) / UPLOADS
    assert per_upload < 40, f"{per_upload:.0f} pages faulted in per upload"


def gc_collections(url: str) -> dict[str, float]:
    """``python_gc_collections_total`` by generation, from the process's own /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    return {
        sample.labels["generation"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "python_gc_collections"
        for sample in family.samples
    }


def test_the_web_collects_garbage_once_started(web: tuple[int, str]) -> None:
    """A process imports with the collector off (resizer.memory); a serving web has it on
    again: its young generation is collected as requests come in."""
    _, url = web
    before = gc_collections(url)
    assert set(before) == {"0", "1", "2"}
    for _ in range(200):
        assert answers(url)
    assert gc_collections(url)["0"] > before["0"]
