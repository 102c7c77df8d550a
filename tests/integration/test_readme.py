"""The README's shell examples run as written, against ``resizer up``, with a real
multi-megabyte photo: a stale example fails CI."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from resizer.embedded import free_port
from resizer.processes import resizer_command
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
MARKER = "tests/integration/test_readme.py"


def tried_block() -> str:
    """The ```sh block that follows the README's note that this test runs it."""
    readme = (ROOT / "README.md").read_text()
    after = readme[readme.index(MARKER) :]
    match = re.search(r"```sh\n(.*?)```", after, re.DOTALL)
    assert match is not None, "the README lost its tested example"
    return match.group(1)


def photo() -> bytes:
    """A square photo of a few megabytes (noise does not compress)."""
    img = Image.frombytes("RGB", (1400, 1400), os.urandom(1400 * 1400 * 3))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=95)
    return out.getvalue()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    argv = resizer_command("up", "--port", str(port), "--workers", "1", "--ephemeral")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/ready", timeout=1) as answer:  # noqa: S310
                    return bool(answer.status == 200)
            except OSError:
                return False

        wait_until(ready, 60, "resizer up")
        yield url
    finally:
        proc.terminate()
        proc.wait(60)


def test_the_try_it_example_runs_as_written(up: str, tmp_path: Path) -> None:
    data = photo()
    assert len(data) > 2_000_000
    (tmp_path / "photo.jpg").write_bytes(data)
    # Only where the server is changes: the test's own port, this checkout's venv.
    script = tried_block().replace("localhost:8080", up.removeprefix("http://"))
    script = script.replace(".venv/bin/resizer", str(Path(sys.executable).parent / "resizer"))
    env = {**os.environ, "RESIZER_URL": up}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"status": "DONE"' in done.stdout
    assert done.stdout.count('"status": "') >= 2  # the JSON upload answered too
    for name, size in (("photo_64.jpg", 64), ("photo_32.jpg", 32)):
        with Image.open(tmp_path / name) as img:
            assert (img.format, img.size) == ("JPEG", (size, size))
    assert "workers" in done.stdout  # resizer info
    assert "deleted" in done.stdout
