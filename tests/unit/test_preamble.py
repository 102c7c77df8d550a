"""Headers of many small segments are refused before Pillow reads them (resizer.preamble)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable

import pytest
from PIL import Image

from resizer import header, imaging, preamble
from resizer.errors import ImageDecodeError, InvalidImage

LIMIT = preamble.MAX_SEGMENTS
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encoded(fmt: str, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (64, 64), 90).save(out, fmt)
    return out.getvalue()


def jpeg_with_markers(n: int) -> bytes:
    """``n`` segments before the scan: the encoder's own, then empty APP5 markers."""
    data = encoded("JPEG")
    own = preamble._jpeg_segments(data)
    return data[:2] + b"\xff\xe5\x00\x02" * (n - own) + data[2:]


def jpeg_with_fill(n: int) -> bytes:
    data = encoded("JPEG")
    own = preamble._jpeg_segments(data)
    return data[:2] + b"\xff" * (n - own) + data[2:]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with_chunks(n: int) -> bytes:
    data = encoded("PNG")
    own = preamble._png_chunks(data, LIMIT)
    text = png_chunk(b"tEXt", b"k\x00v")
    return data[:33] + text * (n - own) + data[33:]  # after the signature and IHDR


def gif_with_blocks(n: int) -> bytes:
    data = encoded("GIF", "P")
    own = preamble._gif_blocks(data)
    image = data.index(b"\x2c")  # the image descriptor
    return data[:image] + b"\x21\xfe\x01a\x00" * ((n - own) // 2) + data[image:]


MAKERS: dict[str, Callable[[int], bytes]] = {
    "jpeg-markers": jpeg_with_markers,
    "jpeg-fill": jpeg_with_fill,
    "gif-blocks": gif_with_blocks,
}


@pytest.mark.parametrize("make", MAKERS.values(), ids=MAKERS.keys())
def test_many_segments_before_the_pixels_are_refused(make: Callable[[int], bytes]) -> None:
    over = make(LIMIT + 2)
    with pytest.raises(InvalidImage, match=f"over {LIMIT} .* before its pixels") as caught:
        header.inspect(over, 10**8)
    assert caught.value.status == 422
    with pytest.raises(ImageDecodeError, match="before its pixels"):
        imaging.make_thumbnails(over)


@pytest.mark.parametrize("make", MAKERS.values(), ids=MAKERS.keys())
def test_up_to_the_limit_they_are_read_and_resized(make: Callable[[int], bytes]) -> None:
    within = make(LIMIT)
    assert header.inspect(within, 10**8).width == 64
    assert [thumb.size for thumb in imaging.make_thumbnails(within)] == [64, 32]


def tiled_tiff(side: int, tile: int, *, bigtiff: bool = False) -> bytes:
    """A tiled 8-bit grey TIFF whose tiles all point at the same bytes (a header's worth)."""
    n = (-(-side // tile)) ** 2
    tags = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1)]
    tags += [(262, 3, 1, 1), (277, 3, 1, 1), (322, 3, 1, tile), (323, 3, 1, tile)]
    if bigtiff:
        ifd_size = 8 + (len(tags) + 2) * 20 + 8
        offsets = 16 + ifd_size
        counts = offsets + 8 * n
        pixels = counts + 8 * n
        entries = [struct.pack("<HHQQ", *tag) for tag in tags]
        entries += [struct.pack("<HHQQ", 324, 16, n, offsets)]
        entries += [struct.pack("<HHQQ", 325, 16, n, counts)]
        ifd = struct.pack("<Q", len(entries)) + b"".join(entries) + struct.pack("<Q", 0)
        head = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16)
        arrays = struct.pack(f"<{n}Q", *[pixels] * n) + struct.pack(f"<{n}Q", *[tile**2] * n)
    else:
        ifd_size = 2 + (len(tags) + 2) * 12 + 4
        offsets = 8 + ifd_size
        counts = offsets + 4 * n
        pixels = counts + 4 * n
        entries = [
            struct.pack("<HHIHH", code, kind, count, value, 0)
            if kind == 3
            else struct.pack("<HHII", code, kind, count, value)
            for code, kind, count, value in tags
        ]
        entries += [
            struct.pack("<HHII", 324, 4, n, offsets),
            struct.pack("<HHII", 325, 4, n, counts),
        ]
        ifd = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
        head = b"II*\x00" + struct.pack("<I", 8)
        arrays = struct.pack(f"<{n}I", *[pixels] * n) + struct.pack(f"<{n}I", *[tile**2] * n)
    return head + ifd + arrays + bytes(tile * tile)


@pytest.mark.parametrize("mode", ["P", "RGB"])
def test_a_png_of_many_chunks_after_its_pixels_is_refused(mode: str) -> None:
    """Pillow reads the chunks after the pixels when it loads them: 2 million text chunks there
    held a worker 4.3 s (palette) and 1.0 s (RGB). One chunk a KiB of file is allowed besides
    the 1000 (libpng writes the pixels in chunks of 8 KiB)."""
    data = encoded("PNG", mode)
    end = data.rindex(b"IEND") - 4
    text = png_chunk(b"tEXt", b"k\x00v")
    n = 20_000  # 300 KB: allowed 1000 + 292
    over = data[:end] + text * n + data[end:]
    with pytest.raises(InvalidImage, match=r"over \d+ PNG chunks"):
        header.inspect(over, 10**8)
    with pytest.raises(ImageDecodeError, match="PNG chunks"):
        imaging.make_thumbnails(over)
    within = png_with_chunks(LIMIT)
    assert header.inspect(within, 10**8).width == 64
    assert [thumb.size for thumb in imaging.make_thumbnails(within)] == [64, 32]
    # The pixels in many small chunks, as a streaming encoder may write them: a chunk a KiB.
    raw = zlib.compress(b"".join(b"\x00" + os.urandom(64 * 3) for _ in range(64)))
    pieces = [raw[i : i + 16] for i in range(0, len(raw), 16)]
    assert len(pieces) > 700
    ihdr = encoded("PNG", "RGB")[8:33]  # 64 x 64, 8-bit RGB
    split = _PNG_SIGNATURE + ihdr + b"".join(png_chunk(b"IDAT", p) for p in pieces)
    split += png_chunk(b"IEND", b"")
    assert preamble.refusal(split) is None
    assert header.inspect(split, 10**8).width == 64


@pytest.mark.parametrize("bigtiff", [False, True], ids=["tiff", "bigtiff"])
def test_a_tiff_of_too_many_strips_or_tiles_is_refused(bigtiff: bool) -> None:
    """Pillow makes a Python object for each: 191,844 tiles of 16 px in 1.5 MB held the web's
    event loop for 0.33 s."""
    over = tiled_tiff(7000, 16, bigtiff=bigtiff)  # 438 x 438 tiles
    with pytest.raises(InvalidImage, match="191844 strips or tiles, over the limit of 32768"):
        header.inspect(over, 10**8)
    within = tiled_tiff(7000, 64, bigtiff=bigtiff)  # 110 x 110
    assert header.inspect(within, 10**8).width == 7000


@pytest.mark.parametrize(
    "data",
    [b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00", encoded("PNG")[:20], b"GIF89a\x01", b"II*\x00\xff"],
    ids=["jpeg", "jpeg-segment", "png", "gif", "tiff"],
)
def test_a_header_cut_short_is_left_to_pillow_to_refuse(data: bytes) -> None:
    assert preamble.refusal(data) is None
    with pytest.raises(InvalidImage):
        header.inspect(data, 10**8)


def test_real_images_are_far_from_the_limit() -> None:
    for fmt, mode in [("JPEG", "RGB"), ("PNG", "RGBA"), ("GIF", "P"), ("TIFF", "RGB")]:
        assert preamble.refusal(encoded(fmt, mode)) is None
