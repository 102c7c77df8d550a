"""How much memory the worker's decode of an image needs, known from its header alone; and the
one input whose decode time its size does not bound, a JPEG of many scans (``refusal`` says no
to either).

The pixel cap does not bound memory: a 36-byte lossless WebP may declare 7000x7000, and its
decode then holds four buffers of that size at once. ``decode_bytes`` adds up, for the decode the
worker will actually run (``resizer.imaging``), the full-size buffers alive at its peak:

* the decoded image at the size the decoder gives (JPEG: the draft scale the worker asks for),
  at Pillow's bytes per pixel for its mode (1 for 1/L/P, 2 for 16-bit grey, 4 for the others);
* what the decoder holds besides (JPEG: every DCT coefficient when the file has several scans;
  PNG through ``pngdecode``: the inflated rows twice, and a third time while libspng decodes;
  TIFF: a strip or tile, up to the whole image; BMP RLE: the expanded pixels twice; WebP and
  AVIF: their own canvases and copies);
* the worker's full-size conversions (``imaging._working_mode``: 16-bit goes through two 32-bit
  images, palettes become RGB(A); CMYK's conversion to RGB; the premultiplied copy Pillow makes
  to reduce or resize an image with alpha);
* a copy of the encoded file (two for WebP and AVIF, which read it into a buffer of their own).

It imports nothing of the image stack (it reads headers Pillow has opened), so the web process
checks the budget (``header.inspect``) without the pixel stack, and the worker checks it again
before it decodes (a task queued by an older API). tests/unit/test_imaging_budget.py decodes
files declaring the largest size a budget accepts, in a subprocess, and checks its peak RSS.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import attrs

from resizer.models import SIZES

if TYPE_CHECKING:  # the settings import this module's default: Pillow only where it is used
    from PIL import ImageFile

MiB = 2**20

DEFAULT_MAX_DECODE_BYTES = 512 * MiB
"""The default of RESIZER_MAX_DECODE_BYTES. A worker container gets 1 GiB (docker-compose.yml,
deploy/k8s); with its idle process, the original and its copy, and the freed heap malloc keeps
(resizer/memory.py), this leaves a quarter of it to spare."""

# Decoding a JPEG at 1/8 scale (DC only) still meets the quality bar at 64 px, with a thin margin
# on grainy photos; a draft of at least twice the target costs little more and keeps a clear one.
JPEG_DRAFT_FACTOR = 2
# CMYK's conversion is far from linear, so as little averaging as possible may happen before it:
# the DCT's own averaging at 1/8 costs ~8 dB on the corpus scan, at 1/4 it does not.
JPEG_DRAFT_FACTOR_CMYK = 4

# pngdecode holds the inflated rows twice (plain, then wrapped; pyspng copies the wrapped ones
# again while it decodes) besides the result: past this
# size (a 4096x4096 RGBA is 64 MiB) the worker's memory matters more than the time it saves.
FAST_PNG_MAX_INFLATED_BYTES = 64 * MiB
_FAST_PNG_CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}  # pngdecode's modes

# Pillow's storage: one byte a pixel for 1, L and P, two for 16-bit grey, four for the rest.
_ONE_BYTE = frozenset({"1", "L", "P"})
_TWO_BYTES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})

MAX_JPEG_SCANS = 100
"""Scans a JPEG may have. Each is a pass over every block of the image, however few bytes it
takes (a run of empty blocks codes in a byte or two): 20,000 scans of 31 bytes in a 714 KB,
4000 px file held a worker's decode for 19 s (0.05 s with its own 10). Encoders write 1 to 10,
and a few dozen at most with custom scan scripts."""

# WebP (Pillow reads every file through libwebp's animation decoder): its canvas and the copy
# of the previous frame it keeps, Pillow's copy of the frame as bytes, then the image: 16 bytes
# a pixel; a lossy file with alpha decodes its alpha plane besides. The two canvases live as
# long as the image does.
_WEBP_DECODING, _WEBP_ALPHA, _WEBP_KEPT = 16, 2, 8
# AVIF (dav1d, then libavif's conversion to 8-bit RGB, then Pillow's copies): the decoded planes
# take up to 6 bytes a pixel (4:4:4 at 10 or 12 bits; the header does not say which, so the
# worst is assumed), alpha 2 more; the planes live as long as the image does.
_AVIF_DECODING, _AVIF_ALPHA, _AVIF_KEPT, _AVIF_ALPHA_KEPT = 16, 3, 6, 2


@attrs.frozen
class Header:
    """What an image's header says that its decode's memory depends on."""

    format: str  # Pillow's: JPEG, MPO, PNG, WEBP, GIF, TIFF, BMP, AVIF
    mode: str  # Pillow's mode of the decoded image
    width: int
    height: int
    data_bytes: int  # the encoded file
    transparency: bool = False  # a transparent colour (palette images become RGBA)
    # JPEG: each component's sampling factors, and whether libjpeg keeps every coefficient of
    # the image (progressive, or a first scan without every component).
    sampling: tuple[tuple[int, int], ...] = ()
    all_coefficients: bool = False
    scans: int = 0  # JPEG: the scans of its first image (up to MAX_JPEG_SCANS + 1)
    fast_png: bool = False  # PNG: a kind pngdecode takes (8-bit L/RGB/RGBA, no interlace)
    file_bits: int = 0  # TIFF: bits a pixel takes in the file (its strip buffer)
    rle: bool = False  # BMP: run-length encoded


def read_header(img: ImageFile.ImageFile, data: bytes) -> Header:
    """The ``Header`` of an image opened by Pillow (not loaded) from ``data``."""
    fmt = img.format or ""
    header = Header(
        format=fmt,
        mode=img.mode,
        width=img.width,
        height=img.height,
        data_bytes=len(data),
        transparency="transparency" in img.info,
    )
    if fmt in ("JPEG", "MPO"):
        layers = getattr(img, "layer", [])
        sampling = tuple((int(h), int(v)) for _, h, v, _ in layers)
        progressive = bool(img.info.get("progressive"))
        first_components, scans = _jpeg_scans(data, MAX_JPEG_SCANS)
        return attrs.evolve(
            header,
            sampling=sampling,
            all_coefficients=progressive or first_components < len(sampling),
            scans=scans,
        )
    if fmt == "PNG":
        rawmode = img.tile[0].args if img.tile else None
        fast = (
            img.mode in _FAST_PNG_CHANNELS
            and rawmode == img.mode  # 8 bits a sample
            and not img.info.get("interlace")
            and not header.transparency
        )
        return attrs.evolve(header, fast_png=fast)
    if fmt == "TIFF":
        return attrs.evolve(header, file_bits=_tiff_file_bits(img))
    if fmt == "BMP":
        return attrs.evolve(header, rle=bool(img.tile) and img.tile[0].codec_name == "bmp_rle")
    return header


def decode_bytes(header: Header, target: int = max(SIZES)) -> int:
    """Bytes the worker's decode of this image holds at its peak, for thumbnails of ``target``
    pixels at most: an upper bound of the buffers proportional to the image that are alive at
    once. Not counted: the codecs' fixed costs and the allocator's slack (a freed buffer that
    later ones do not fill), up to 16 MiB in the tests."""
    fmt, mode = header.format, header.mode
    width, height = header.width, header.height
    if fmt in ("JPEG", "MPO"):
        width, height = jpeg_draft_size(width, height, jpeg_draft_request(mode, target))
    pixels = width * height
    stored = _stored_bytes(mode)
    alpha = mode in _ALPHA or (mode == "P" and header.transparency)
    after = pixels * (stored + _conversion_bytes(mode) + (4 if alpha else 0))
    copies = 1
    if fmt in ("JPEG", "MPO"):
        during = _coefficient_bytes(header) + pixels * stored
    elif fmt == "PNG":
        during = _png_bytes(header, stored)
    elif fmt == "TIFF":
        # One strip or tile is read into a buffer of its own; a file may make it the whole image.
        during = pixels * stored + -(-pixels * header.file_bits // 8)
    elif fmt == "BMP" and header.rle:
        # Pillow expands the runs in Python: a bytearray, then its copy as bytes.
        during = pixels * (stored + 2)
    elif fmt == "WEBP":
        during = pixels * (_WEBP_DECODING + (_WEBP_ALPHA if alpha else 0))
        after += pixels * _WEBP_KEPT
        copies = 2
    elif fmt == "AVIF":
        during = pixels * (_AVIF_DECODING + (_AVIF_ALPHA if alpha else 0))
        after += pixels * (_AVIF_KEPT + (_AVIF_ALPHA_KEPT if alpha else 0))
        copies = 2
    else:  # GIF, plain BMP: the decoder writes into the image
        during = pixels * stored
    return max(during, after) + copies * header.data_bytes


def refusal(header: Header, limit: int, target: int = max(SIZES)) -> str | None:
    """Why the worker must not decode this image, or None: its decode would need more than
    ``limit`` bytes, or take out of proportion to the file's size (a JPEG of many scans)."""
    needed = decode_bytes(header, target)
    if needed > limit:
        return (
            f"the image needs about {-(-needed // MiB)} MiB to decode, over the limit of"
            f" {limit // MiB} MiB (RESIZER_MAX_DECODE_BYTES)"
        )
    if header.scans > MAX_JPEG_SCANS:
        return (
            f"the JPEG has {header.scans} scans, over the limit of {MAX_JPEG_SCANS}: each one "
            "is decoded over the whole image"
        )
    return None


def jpeg_draft_request(mode: str, target: int) -> int:
    """The size the worker asks libjpeg's reduced-scale decode (``draft``) for."""
    # CMYK is averaged before its (very non-linear) conversion, so it needs more pixels.
    return target * (JPEG_DRAFT_FACTOR_CMYK if mode == "CMYK" else JPEG_DRAFT_FACTOR)


def jpeg_draft_size(width: int, height: int, request: int) -> tuple[int, int]:
    """The size Pillow's ``draft(mode, (request, request))`` decodes a JPEG at: the smallest of
    1/1, 1/2, 1/4, 1/8 that keeps at least ``request`` pixels each way."""
    fits = min(width // request, height // request)
    scale = next(s for s in (8, 4, 2, 1) if s <= max(fits, 1))
    return -(-width // scale), -(-height // scale)


def _stored_bytes(mode: str) -> int:
    return 1 if mode in _ONE_BYTE else 2 if mode in _TWO_BYTES else 4


def _conversion_bytes(mode: str) -> int:
    """Bytes a pixel of the full-size images the worker makes from the decoded one, alive with
    it (see ``imaging._working_mode`` and the CMYK conversion)."""
    if mode in ("RGB", "RGBA", "L", "LA"):
        return 0
    if mode == "1":
        return 1  # to L
    if mode in _TWO_BYTES or mode == "I":
        return 8  # to I (32 bits), scaled by point() into another I, then to L
    if mode == "F":
        return 5  # scaled by point() into another F, then to L
    return 4  # P, PA, CMYK, La, RGBa, LAB, YCbCr...: to RGB(A) or L, 4 bytes at most


def _coefficient_bytes(header: Header) -> int:
    """libjpeg's coefficient buffer (64 coefficients of 2 bytes a block, for every block of every
    component, at full size whatever the draft), when it keeps one."""
    if not header.all_coefficients:
        return 0
    factors = [(min(max(h, 1), 4), min(max(v, 1), 4)) for h, v in header.sampling] or [(1, 1)]
    h_max = max(h for h, _ in factors)
    v_max = max(v for _, v in factors)
    mcus_x = -(-header.width // (8 * h_max))
    mcus_y = -(-header.height // (8 * v_max))
    return sum(mcus_x * h * mcus_y * v * 128 for h, v in factors)


def _png_bytes(header: Header, stored: int) -> int:
    pixels = header.width * header.height
    channels = _FAST_PNG_CHANNELS.get(header.mode, 0)
    rows = header.height * (1 + header.width * channels)  # a filter byte, then the samples
    if not header.fast_png or rows > FAST_PNG_MAX_INFLATED_BYTES:
        return pixels * stored  # Pillow's decoder writes into the image
    # pngdecode: the rows and their wrapped copy; then that copy, pyspng's own copy of it and
    # the decoded samples; then, for RGB, the samples and Pillow's 4-byte pixels.
    samples = pixels * channels
    return max(2 * rows + samples, samples + (pixels * 4 if channels == 3 else 0))


_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""The marker after a scan's coded data, where a 0xFF is followed by 0 (a stuffed byte), a
restart marker, or more 0xFF (fill)."""


def _jpeg_scans(data: bytes, limit: int) -> tuple[int, int]:
    """A JPEG's first picture (to its EOI), walked a segment at a time: the components of its
    first scan (0 when junk comes before it: every coefficient is then counted), and its scans,
    as far as ``limit`` + 1. Segments are skipped by their length, so the bytes of a profile or
    a thumbnail are never taken for a scan."""
    pos, scans, first, clean = 2, 0, 0, True
    while scans <= limit and pos + 4 <= len(data):
        marker = data[pos + 1] if data[pos] == 0xFF else -1
        if marker in (-1, 0xFF):  # junk, or fill: on to the next marker
            clean = clean and marker == 0xFF
            found = _NEXT_MARKER.search(data, pos + 1)
            if found is None:
                break
            pos = found.start()
        elif marker == 0xD9:  # the end of the first image (an MPO's others follow)
            break
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
        else:
            start, pos = pos, pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
            if marker == 0xDA:
                if scans == 0 and clean and start + 4 < len(data):
                    first = data[start + 4]
                scans += 1
                found = _NEXT_MARKER.search(data, pos)
                if found is None:
                    break
                pos = found.start()
    return first, scans


def _tiff_file_bits(img: ImageFile.ImageFile) -> int:
    """Bits a pixel takes in a TIFF's strip buffer (YCbCr is read as 32-bit RGBA by libtiff)."""
    tags = getattr(img, "tag_v2", None)
    widest = 64  # the widest pixel Pillow reads (16-bit RGBA), for tags that make no sense
    if tags is None:
        return widest
    try:
        if tags.get(262) == 6:  # PhotometricInterpretation: YCbCr
            return 32
        bits = tags.get(258, (1,))  # BitsPerSample
        samples = int(tags.get(277, 1))  # SamplesPerPixel
        per_sample = bits if isinstance(bits, tuple) else (bits,)
        if len(per_sample) < samples:
            per_sample = per_sample * samples
        return max(sum(int(b) for b in per_sample[:samples]), 1)
    except (TypeError, ValueError, KeyError):
        return widest
