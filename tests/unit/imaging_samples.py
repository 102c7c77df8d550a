"""Realistic test images, made on the fly: photos with texture and sensor grain, cut-outs with
soft alpha, scans in CMYK, camera files with EXIF orientation and ICC profiles."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

UPRIGHT_QUADRANTS = ((230, 30, 30), (30, 200, 30), (30, 30, 230), (240, 220, 20))
"""Top-left, top-right, bottom-left, bottom-right of the upright test picture."""

PRESS_INKS = {"C": (0, 174, 239), "M": (236, 0, 140), "Y": (255, 242, 0), "K": (35, 31, 32)}
"""sRGB colours of process inks at 100% on white paper, for ``tests.quality.cmyk_profile``."""


def photo(size: int, grain: float = 0.0, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth gradients, hard-edged shapes, fine texture, optional grain.

    Built from 256 px of structure scaled up (LANCZOS), as a camera's optics would smooth it,
    then with per-pixel gaussian grain like a small sensor's.
    """
    base = 256
    r = Image.linear_gradient("L").resize((base, base))
    g = Image.radial_gradient("L").resize((base, base))
    b = r.transpose(Image.Transpose.ROTATE_90)
    img = Image.merge("RGB", (r, g, b))
    draw = ImageDraw.Draw(img)
    draw.ellipse((40 + seed % 7, 50, 150, 170), fill=(250, 240, 220))
    draw.rectangle((150, 20, 230, 90), fill=(20, 40, 120))
    draw.polygon([(20, 230), (120, 140), (200, 240)], fill=(200, 60, 40))
    for i in range(0, base, 8):  # fine stripes: detail that aliases if resized carelessly
        draw.line((i, 180, i + 30, 250), fill=(30, 30, 30), width=1)
    img = img.resize((size, size), Image.Resampling.LANCZOS)
    if grain > 0:
        noise = Image.effect_noise((size, size), grain).filter(ImageFilter.BoxBlur(0.5))
        # effect_noise is centred on 128: add it as a signed offset on every channel.
        offset = Image.merge("RGB", (noise, noise, noise))
        img = ImageChops.add(img, offset, scale=1.0, offset=-128)
    return img


def upright_quadrants(size: int) -> Image.Image:
    """Four coloured quadrants: any rotation or mirror of it is distinguishable."""
    img = Image.new("RGB", (size, size))
    half = size // 2
    draw = ImageDraw.Draw(img)
    for index, colour in enumerate(UPRIGHT_QUADRANTS):
        x, y = (index % 2) * half, (index // 2) * half
        draw.rectangle((x, y, x + half - 1, y + half - 1), fill=colour)
    return img


# How a camera stores an upright scene for each EXIF orientation: the inverse of the transform
# a viewer applies (orientation 6 = "rotate 90 CW to view", so it is stored turned 90 CCW).
STORED_FOR_ORIENTATION: dict[int, Image.Transpose | None] = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def png_header_only(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR declares any size, with (by default) no pixel data at all."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def pixel(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = img.getpixel(xy)
    if isinstance(value, tuple):
        return tuple(int(v) for v in value)
    assert isinstance(value, int | float), value
    return (int(value),)


def close(a: tuple[int, ...], b: tuple[int, ...], tolerance: int) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def two_tone(mode: str, size: int) -> Image.Image:
    """A square in ``mode``: a plain background and a block of another colour (and opacity) in
    the middle. Any size encodes small and fast, which is what files declaring a large size need.
    """
    colours: dict[str, tuple[float | tuple[int, ...], float | tuple[int, ...]]] = {
        "1": (0, 1),
        "L": (30, 220),
        "P": (0, 1),
        "LA": ((30, 0), (220, 255)),
        "RGB": ((20, 60, 200), (230, 200, 40)),
        "RGBA": ((20, 60, 200, 0), (230, 200, 40, 255)),
        "CMYK": ((0, 0, 0, 0), (200, 30, 10, 40)),
        "I;16": (1000, 60000),
        "I": (1000, 60000),
        "F": (0.25, 0.75),
    }
    background, block = colours[mode]
    img = Image.new(mode, (size, size), background)
    if mode == "P":
        img.putpalette([20, 60, 200, 230, 200, 40] + [0, 0, 0] * 254)
    ImageDraw.Draw(img).rectangle((size // 3, size // 3, 2 * size // 3, 2 * size // 3), block)
    return img


def png_interlaced(img: Image.Image) -> bytes:
    """An Adam7-interlaced PNG of an 8-bit L, LA, RGB or RGBA image (Pillow writes none)."""
    colour_types = {"L": 0, "RGB": 2, "LA": 4, "RGBA": 6}
    pixels = np.asarray(img).reshape(img.height, img.width, -1)
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2))
    rows = []
    for x0, y0, dx, dy in (*passes, (0, 1, 1, 2)):
        part = pixels[y0::dy, x0::dx].reshape(
            -1, len(img.getbands()) * len(range(x0, img.width, dx))
        )
        if part.size:
            rows.append(np.hstack([np.zeros((part.shape[0], 1), np.uint8), part]).tobytes())
    header = struct.pack(">IIBBBBB", img.width, img.height, 8, colour_types[img.mode], 0, 0, 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"".join(rows), 6))
        + _png_chunk(b"IEND", b"")
    )


def bmp_rle8(img: Image.Image) -> bytes:
    """An 8-bit run-length encoded BMP of an L or P image (Pillow writes none)."""
    pixels = np.asarray(img)
    runs = bytearray()
    for row in pixels[::-1]:  # BMP stores the bottom row first
        starts = np.flatnonzero(np.diff(row, prepend=-1))
        for start, end in zip(starts, [*starts[1:], len(row)], strict=True):
            for offset in range(start, end, 255):
                runs += bytes((min(255, end - offset), int(row[start])))
        runs += b"\x00\x00"  # end of line
    runs += b"\x00\x01"  # end of bitmap
    if img.mode == "P":
        rgb = img.getpalette() or []
        palette = b"".join(bytes((b, g, r, 0)) for r, g, b in zip(*[iter(rgb)] * 3, strict=True))
    else:
        palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    colours = len(palette) // 4
    info = struct.pack(
        "<IiiHHIIiiII", 40, img.width, img.height, 1, 8, 1, len(runs), 2835, 2835, colours, 0
    )
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(runs), 0, 0, offset) + info + palette + runs


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + kind
        + body
        + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )
