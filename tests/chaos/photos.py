"""Real-looking test photos made on the fly: smooth light, shapes, sensor noise, mixed formats."""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image, ImageDraw, ImageFilter

FORMATS = ("JPEG", "PNG", "WEBP")


def photo(rng: random.Random, size: int, fmt: str = "JPEG") -> bytes:
    """A square "photo": a lit gradient sky, a few blurred shapes, Gaussian grain."""
    channels = []
    for _ in range(3):
        ramp = Image.linear_gradient("L").rotate(rng.choice((0, 90, 180, 270)))
        glow = Image.radial_gradient("L")
        channels.append(Image.blend(ramp, glow, rng.uniform(0.2, 0.8)).resize((size, size)))
    img = Image.merge("RGB", channels)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 6)):
        x, y = rng.randrange(size), rng.randrange(size)
        r = rng.randint(max(2, size // 16), max(3, size // 3))
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(max(1, size // 64)))
    grain = Image.effect_noise((size, size), rng.uniform(8, 30)).convert("RGB")
    img = Image.blend(img, grain, 0.12)
    mode = rng.choice(("RGB", "RGB", "L", "RGBA")) if fmt != "JPEG" else "RGB"
    if mode == "RGBA":
        img.putalpha(Image.radial_gradient("L").resize((size, size)))
    elif mode == "L":
        img = img.convert("L")
    out = io.BytesIO()
    if fmt == "JPEG":
        img.save(out, "JPEG", quality=rng.randint(70, 95))
    else:
        img.save(out, fmt)
    return out.getvalue()


def photo_pool(count: int, sizes: tuple[int, ...], seed: int = 5) -> list[bytes]:
    """``count`` distinct photos, cycling through ``sizes`` and the three formats."""
    rng = random.Random(seed)
    return [
        photo(rng, sizes[i % len(sizes)], FORMATS[(i // len(sizes)) % len(FORMATS)])
        for i in range(count)
    ]


def uniquify(data: bytes, tag: str) -> bytes:
    """The same picture, but distinct bytes: ``tag`` goes into a metadata chunk (JPEG comment,
    PNG text chunk, WebP unknown chunk), in microseconds and without re-encoding.

    The service stores each distinct original once and resizes it once, so tasks that must each
    be processed need distinct bytes. ``tag`` is also what ``@marker`` failpoints look for.
    """
    payload = tag.encode()
    if data.startswith(b"\xff\xd8"):
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + data[2:]
    if data.startswith(b"\x89PNG"):
        body = b"tEXt" + b"Comment\x00" + payload
        chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
        return data[:33] + chunk + data[33:]
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        padded = payload + b"\x00" * (len(payload) % 2)
        chunk = b"XUID" + struct.pack("<I", len(payload)) + padded
        return data[:4] + struct.pack("<I", len(data) - 8 + len(chunk)) + data[8:] + chunk
    raise ValueError("not a JPEG, PNG or WebP file")
