"""A faster decoder for the common PNG: 8-bit grey, RGB or RGBA, not interlaced.

Pure: bytes in, pixels out. ``decode`` returns None for any file it does not handle (palette,
16-bit, interlaced, tRNS, APNG...) or cannot decode, and the caller then decodes with Pillow,
which also produces the error message for a broken file; so this module can only make a PNG
faster, never change whether it decodes or what its pixels are (tests/unit/test_pngdecode.py
compares the two, on made files and under fuzzing).

Why it exists (figures in BENCHMARKS.md): Pillow spends a photo PNG's decode in zlib's inflate
(the system zlib, which the Pillow wheel links) and in unfiltering rows with scalar C. libspng
(pyspng) unfilters with SIMD but inflates with zlib too; libdeflate (the ``deflate`` package)
inflates much faster. So the IDAT stream is inflated by libdeflate, re-wrapped as "stored"
(uncompressed) deflate blocks, which libspng's inflate only copies, and libspng does the
unfiltering: about twice as fast as Pillow overall, from two packages under 1 MB together.
"""

from __future__ import annotations

import struct

import attrs
import deflate
import pyspng
from PIL import Image

from resizer import budget

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Colour type -> samples per pixel. Not grey+alpha: libspng writes it only as RGBA, and taking
# the LA back out of that would hold the pixels twice more; Pillow decodes those.
_CHANNELS = {0: 1, 2: 3, 6: 4}
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
# Chunks that change what the pixels mean (transparency key, animation) or that Pillow reads
# EXIF from (ImageMagick's text-chunk EXIF): leave those files to Pillow.
_PILLOW_ONLY = (b"tRNS", b"acTL", b"fcTL")
_RAW_EXIF_KEYWORD = b"Raw profile type exif"
_STORED_BLOCK = 65535  # the largest stored deflate block
_IEND = b"\0\0\0\0IEND\xaeB`\x82"  # an empty IEND chunk, with its CRC
# The decode holds the inflated rows twice (plain, then wrapped): larger images go to Pillow. The
# decode budget (budget.py) counts the same limit.
MAX_INFLATED_BYTES = budget.FAST_PNG_MAX_INFLATED_BYTES


@attrs.frozen
class DecodedPng:
    image: Image.Image
    exif: bytes | None  # the eXIf chunk's payload, wherever it was


@attrs.frozen
class _Layout:
    header: bytes  # the IHDR chunk, whole
    width: int
    height: int
    channels: int
    idat: list[memoryview]
    exif: bytes | None


def decode(data: bytes) -> DecodedPng | None:
    """Decode ``data`` if it is a PNG this module handles; None means: use Pillow."""
    layout = _layout(data)
    if layout is None:
        return None
    try:
        return DecodedPng(image=_decode(layout), exif=layout.exif)
    except MemoryError:
        raise
    except Exception:
        # Corrupt data: Pillow decodes it again and reports it in its own words.
        return None


def _layout(data: bytes) -> _Layout | None:
    if not data.startswith(_SIGNATURE):
        return None
    view = memoryview(data)
    pos = len(_SIGNATURE)
    header: bytes | None = None
    idat: list[memoryview] = []
    idat_ended = False
    exif: bytes | None = None
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        body_start, body_end = pos + 8, pos + 8 + length
        if body_end + 4 > len(data):
            return None
        if kind == b"IHDR" and header is None and length == 13:
            header = data[pos : body_end + 4]
        elif kind == b"IDAT":
            if idat_ended:
                return None  # IDAT chunks must be consecutive; let Pillow judge the file
            idat.append(view[body_start:body_end])
        elif kind == b"IEND":
            break
        elif kind in _PILLOW_ONLY or _is_raw_exif_text(kind, data, body_start):
            return None
        elif kind == b"eXIf":
            exif = data[body_start:body_end]
        if idat and kind != b"IDAT":
            idat_ended = True
        pos = body_end + 4
    if header is None or not idat:
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", header, 8)
    channels = _CHANNELS.get(colour)
    if depth != 8 or channels is None or interlace != 0 or width == 0 or height == 0:
        return None
    if height * (1 + width * channels) > MAX_INFLATED_BYTES:
        return None
    return _Layout(header, width, height, channels, idat, exif)


def _is_raw_exif_text(kind: bytes, data: bytes, body_start: int) -> bool:
    return kind in (b"tEXt", b"zTXt", b"iTXt") and data.startswith(_RAW_EXIF_KEYWORD, body_start)


def _decode(layout: _Layout) -> Image.Image:
    # Each row is one filter-type byte, then the samples.
    inflated = layout.height * (1 + layout.width * layout.channels)
    compressed = b"".join(layout.idat)
    rows = deflate.zlib_decompress(compressed, inflated)
    del compressed
    if len(rows) != inflated:
        raise ValueError("the image data is shorter than its header says")
    # Each stage is dropped as soon as the next one has it: a large image's rows would otherwise
    # be held three times over.
    png = _wrap_stored(layout.header, rows)
    del rows
    pixels = pyspng.load(png)
    del png
    mode = _MODES[layout.channels]
    shape = (layout.height, layout.width) + ((layout.channels,) if layout.channels > 1 else ())
    if pixels.shape != shape:
        raise ValueError(f"decoded {pixels.shape}, expected {shape}")
    size = (layout.width, layout.height)
    if mode in ("L", "RGBA"):
        # Pillow's layout is the array's: share its memory (the image keeps the array alive).
        return Image.frombuffer(mode, size, pixels, "raw", mode, 0, 1)
    # RGB is 4 bytes a pixel in Pillow: one copy, into memory that is not zeroed first
    # (Image.frombytes would zero it).
    image = Image.new(mode, size, None)
    image.frombytes(pixels, "raw", mode)
    return image


def _wrap_stored(header: bytes, rows: bytes | bytearray) -> bytes:
    """A PNG of ``header`` whose single IDAT holds ``rows`` as stored deflate blocks."""
    source = memoryview(rows)
    body: list[bytes | memoryview] = [b"IDAT", b"\x78\x01"]  # zlib: deflate, 32 KiB window
    for offset in range(0, max(len(rows), 1), _STORED_BLOCK):
        piece = source[offset : offset + _STORED_BLOCK]
        final = offset + _STORED_BLOCK >= len(rows)
        body.append(struct.pack("<BHH", 1 if final else 0, len(piece), 0xFFFF ^ len(piece)))
        body.append(piece)
    body.append(struct.pack(">I", deflate.adler32(rows)))
    crc = 0
    for part in body:  # any buffer will do: no copy of the rows just for a checksum
        crc = deflate.crc32(part, crc)
    length = sum(len(part) for part in body) - 4  # the chunk's length leaves out its type
    # One join: a single copy of the rows, into memory that is not zeroed first.
    return b"".join(
        [_SIGNATURE, header, struct.pack(">I", length), *body, struct.pack(">I", crc), _IEND]
    )
