"""What comes before an image's pixels, counted before Pillow reads it.

Pillow reads a header in Python, a segment at a time: a JPEG marker (or a byte of fill or junk
between markers), a PNG chunk (the pixels' and those after them too), a GIF block, a TIFF
directory entry; and it makes a Python object for every strip or tile of a TIFF. Each costs
1-2 us, and a file may hold millions of them a few bytes long: a 32 MB JPEG of 8 million empty
APP5 markers held the web's event loop for 10.3 s and grew it by 1,060 MiB (Pillow keeps every
APP segment), 32 MB of fill bytes held it for 11.3 s, and a worker spent 4.3 s on a 28 MB
palette PNG of 2 million text chunks after its pixels. Encoders write a few dozen segments (a
phone's depth map, in extended XMP: about 40 of 64 KB), so ``refusal`` turns away a file with
more than ``MAX_SEGMENTS``, with a loop that stops there. Formats whose headers a C library
reads (WebP, AVIF) and BMP's fixed header need no count.
"""

from __future__ import annotations

import struct

MAX_SEGMENTS = 1000
MAX_TIFF_PIECES = 32768
"""Strips or tiles of a TIFF: a 7071-row image (the largest square under the default pixel
limit) written a row a strip, in 4 separate planes, has 28,284."""

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG_NO_LENGTH = frozenset({0x00, 0x01, *range(0xD0, 0xDA)})  # TEM, RSTn, SOI, EOI; 00: stuffed


def refusal(data: bytes) -> str | None:
    """Why Pillow must not be given ``data`` to read, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return _over(_jpeg_segments(data), "JPEG markers")
    if data[:8] == _PNG:
        # Pillow reads every chunk, the pixels' too (IDAT, a few KiB each) and those after them.
        allowed = MAX_SEGMENTS + len(data) // 1024
        if _png_chunks(data, allowed) > allowed:
            return f"the image has over {allowed} PNG chunks (1000, and one a KiB of the file)"
        return None
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _over(_gif_blocks(data), "GIF blocks")
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff_refusal(data)
    return None


def _over(count: int, what: str) -> str | None:
    if count > MAX_SEGMENTS:
        return f"the image has over {MAX_SEGMENTS} {what} before its pixels"
    return None


def _jpeg_segments(data: bytes) -> int:
    """Steps of Pillow's marker loop up to the first scan, as far as ``MAX_SEGMENTS`` + 1."""
    pos, count = 2, 0
    while count <= MAX_SEGMENTS and pos + 1 < len(data):
        count += 1
        if data[pos] != 0xFF:
            pos += 1  # junk, skipped a byte at a time
            continue
        marker = data[pos + 1]
        if marker == 0xDA:  # the first scan: the pixels follow
            break
        if marker == 0xFF:
            pos += 1  # a fill byte
        elif marker in _JPEG_NO_LENGTH:
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return count


def _png_chunks(data: bytes, limit: int) -> int:
    """Chunks to the end of the image, as far as ``limit`` + 1."""
    pos, count = len(_PNG), 0
    while count <= limit and pos + 8 <= len(data):
        count += 1
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos += 12 + int.from_bytes(data[pos : pos + 4], "big")  # length, type, data, CRC
    return count


def _gif_blocks(data: bytes) -> int:
    """Extensions and their sub-blocks up to the first image, as far as ``MAX_SEGMENTS`` + 1."""
    flags = data[10] if len(data) > 10 else 0
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global palette
    count = 0
    while count <= MAX_SEGMENTS and pos < len(data) and data[pos] == 0x21:  # an extension
        pos += 2  # its introducer and label
        while count <= MAX_SEGMENTS and pos < len(data):
            count += 1
            size = data[pos]
            pos += 1 + size
            if size == 0:
                break
    return count


def _tiff_refusal(data: bytes) -> str | None:
    """The first directory's entries, and its strips or tiles (the count of their offsets)."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    entry, count_format = (20, "Q") if big else (12, "I")
    try:
        (first,) = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)
        (entries,) = struct.unpack_from(order + ("Q" if big else "H"), data, first)
        if (over := _over(entries, "TIFF directory entries")) is not None:
            return over
        start = first + (8 if big else 2)
        for i in range(entries):
            at = start + i * entry
            (tag,) = struct.unpack_from(order + "H", data, at)
            if tag in (273, 324):  # StripOffsets, TileOffsets
                (pieces,) = struct.unpack_from(order + count_format, data, at + 4)
                if pieces > MAX_TIFF_PIECES:
                    return (
                        f"the image has {pieces} strips or tiles, "
                        f"over the limit of {MAX_TIFF_PIECES}"
                    )
    except struct.error:
        return None  # cut short: Pillow says what is wrong with it
    return None
