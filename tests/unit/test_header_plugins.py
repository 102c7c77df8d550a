"""A process reads AVIF without having loaded Pillow's AVIF plugin at start (resizer.header):
the first file that may be one loads it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.unit.imaging_samples import encode, two_tone

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh process: this one has every plugin loaded (saving a test image loads them all).
FIRST_FILES = """
import json, sys
from PIL import Image
from resizer import header, imaging
from resizer.errors import InvalidImage
loaded = [sorted(Image.OPEN)]
results = []
for path in sys.argv[1:]:
    data = open(path, "rb").read()
    try:
        info = header.inspect(data, 10**8)
        sizes = [thumb.size for thumb in imaging.make_thumbnails(data)]
        results.append([info.format, info.width, sizes])
    except InvalidImage as exc:
        results.append(["refused", exc.message])
    loaded.append(sorted(Image.OPEN))
print(json.dumps({"loaded": loaded, "results": results}))
"""


def first_files(tmp_path: Path, *files: bytes) -> dict[str, Any]:
    paths = []
    for n, data in enumerate(files):
        path = tmp_path / f"{n}.bin"
        path.write_bytes(data)
        paths.append(str(path))
    out = subprocess.run(
        [sys.executable, "-c", FIRST_FILES, *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_a_process_reads_its_first_avif_without_the_plugin_loaded_at_start(
    tmp_path: Path,
) -> None:
    """Not an image, a PNG, then an AVIF: no plugin is loaded beyond the formats taken, and AVIF's
    only with the AVIF."""
    avif = encode(two_tone("RGB", 96), "AVIF", quality=50, speed=10)
    png = encode(two_tone("RGB", 96), "PNG")
    found = first_files(tmp_path, b"not an image at all", png, avif)
    # At start none; then after each file: ours, what Pillow's every open adds (its preinit:
    # PPM), and AVIF's with the AVIF. Had a format been asked for that was not loaded, Pillow
    # would have loaded all of its 40-odd plugins.
    ours = ["BMP", "DIB", "GIF", "JPEG", "PNG", "TIFF", "WEBP"]
    opened = sorted([*ours, "PPM"])
    assert found["loaded"] == [[], opened, opened, sorted([*opened, "AVIF"])]
    assert found["results"] == [
        ["refused", "not an image in a supported format (JPEG, PNG, WebP, GIF, TIFF, BMP, AVIF)"],
        ["png", 96, [64, 32]],
        ["avif", 96, [64, 32]],
    ]


def test_an_iso_media_file_that_is_not_avif_is_refused(tmp_path: Path) -> None:
    """A HEIC header (the same box structure, another brand) loads the plugin, which declines."""
    heic = (24).to_bytes(4, "big") + b"ftypheic" + b"\0\0\0\0" + b"mif1heic" + b"\0" * 64
    (found,) = first_files(tmp_path, heic)["results"]
    assert found[0] == "refused"
    assert "not an image in a supported format" in found[1]
