"""Fuzzing the header inspection and the worker pipeline with mutated real files.

The contract under attack: ``inspect`` returns a sane ImageInfo or raises InvalidImage (a 422);
``make_thumbnails`` returns decodable thumbnails in the declared format or raises
ImageDecodeError (a FAILED task with a reason). Any other exception would make the worker retry
a task that can never succeed, and a hang would stall a worker: both are failures here.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from resizer import header, imaging
from resizer.errors import ImageDecodeError, InvalidImage
from tests.quality import DISPLAY_P3_D50, cmyk_profile, matrix_profile
from tests.unit.imaging_samples import encode, exif_with_orientation, photo

# Small enough that a mutated header cannot make one example allocate gigabytes.
FUZZ_MAX_PIXELS = 4_000_000
SLOW = 10.0  # seconds: far above any honest decode of these tiny seeds


def _seeds() -> list[bytes]:
    small = photo(96, grain=4.0)
    rgba = photo(80).convert("RGBA")
    rgba.putalpha(Image.radial_gradient("L").resize((80, 80)))
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "made by the tests")
    text.add_itxt("Description", "zipped", zip=True)
    frames = [photo(64, seed=s).quantize(32) for s in (1, 2)]
    gray16 = Image.new("I;16", (64, 64))
    gray16.putdata([(x * 1021) % 65536 for x in range(64 * 64)])
    ink = {"C": (0, 174, 239), "M": (236, 0, 140), "Y": (255, 242, 0), "K": (35, 31, 32)}
    return [
        encode(
            small,
            "JPEG",
            quality=90,
            exif=exif_with_orientation(6),
            icc_profile=matrix_profile(DISPLAY_P3_D50),
        ),
        encode(small, "JPEG", quality=80, progressive=True),
        encode(rgba, "PNG", pnginfo=text),
        encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50),
        encode(rgba, "WEBP", quality=80),
        encode(small.convert("CMYK"), "TIFF", icc_profile=cmyk_profile(ink)),
        encode(small, "BMP"),
        encode(gray16, "PNG"),
        encode(small, "MPO", save_all=True, append_images=[photo(96, seed=5)]),
        encode(rgba, "PNG", save_all=True, append_images=[small.convert("RGBA")]),  # APNG
        encode(small.quantize(16), "PNG", transparency=3),
        encode(small, "AVIF", quality=60),
    ]


SEEDS = _seeds()

_INTS = (0, 1, 0x7F, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 40_000)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        # Half the mutations hit the first 256 bytes, where headers, sizes and offsets live.
        limit = min(len(data), 256) if draw(st.booleans()) else len(data)
        if limit == 0:
            break
        pos = draw(st.integers(0, limit - 1))
        kind = draw(st.sampled_from(["flip", "int32", "insert", "delete", "dup", "truncate"]))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "int32":
            value = draw(st.sampled_from(_INTS))
            data[pos : pos + 4] = value.to_bytes(4, draw(st.sampled_from(["big", "little"])))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif kind == "dup":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
        else:
            del data[pos:]
    return bytes(data)


@contextmanager
def pillow_pixel_limit(limit: int) -> Iterator[None]:
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


# Pillow warns about the damage it skips over (corrupt EXIF, bad TIFF tags): expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")

FUZZ = settings(
    # A modest default keeps `make test` quick; RESIZER_FUZZ_EXAMPLES=20000 for a long hunt.
    max_examples=int(os.environ.get("RESIZER_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _check_thumbnails(data: bytes) -> None:
    started = time.perf_counter()
    failure: ImageDecodeError | None = None
    try:
        result = imaging.make_thumbnails(data)
    except ImageDecodeError as exc:
        failure = exc
        result = []
    if failure is not None:
        assert failure.message
        assert failure.status == 422
    else:
        assert [t.size for t in result] == [64, 32]
    for thumb in result:
        with Image.open(io.BytesIO(thumb.data)) as img:
            img.load()
            assert img.size == (thumb.size, thumb.size)
            assert (img.format or "").lower() == thumb.format
    assert time.perf_counter() - started < SLOW


@FUZZ
@given(mutated())
def test_inspect_only_ever_returns_info_or_invalid_image(data: bytes) -> None:
    started = time.perf_counter()
    rejected: InvalidImage | None = None
    try:
        info = header.inspect(data, FUZZ_MAX_PIXELS)
    except InvalidImage as exc:
        rejected = exc
    if rejected is not None:
        assert rejected.message
        assert rejected.status == 422
    else:
        assert info.width == info.height > 0
        assert info.width * info.height <= FUZZ_MAX_PIXELS
        assert info.format in {f.lower() for f in header.INPUT_FORMATS} | {"mpo"}
    assert time.perf_counter() - started < SLOW


@FUZZ
@given(mutated())
def test_worker_pipeline_fails_permanently_or_succeeds(data: bytes) -> None:
    # The path a task takes: the web process inspects, the worker makes the thumbnails.
    try:
        header.inspect(data, FUZZ_MAX_PIXELS)
    except InvalidImage:
        return
    _check_thumbnails(data)


@FUZZ
@given(mutated())
def test_make_thumbnails_on_anything_never_raises_anything_else(data: bytes) -> None:
    # Without the header gate (a worker must survive whatever reaches it), with Pillow's own
    # limit lowered so that a mutated size cannot make an example allocate gigabytes.
    with pillow_pixel_limit(FUZZ_MAX_PIXELS):
        _check_thumbnails(data)


def test_the_seeds_are_valid_images() -> None:
    # The fuzzer mutates real files: they must be good to begin with.
    for seed in SEEDS:
        header.inspect(seed, FUZZ_MAX_PIXELS)
        assert len(imaging.make_thumbnails(seed)) == 2
