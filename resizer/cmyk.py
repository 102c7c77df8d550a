"""CMYK -> sRGB through the embedded ICC profile, about 4.5x faster than littlecms.

Why: a CMYK JPEG must be converted before any averaging (inks mix far from linearly), so the
conversion runs on the whole draft decode: littlecms takes ~48 ns a pixel for it, a third of the
task. Its 8-bit CMYK path interpolates a 17^4 table in 16-bit fixed point with generic code.

How: the profile's exact transform (littlecms's unoptimised float pipeline) is sampled once per
profile on an 18^4 grid of ink values (nodes every 15 levels, so each node is an exact 8-bit
value), and each pixel is interpolated in that table: tetrahedral in C, M, Y (four nodes), linear
in K between two such lookups, the scheme littlecms itself uses for four inputs. The table holds
linear light, not sRGB's encoded values: inks filter light multiplicatively, so the transform is
far closer to linear there, and the mean error against the exact transform is ~7x smaller than
littlecms's own (tests/unit/test_cmyk.py). The three channels of a node are packed in one 64-bit
word, so one load and one multiply serve all three; a table then encodes to sRGB. About 100
instructions a pixel (9.5 ns on the benchmark machine, littlecms: 43 ns): LLVM emits no SIMD
gathers for the lookups, so the loop is scalar and every instruction saved counts.

The loop is compiled by numba (``nogil``: worker threads overlap), lazily, so a process that
never sees a tagged CMYK image never imports it. Without numba, or for a profile littlecms cannot
evaluate, ``to_srgb`` returns None and the caller converts with littlecms.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, cast

import imagecodecs
import numpy as np
import numpy.typing as npt
import structlog
from PIL import Image, ImageCms

log = structlog.get_logger(__name__)

_STEP = 15  # 255 = 17 * 15: every node is an exact 8-bit ink value
_NODES = 255 // _STEP + 1
# Offsets in the flattened table, whose axes are (K, C, M, Y).
_K, _C, _M, _Y = _NODES**3, _NODES**2, _NODES, 1
# Linear light in 13 bits: 0.4 sRGB levels a step at black, where sRGB is steepest. Interpolation
# weights multiply it by at most 15 * 15, which still fits a 21-bit field (3 fields, 63 bits).
_LEVELS = 8191
_FIELD = 21
# An interpolated field (0.._LEVELS * 225) is encoded by a table indexed by the field >> _SHIFT:
# a shift instead of a rounded division by 225, at 0.57 of a 13-bit level a bucket (every node
# still lands exactly on its own level).
_SHIFT = 7
_NOOPTIMIZE = 0x0100  # littlecms's cmsFLAGS_NOOPTIMIZE: the profile's own pipeline, in float
# Pixels converted at a time: 4 MB of CMYK in, 3 MB of RGB out. A draft decode fits in one.
_BAND_PIXELS = 1 << 20


def _lookups() -> npt.NDArray[np.int64]:
    """The loop's small tables, in one array (numba keeps each array's pointer and strides on
    the stack: one array instead of three saves a fifth of the loop's instructions).

    - ``[ink * 256 + value]``, ink 0..3 = C, M, Y, K: the offset in the table of the node below
      ``value`` (the last cell is closed, so 255 = node 16 + 15);
    - ``[_FRACTION + value]``: the distance from that node, 0..15;
    - ``[_TETRAHEDRA + 2 * order]``, ``+ 1``: the offsets of the second and third corners of the
      tetrahedron that holds the point, ``order`` being (fc >= fm, fc >= fy, fm >= fy) as 3 bits.
      The path goes from the cell's origin along the axes in decreasing order of their fractions.
    """
    value = np.arange(256)
    cell = np.minimum(value // _STEP, _NODES - 2)
    nodes = [cell * stride for stride in (_C, _M, _Y, _K)]
    corners = []
    for order in range(8):
        c_m, c_y, m_y = order >> 2 & 1, order >> 1 & 1, order & 1
        first = _C * (c_m & c_y) + _M * ((1 - c_m) & m_y) + _Y * ((1 - c_y) & (1 - m_y))
        last = _C * ((1 - c_m) & (1 - c_y)) + _M * (c_m & (1 - m_y)) + _Y * (c_y & m_y)
        corners += [first, _C + _M + _Y - last]
    return np.concatenate([*nodes, value - cell * _STEP, corners]).astype(np.int64)


_LOOKUPS = _lookups()
_FRACTION = 4 * 256
_TETRAHEDRA = 5 * 256

Kernel = Callable[..., None]


def to_srgb(img: Image.Image, icc: bytes, intent: ImageCms.Intent) -> Image.Image | None:
    """``img`` (mode CMYK) in sRGB as mode RGB, or None to let littlecms do it."""
    kernel = _kernel()
    table = _table(icc, intent) if kernel is not None else None
    if kernel is None or table is None:
        return None
    width, height = img.size
    rows = max(1, _BAND_PIXELS // width)
    if rows >= height:  # a draft decode: one go
        return Image.fromarray(_convert(img, kernel, table))
    # A large image (a CMYK TIFF has no draft) goes in bands, so the copies numpy needs stay
    # small: whole, they took 2.5x the memory of littlecms's conversion (+480 MB at 25 MP).
    out = Image.new("RGB", img.size)
    for top in range(0, height, rows):
        band = img.crop((0, top, width, min(top + rows, height)))
        out.paste(Image.fromarray(_convert(band, kernel, table)), (0, top))
    return out


def _convert(
    img: Image.Image, kernel: Kernel, table: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint8]:
    return _run(np.asarray(img), kernel, table)


def convert_pixels(
    pixels: npt.NDArray[np.uint8], icc: bytes, intent: ImageCms.Intent
) -> npt.NDArray[np.uint8]:
    """CMYK pixels (..., 4) to sRGB (..., 3) as ``to_srgb`` converts them; for the tests."""
    kernel = _kernel()
    table = _table(icc, intent)
    if kernel is None or table is None:
        raise RuntimeError("the CMYK kernel is not available")
    return _run(np.ascontiguousarray(pixels, dtype=np.uint8), kernel, table)


def _run(
    pixels: npt.NDArray[np.uint8], kernel: Kernel, table: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint8]:
    """C-contiguous CMYK (..., 4) -> RGB (..., 3): each pixel's inks read as one 32-bit word."""
    words = pixels.view(np.uint32).reshape(-1)
    out = np.empty(words.shape[0] * 3, dtype=np.uint8)
    kernel(words, table, _LOOKUPS, _ENCODE, out)
    return out.reshape(*pixels.shape[:-1], 3)


def evaluate(
    pixels: npt.NDArray[np.uint8], icc: bytes, intent: ImageCms.Intent
) -> npt.NDArray[np.float64]:
    """The profile's exact transform of CMYK pixels (..., 4): sRGB (..., 3), 0..1, unclipped.

    littlecms's float pipeline, without its tables. Through imagecodecs because Pillow's
    ImageCms gives 8 bits out, too coarse to linearise the darks from.
    """
    ink = pixels.reshape(1, -1, 4).astype(np.uint16) * 257
    rgb = imagecodecs.cms_transform(
        ink,
        icc,
        _srgb_bytes(),
        colorspace="cmyk",
        outcolorspace="rgb",
        outdtype=np.float32,
        intent=int(intent),
        flags=_NOOPTIMIZE,
    )
    return np.asarray(rgb, dtype=np.float64).reshape(*pixels.shape[:-1], 3)


def grid() -> npt.NDArray[np.uint8]:
    """The table's nodes as CMYK pixels, in the table's order (K, C, M, Y)."""
    values = np.arange(_NODES, dtype=np.uint8) * _STEP
    k, c, m, y = np.meshgrid(values, values, values, values, indexing="ij")
    return np.stack([c, m, y, k], axis=-1).reshape(-1, 4)


def _srgb_to_linear(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)


def _encoding() -> npt.NDArray[np.uint8]:
    """Interpolated field >> _SHIFT -> 8-bit sRGB: each bucket encodes the linear level at its
    centre, rounded."""
    buckets = np.arange((_LEVELS * _STEP * _STEP >> _SHIFT) + 1)
    level = np.round((buckets * (1 << _SHIFT) + (1 << (_SHIFT - 1))) / (_STEP * _STEP))
    linear = np.minimum(level, _LEVELS) / _LEVELS
    return np.round(_linear_to_srgb(linear) * 255).astype(np.uint8)


_ENCODE = _encoding()


@functools.cache
def _srgb_bytes() -> bytes:
    return bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())


@functools.lru_cache(maxsize=8)
def _table(icc: bytes, intent: ImageCms.Intent) -> npt.NDArray[np.int64] | None:
    # ~50 ms a profile (littlecms's float pipeline on 105k nodes); scanners and presses embed the
    # same few profiles, hence the cache.
    try:
        rgb = evaluate(grid(), icc, intent)
    except Exception as exc:
        log.warning("cmyk.table_failed", error=str(exc)[:200])
        return None
    # Out-of-gamut inks land outside 0..1; sRGB clips them, as littlecms's 8-bit output does.
    linear = np.round(_srgb_to_linear(np.clip(rgb, 0.0, 1.0)) * _LEVELS).astype(np.int64)
    return linear[:, 0] | (linear[:, 1] << _FIELD) | (linear[:, 2] << (2 * _FIELD))


@functools.cache
def _kernel() -> Kernel | None:
    if sys.byteorder != "little":  # the kernel reads C, M, Y, K as one word, lowest byte first
        return None
    try:
        import numba
    except Exception as exc:  # no wheel for this platform, or a broken install
        log.warning("cmyk.numba_import_failed", error=str(exc)[:200])
        return None
    # The compiled code is cached on disk next to this file, or in NUMBA_CACHE_DIR; where neither
    # is writable, it compiles in memory (about a second, once per process).
    for cache in (True, False):
        try:
            compiled = numba.njit(nogil=True, boundscheck=False, cache=cache)(_interpolate)
            return cast(Kernel, compiled)
        except Exception as exc:
            log.warning("cmyk.disk_cache_refused", error=str(exc)[:200], cache=cache)
    return None


def _interpolate(
    pixels: Any, table: Any, lookups: Any, encode: Any, out: Any
) -> None:  # pragma: no cover - runs compiled
    # Indices are made unsigned (np.uint64) where numba would otherwise add a negative-index
    # check to every lookup; they are never negative.
    mask = (1 << _FIELD) - 1
    corner = _C + _M + _Y
    for p in range(pixels.shape[0]):
        value = pixels[p]
        c = value & 255
        m = (value >> 8) & 255
        y = (value >> 16) & 255
        k = value >> 24
        fc = lookups[_FRACTION + c]
        fm = lookups[_FRACTION + m]
        fy = lookups[_FRACTION + y]
        fk = lookups[_FRACTION + k]
        base = lookups[c] + lookups[256 + m] + lookups[512 + y] + lookups[768 + k]
        # Branch-free: grain makes the order random, and mispredicted branches cost more than
        # these few integer operations.
        order = (
            (np.uint64(fc >= fm) << np.uint64(3))
            | (np.uint64(fc >= fy) << np.uint64(2))
            | (np.uint64(fm >= fy) << np.uint64(1))
        )
        first = lookups[np.uint64(_TETRAHEDRA) + order]
        second = lookups[np.uint64(_TETRAHEDRA + 1) + order]
        high = max(fc, max(fm, fy))
        low = min(fc, min(fm, fy))
        middle = fc + fm + fy - high - low
        w0 = _STEP - high
        w1 = high - middle
        w2 = middle - low
        upper = base + _K
        below = (
            table[np.uint64(base)] * w0
            + table[np.uint64(base + first)] * w1
            + table[np.uint64(base + second)] * w2
            + table[np.uint64(base + corner)] * low
        )
        above = (
            table[np.uint64(upper)] * w0
            + table[np.uint64(upper + first)] * w1
            + table[np.uint64(upper + second)] * w2
            + table[np.uint64(upper + corner)] * low
        )
        mixed = below * (_STEP - fk) + above * fk
        q = 3 * p
        out[q] = encode[np.uint64((mixed & mask) >> _SHIFT)]
        out[q + 1] = encode[np.uint64(((mixed >> _FIELD) & mask) >> _SHIFT)]
        out[q + 2] = encode[np.uint64(((mixed >> (2 * _FIELD)) & mask) >> _SHIFT)]
