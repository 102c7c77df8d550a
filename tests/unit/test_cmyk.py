"""The CMYK table (resizer/cmyk.py) against the profile's exact transform and against littlecms."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageCms

from resizer import cmyk, imaging
from tests.quality import cmyk_profile, gray_profile
from tests.unit.imaging_samples import PRESS_INKS, photo

ICC = cmyk_profile(PRESS_INKS)
INTENT = ImageCms.Intent.PERCEPTUAL


def exact(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    """What the profile gives for these inks, rounded to 8 bits as an sRGB file stores it."""
    rgb = np.clip(cmyk.evaluate(pixels, ICC, INTENT), 0.0, 1.0)
    return np.round(rgb * 255).astype(np.int64)


def test_every_node_of_the_table_comes_out_as_the_profile_gives_it() -> None:
    # Fails if the table's axes, packing or strides disagree with the kernel's indexing.
    nodes = cmyk.grid()
    ours = cmyk.convert_pixels(nodes, ICC, INTENT).astype(np.int64)
    # 13-bit linear light re-encoded to 8 bits can round the other way by one level.
    assert np.abs(ours - exact(nodes)).max() <= 1


def test_the_encoding_by_shift_keeps_every_linear_level() -> None:
    # The kernel encodes an interpolated field (a 13-bit level times the weights' sum, 225) by
    # the field >> _SHIFT instead of a division: each level must still encode as itself.
    levels = np.arange(cmyk._LEVELS + 1)
    wanted = np.round(cmyk._linear_to_srgb(levels / cmyk._LEVELS) * 255)
    assert np.array_equal(cmyk._ENCODE[(levels * cmyk._STEP**2) >> cmyk._SHIFT], wanted)


def test_between_nodes_it_is_closer_to_the_profile_than_littlecms() -> None:
    rng = np.random.default_rng(1)
    inks = rng.integers(0, 256, (50_000, 4), dtype=np.uint8)
    truth = exact(inks)
    ours = np.abs(cmyk.convert_pixels(inks, ICC, INTENT).astype(np.int64) - truth)
    strip = Image.frombytes("CMYK", (inks.shape[0], 1), inks.tobytes())
    transform = imaging._transform_for(ICC, "CMYK")
    assert transform is not None
    converted = ImageCms.applyTransform(strip, transform)
    assert converted is not None
    theirs = np.abs(np.asarray(converted).reshape(-1, 3).astype(np.int64) - truth)
    # Measured: ours 0.08 levels on average, 1 at the 99th percentile; littlecms 0.56 and 10.
    assert ours.mean() < 0.2
    assert np.percentile(ours, 99) <= 2
    assert ours.mean() < theirs.mean() / 3


def test_to_srgb_converts_an_image_as_the_pixels_are_converted() -> None:
    img = photo(120, grain=6.0, seed=3).convert("CMYK")
    converted = cmyk.to_srgb(img, ICC, INTENT)
    assert converted is not None
    assert (converted.mode, converted.size) == ("RGB", img.size)
    expected = cmyk.convert_pixels(np.asarray(img), ICC, INTENT)
    assert np.array_equal(np.asarray(converted), expected)


def test_pure_inks_come_out_in_their_colours() -> None:
    # Solid inks on white paper: the profile is built from these colours, so a swapped channel
    # or an inverted ink shows at once.
    solids = np.array(
        [[255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 255, 0], [0, 0, 0, 255], [0, 0, 0, 0]],
        dtype=np.uint8,
    )
    ours = cmyk.convert_pixels(solids, ICC, INTENT).astype(np.int64)
    wanted = [*PRESS_INKS.values(), (255, 255, 255)]
    for got, colour in zip(ours, wanted, strict=True):
        assert np.abs(got - np.array(colour)).max() <= 2, (got, colour)


@pytest.mark.parametrize(
    "profile", [b"", b"not an ICC profile", gray_profile(2.2)], ids=["empty", "junk", "gray"]
)
def test_a_profile_that_cannot_convert_cmyk_is_declined(profile: bytes) -> None:
    img = Image.new("CMYK", (8, 8), (10, 20, 30, 40))
    assert cmyk.to_srgb(img, profile, INTENT) is None


def test_without_numba_it_declines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cmyk, "_kernel", lambda: None)
    img = Image.new("CMYK", (8, 8), (10, 20, 30, 40))
    assert cmyk.to_srgb(img, ICC, INTENT) is None


def test_a_large_image_converts_in_bands_exactly_as_in_one_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    img = photo(120, grain=6.0, seed=4).convert("CMYK")
    whole = cmyk.to_srgb(img, ICC, INTENT)
    monkeypatch.setattr(cmyk, "_BAND_PIXELS", 120 * 7)  # 7 rows a band, the last one 1 row
    banded = cmyk.to_srgb(img, ICC, INTENT)
    assert whole is not None
    assert banded is not None
    assert banded.mode == "RGB"
    assert np.array_equal(np.asarray(banded), np.asarray(whole))


BAND_MEMORY = """
import sys
from PIL import Image, ImageCms
from resizer import cmyk
from tests.quality import cmyk_profile
from tests.unit.imaging_samples import PRESS_INKS
icc = cmyk_profile(PRESS_INKS)
intent = ImageCms.Intent.PERCEPTUAL
cmyk.to_srgb(Image.new("CMYK", (8, 8)), icc, intent)  # numba and the kernel loaded first
img = Image.new("CMYK", (3000, 3000), (10, 80, 160, 40))
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
before = peak_mb()
out = cmyk.to_srgb(img, icc, intent)
print(peak_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_large_image_takes_little_more_memory_than_its_result() -> None:
    # A CMYK TIFF has no draft decode: at RESIZER_MAX_PIXELS the numpy copies of the whole image
    # took 2.5x littlecms's memory. In bands, the growth is the result (36 MB here) and a band.
    out = subprocess.run(
        [sys.executable, "-c", BAND_MEMORY], check=True, capture_output=True, text=True
    )
    result_mb = 3000 * 3000 * 4 / 2**20
    assert float(out.stdout) < result_mb * 1.5, out.stdout
