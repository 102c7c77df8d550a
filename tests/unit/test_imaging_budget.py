"""The decode budget (resizer/budget.py): the estimate per mode, and the proof that it bounds
what a decode really takes.

The proof: for every input format and mode, a small file that declares the largest size the
budget accepts (one colour and a block of another: it compresses to almost nothing) is made into
thumbnails in a fresh process (tests/unit/imaging_peak.py), whose peak RSS must stay within its
baseline plus the estimate, hence the budget, plus ``MARGIN``; the same file one pixel larger
each way is refused, by ``inspect`` with a 422 and by the worker's pipeline before it decodes.

The budget here is ``RESIZER_BUDGET_TEST_MIB`` (96 MiB by default, which keeps the files small
and the test to seconds; 512 runs it at the service's default).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import imagecodecs
import numpy as np
import pytest
import yaml
from PIL import Image

from resizer import budget, header, imaging, memory
from resizer.budget import Header, MiB
from resizer.errors import ImageDecodeError, InvalidImage
from tests.quality import cmyk_profile
from tests.unit.imaging_samples import PRESS_INKS, bmp_rle8, encode, png_interlaced, two_tone

BUDGET = int(os.environ.get("RESIZER_BUDGET_TEST_MIB", "96")) * MiB
MAX_PIXELS = 50_000_000  # the service's default RESIZER_MAX_PIXELS
# What a decode may take beyond the estimate, which counts the buffers proportional to the image
# that are alive at once: the codecs' fixed costs (contexts, row buffers, thread stacks), and
# the allocator's slack: a worker's malloc keeps freed buffers for reuse (resizer/memory.py), and
# a freed buffer that Pillow's 16 MiB blocks do not fill stays resident (measured: 8 MiB over
# the estimate for the 3546 px grey+alpha PNG, under 1 MiB for every other file).
MARGIN = 16 * MiB
ROOT = Path(__file__).resolve().parents[2]


def _avif(mode: str, bits: int) -> Callable[[int], bytes]:
    def make(side: int) -> bytes:
        pixels = np.asarray(two_tone(mode, side)).astype(np.uint16) << (bits - 8)
        return bytes(
            imagecodecs.avif_encode(
                pixels, level=60, speed=10, bitspersample=bits, pixelformat="yuv444"
            )
        )

    return make


def _png16(mode: str) -> Callable[[int], bytes]:
    def make(side: int) -> bytes:
        pixels = np.asarray(two_tone(mode, side)).astype(np.uint16) * 257
        return bytes(imagecodecs.png_encode(pixels, level=1))

    return make


def _saved(mode: str, fmt: str, **params: object) -> Callable[[int], bytes]:
    return lambda side: encode(two_tone(mode, side), fmt, **params)


_PRESS = cmyk_profile(PRESS_INKS)
_DEFLATE = {"compression": "tiff_adobe_deflate"}
_ONE_STRIP = {"compression": "tiff_adobe_deflate", "strip_size": 2**31 - 1}

CASES: dict[str, Callable[[int], bytes]] = {
    "jpeg-L": _saved("L", "JPEG"),
    "jpeg-RGB": _saved("RGB", "JPEG"),
    "jpeg-CMYK-tagged": _saved("CMYK", "JPEG", icc_profile=_PRESS),
    "jpeg-L-progressive": _saved("L", "JPEG", progressive=True),
    "jpeg-RGB-progressive": _saved("RGB", "JPEG", progressive=True),
    "jpeg-RGB-444-progressive": _saved("RGB", "JPEG", progressive=True, subsampling=0),
    "jpeg-CMYK-progressive-tagged": _saved("CMYK", "JPEG", progressive=True, icc_profile=_PRESS),
    "png-1": _saved("1", "PNG"),
    "png-L": _saved("L", "PNG"),
    "png-LA": _saved("LA", "PNG"),
    "png-RGB": _saved("RGB", "PNG"),
    "png-RGBA": _saved("RGBA", "PNG"),
    "png-P": _saved("P", "PNG"),
    "png-P-transparent": _saved("P", "PNG", transparency=0),
    "png-I;16": _saved("I;16", "PNG"),
    "png-RGB-16bit": _png16("RGB"),
    "png-RGBA-16bit": _png16("RGBA"),
    "png-RGBA-interlaced": lambda side: png_interlaced(two_tone("RGBA", side)),
    "webp-RGB-lossy": _saved("RGB", "WEBP", quality=50, method=0),
    "webp-RGBA-lossy": _saved("RGBA", "WEBP", quality=50, method=0),
    "webp-RGB-lossless": _saved("RGB", "WEBP", lossless=True, method=0),
    "webp-RGBA-lossless": _saved("RGBA", "WEBP", lossless=True, method=0),
    "gif-P": _saved("P", "GIF"),
    "gif-P-transparent": _saved("P", "GIF", transparency=0),
    "tiff-1": _saved("1", "TIFF", **_DEFLATE),
    "tiff-L": _saved("L", "TIFF", **_DEFLATE),
    "tiff-RGB-one-strip": _saved("RGB", "TIFF", **_ONE_STRIP),
    "tiff-RGBA": _saved("RGBA", "TIFF", **_DEFLATE),
    "tiff-CMYK-tagged": _saved("CMYK", "TIFF", icc_profile=_PRESS, **_DEFLATE),
    "tiff-I;16-one-strip": _saved("I;16", "TIFF", **_ONE_STRIP),
    "tiff-I": _saved("I", "TIFF", **_DEFLATE),
    "tiff-F": _saved("F", "TIFF", **_DEFLATE),
    "bmp-RGB": _saved("RGB", "BMP"),
    "bmp-P": _saved("P", "BMP"),
    "bmp-P-rle8": lambda side: bmp_rle8(two_tone("P", side)),
    "avif-RGB": _saved("RGB", "AVIF", quality=50, speed=10),
    "avif-RGBA": _saved("RGBA", "AVIF", quality=50, speed=10),
    "avif-RGB-10bit": _avif("RGB", 10),
    "avif-RGBA-12bit": _avif("RGBA", 12),
}


def _header(data: bytes) -> Header:
    with Image.open(io.BytesIO(data)) as img:
        return budget.read_header(img, data)


def _largest_side(fits: Callable[[int], bool]) -> int:
    low, high = 1, 65535  # fits(low); the largest side any of these formats can declare
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


@attrs.frozen
class Measured:
    """One case: the file the budget (or the pixel cap) just accepts, its decode in a process
    of its own, and the file one pixel larger each way."""

    side: int
    estimate: int
    file_bytes: int
    baseline: int
    peak: int
    error: str | None
    over: bytes
    over_budget: bool  # the larger file is over the budget (else over the pixel cap)

    @property
    def used(self) -> int:
        return self.peak - self.baseline


def _measure(make: Callable[[int], bytes], directory: Path) -> Measured:
    probe = _header(make(64))
    density = 0.0  # bytes of file a pixel: the decode copies the file, so its size counts too
    for _ in range(5):
        # Sized from a small file's header; the real file's own header has the last word.
        def fits(side: int, density: float = density) -> bool:
            size = attrs.evolve(probe, width=side, height=side, data_bytes=int(density * side**2))
            return side * side <= MAX_PIXELS and budget.decode_bytes(size) <= BUDGET

        side = _largest_side(fits)
        data = make(side)
        estimate = budget.decode_bytes(_header(data))
        if estimate <= BUDGET:
            break
        density = len(data) / side**2
    else:
        raise AssertionError(f"no side found whose file fits {BUDGET} bytes")
    warm_up, path = directory / "warm-up", directory / "file"
    warm_up.write_bytes(make(64))
    path.write_bytes(data)
    out = subprocess.run(
        [sys.executable, "-m", "tests.unit.imaging_peak", str(warm_up), str(path), str(BUDGET)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    return Measured(
        side=side,
        estimate=estimate,
        file_bytes=len(data),
        baseline=result["baseline"],
        peak=result["peak"],
        error=result["error"],
        over=make(side + 1),
        over_budget=(side + 1) ** 2 <= MAX_PIXELS,
    )


@pytest.fixture(scope="module")
def measured() -> dict[str, Measured]:
    # Two cases at a time: each decode is a process of its own, and peak RSS is per process.
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        directories = {name: Path(tmp) / name for name in CASES}
        for directory in directories.values():
            directory.mkdir()
        futures = {
            name: pool.submit(_measure, make, directories[name]) for name, make in CASES.items()
        }
        results = {name: future.result() for name, future in futures.items()}
    print(f"\ndecode budget {BUDGET / MiB:.0f} MiB: peak RSS over the baseline, per file")
    for name, m in results.items():
        print(
            f"  {name:30} {m.side:5d} px {m.file_bytes / 1e3:9.1f} KB"
            f"  used {m.used / MiB:6.1f} MiB  estimate {m.estimate / MiB:6.1f} MiB"
            f"  ({m.used / m.estimate:4.2f})"
        )
    return results


@pytest.mark.parametrize("name", CASES)
def test_a_decode_the_budget_accepts_stays_within_it(
    name: str, measured: dict[str, Measured]
) -> None:
    m = measured[name]
    assert m.error is None, f"{name}: the pipeline refused {m.side}px: {m.error}"
    assert m.estimate <= BUDGET
    # The estimate is an upper bound of what the decode takes, hence so is the budget.
    assert m.used <= m.estimate + MARGIN, (name, m.side, m.used / MiB, m.estimate / MiB)
    assert m.used <= BUDGET + MARGIN


@pytest.mark.parametrize("name", CASES)
def test_one_pixel_more_is_refused_before_decoding(
    name: str, measured: dict[str, Measured]
) -> None:
    m = measured[name]
    reason = "RESIZER_MAX_DECODE_BYTES" if m.over_budget else "pixels, over the limit"
    with pytest.raises(InvalidImage, match=reason) as caught:
        header.inspect(m.over, MAX_PIXELS, BUDGET)
    assert caught.value.status == 422
    if m.over_budget:
        # The worker's own check, for a task an older API let through.
        with pytest.raises(ImageDecodeError, match="RESIZER_MAX_DECODE_BYTES"):
            imaging.make_thumbnails(m.over, max_decode_bytes=BUDGET)


def test_the_budget_is_what_limits_most_files(measured: dict[str, Measured]) -> None:
    # Otherwise the tests above would mostly be checking the pixel cap (which limits the plain
    # JPEGs, whose draft decode is small, and 1-bit and grey images).
    if 128 * MiB < BUDGET:
        pytest.skip("over 128 MiB, the 50 MP pixel cap limits most formats before the budget")
    limited = [name for name, m in measured.items() if m.over_budget]
    assert len(limited) >= len(CASES) * 2 // 3, limited


# --- the estimate per mode --------------------------------------------------------------------

SIDE = 1000
PIXELS = SIDE * SIDE


def _bytes(fmt: str, mode: str, **facts: object) -> int:
    at = Header(format=fmt, mode=mode, width=SIDE, height=SIDE, data_bytes=0, **facts)  # type: ignore[arg-type]
    return budget.decode_bytes(at)


@pytest.mark.parametrize(
    ("fmt", "mode", "facts", "per_pixel"),
    [
        # Pillow decodes into the image; then the worker's conversions: 1 to L (1 byte), P to
        # RGB (4), with a transparent colour to RGBA (4) and its premultiplied copy (4).
        ("PNG", "1", {}, 1 + 1),
        ("PNG", "P", {}, 1 + 4),
        ("PNG", "P", {"transparency": True}, 1 + 4 + 4),
        ("GIF", "P", {}, 1 + 4),
        ("GIF", "P", {"transparency": True}, 1 + 4 + 4),
        # 16-bit grey (2 bytes) goes through two 32-bit images (4 + 4) on its way to L.
        ("PNG", "I;16", {}, 2 + 4 + 4),
        ("TIFF", "I;16", {"file_bits": 16}, 2 + 4 + 4),
        ("TIFF", "I", {"file_bits": 32}, 4 + 4 + 4),
        # Floating point: scaled into another F (4), then to L (1).
        ("TIFF", "F", {"file_bits": 32}, 4 + 4 + 1),
        # 16-bit RGB(A) PNG: Pillow reduces it to 8 bits while decoding.
        ("PNG", "RGB", {}, 4),
        ("PNG", "RGBA", {}, 4 + 4),
        # TIFF: the image and one strip as stored in the file, as large as the image at worst.
        ("TIFF", "L", {"file_bits": 8}, 1 + 1),
        ("TIFF", "RGB", {"file_bits": 24}, 4 + 3),
        ("TIFF", "RGB", {"file_bits": 32}, 4 + 4),  # YCbCr is read as RGBA
        ("TIFF", "RGBA", {"file_bits": 32}, 4 + 4),
        ("TIFF", "CMYK", {"file_bits": 32}, 4 + 4),  # the CMYK image, and its RGB conversion
        ("TIFF", "LA", {"file_bits": 16}, 4 + 4),
        ("BMP", "RGB", {}, 4),
        ("BMP", "P", {}, 1 + 4),
        ("BMP", "L", {"rle": True}, 1 + 2),  # the expanded runs, twice
        # libwebp's canvas and previous frame, Pillow's bytes and image; a lossy alpha plane.
        ("WEBP", "RGB", {}, 16),
        ("WEBP", "RGBA", {}, 16 + 2),
        # dav1d's planes, libavif's RGB, Pillow's bytes and image (10-12 bits, 4:4:4 at worst).
        ("AVIF", "RGB", {}, 16),
        ("AVIF", "RGBA", {}, 16 + 3),
    ],
    ids=lambda v: str(v) if not isinstance(v, dict) else ",".join(map(str, v)) or "-",
)
def test_decode_bytes_per_mode(
    fmt: str, mode: str, facts: dict[str, object], per_pixel: int
) -> None:
    assert _bytes(fmt, mode, **facts) == PIXELS * per_pixel


@pytest.mark.parametrize(
    ("mode", "channels", "expected"),
    [
        # The rows (a filter byte each, then the samples), their wrapped copy, and pyspng's
        # copy of that as it decodes into the samples.
        ("L", 1, 2 * SIDE * (1 + SIDE) + PIXELS),
        ("RGBA", 4, 2 * SIDE * (1 + 4 * SIDE) + 4 * PIXELS),
        ("RGB", 3, 2 * SIDE * (1 + 3 * SIDE) + 3 * PIXELS),
    ],
)
def test_the_fast_png_decoder_holds_its_rows_three_times(
    mode: str, channels: int, expected: int
) -> None:
    assert _bytes("PNG", mode, fast_png=True) == expected
    # Past its cap, pngdecode leaves the file to Pillow, which decodes into the image.
    side = math.isqrt(budget.FAST_PNG_MAX_INFLATED_BYTES // channels) + 1
    large = Header(format="PNG", mode=mode, width=side, height=side, data_bytes=0, fast_png=True)
    pillow = attrs.evolve(large, fast_png=False)
    assert budget.decode_bytes(large) == budget.decode_bytes(pillow)


def test_jpeg_counts_the_draft_the_worker_decodes_at() -> None:
    # 4000 px asked for at 128 (RGB, L) or 256 (CMYK, which is converted before averaging):
    # 1/8 scale, 500 px, and the CMYK image's RGB conversion besides.
    big = 4000
    for mode, per_pixel in (("L", 1), ("RGB", 4), ("CMYK", 4 + 4)):
        at = Header(format="JPEG", mode=mode, width=big, height=big, data_bytes=0)
        assert budget.decode_bytes(at) == 500 * 500 * per_pixel


def test_jpeg_with_every_coefficient_buffered_counts_them_at_full_size() -> None:
    # 4:2:0: luma has 2x2 blocks an MCU, each chroma one; 64 coefficients of 2 bytes a block.
    big = 4000
    mcus = big // 16
    coefficients = (mcus * 2) ** 2 * 128 + 2 * mcus**2 * 128
    assert coefficients == big * big * 3  # 2 bytes a luma sample, 0.5 per chroma sample
    at = Header(
        format="JPEG",
        mode="RGB",
        width=big,
        height=big,
        data_bytes=0,
        sampling=((2, 2), (1, 1), (1, 1)),
        all_coefficients=True,
    )
    assert budget.decode_bytes(at) == coefficients + 500 * 500 * 4


def test_the_encoded_file_is_counted_once_or_twice() -> None:
    for fmt, copies in (("PNG", 1), ("JPEG", 1), ("TIFF", 1), ("WEBP", 2), ("AVIF", 2)):
        at = Header(format=fmt, mode="RGB", width=SIDE, height=SIDE, data_bytes=0)
        with_data = attrs.evolve(at, data_bytes=12345)
        assert budget.decode_bytes(with_data) - budget.decode_bytes(at) == copies * 12345


def test_the_estimate_grows_with_the_pixels() -> None:
    for fmt, mode in (("PNG", "RGBA"), ("WEBP", "RGB"), ("TIFF", "I;16"), ("AVIF", "RGBA")):
        sizes = [
            budget.decode_bytes(Header(format=fmt, mode=mode, width=s, height=s, data_bytes=0))
            for s in (100, 200, 400)
        ]
        assert sizes[0] * 4 == sizes[1]
        assert sizes[1] * 4 == sizes[2]


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_the_draft_size_is_pillows(mode: str) -> None:
    small = encode(two_tone(mode, 16), "JPEG")
    sof = small.index(b"\xff\xc0")
    request = budget.jpeg_draft_request(mode, 64)
    for side in (1, 63, 127, 128, 129, 255, 256, 511, 512, 1023, 1024, 1025, 2047, 2048, 8191):
        # The same file declaring another size: draft() reads only the header.
        sized = small[: sof + 5] + struct.pack(">HH", side, side) + small[sof + 9 :]
        with Image.open(io.BytesIO(sized)) as img:
            img.draft(mode, (request, request))
            assert img.size == budget.jpeg_draft_size(side, side, request), side


def test_read_header_finds_what_the_decode_depends_on() -> None:
    baseline = _header(encode(two_tone("RGB", 32), "JPEG"))
    assert baseline.sampling == ((2, 2), (1, 1), (1, 1))
    assert not baseline.all_coefficients
    assert _header(encode(two_tone("RGB", 32), "JPEG", progressive=True)).all_coefficients
    assert _header(encode(two_tone("RGB", 32), "PNG")).fast_png
    assert not _header(_png16("RGB")(32)).fast_png
    assert not _header(png_interlaced(two_tone("RGB", 32))).fast_png
    assert _header(encode(two_tone("P", 32), "PNG", transparency=0)).transparency
    assert _header(encode(two_tone("RGB", 32), "TIFF", **_DEFLATE)).file_bits == 24
    assert _header(encode(two_tone("I;16", 32), "TIFF", **_DEFLATE)).file_bits == 16
    assert _header(bmp_rle8(two_tone("P", 32))).rle
    assert not _header(encode(two_tone("P", 32), "BMP")).rle


def test_a_first_scan_without_every_component_buffers_every_coefficient() -> None:
    # A baseline JPEG whose first scan carries luma only (as some encoders write them): libjpeg
    # then keeps the whole image's coefficients, as for a progressive file.
    data = encode(two_tone("RGB", 32), "JPEG")
    sos = data.index(b"\xff\xda")
    (length,) = struct.unpack_from(">H", data, sos + 2)
    assert length == 2 + 1 + 3 * 2 + 3  # three components, two bytes each
    luma_only = struct.pack(">HB", 2 + 1 + 2 + 3, 1) + data[sos + 5 : sos + 7] + data[sos + 11 :]
    patched = data[: sos + 2] + luma_only
    assert _header(patched).all_coefficients


def test_inspect_names_the_limit() -> None:
    data = _saved("RGBA", "WEBP", lossless=True, method=0)(1200)  # 1200^2 px * 18 B = ~25 MiB
    needed = budget.decode_bytes(_header(data))
    with pytest.raises(InvalidImage) as caught:
        header.inspect(data, MAX_PIXELS, 20 * MiB)
    assert caught.value.status == 422
    assert caught.value.message == (
        f"the image needs about {math.ceil(needed / MiB)} MiB to decode, over the limit of"
        " 20 MiB (RESIZER_MAX_DECODE_BYTES)"
    )
    assert header.inspect(data, MAX_PIXELS, needed).width == 1200
    assert header.inspect(data, MAX_PIXELS).width == 1200  # the default budget: 512 MiB


def test_the_default_budget_fits_the_worker_containers() -> None:
    # Besides the decode, a worker holds its idle process (~80 MiB), the original and its copies
    # (up to 24 MiB each) and the freed heap malloc keeps for the next task (memory.TRIM_ABOVE).
    rest = 80 * MiB + 2 * 24 * MiB + memory.TRIM_ABOVE
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    k8s = yaml.safe_load((ROOT / "deploy/k8s/worker-deployment.yaml").read_text())
    limits = [
        compose["services"]["worker"]["deploy"]["resources"]["limits"]["memory"],
        *(
            c["resources"]["limits"]["memory"]
            for c in k8s["spec"]["template"]["spec"]["containers"]
        ),
    ]
    units = {"G": 2**30, "Gi": 2**30, "M": MiB, "Mi": MiB}
    for limit in limits:
        number, unit = re.fullmatch(r"(\d+)([GM]i?)", limit).groups()  # type: ignore[union-attr]
        assert budget.DEFAULT_MAX_DECODE_BYTES + rest <= int(number) * units[unit], limit
