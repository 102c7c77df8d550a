"""Yardsticks for the image pipeline, shared by the tests and the benchmark (never by the service).

* ``reference``: what a thumbnail should look like, made the slow, straightforward way: full
  decode, EXIF orientation, colour conversion to sRGB at full resolution, then one LANCZOS resize
  straight to the target size in floating point (no shrink-on-load, no reduce(), no 8-bit
  intermediate).
* ``psnr``: how close a delivered or pre-encoding thumbnail is to that reference.
* ``matrix_profile`` / ``cmyk_profile``: small but valid ICC profiles built from numbers, so tests
  and the corpus can embed profiles whose effect is known exactly, without shipping binary files.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Sequence

import attrs
from PIL import Image, ImageCms, ImageMath, ImageOps

# sRGB primaries as XYZ adapted to D50 (the ICC connection space), columns R, G, B.
SRGB_D50: tuple[tuple[float, float, float], ...] = (
    (0.4360747, 0.2225045, 0.0139322),
    (0.3850649, 0.7168786, 0.0971045),
    (0.1430804, 0.0606169, 0.7141733),
)
# Display P3 (what recent phones tag their photos with), same convention.
DISPLAY_P3_D50: tuple[tuple[float, float, float], ...] = (
    (0.5151215, 0.2411957, -0.0010514),
    (0.2919769, 0.6922455, 0.0418854),
    (0.1571045, 0.0665741, 0.7840729),
)
_D50 = (0.9642, 1.0, 0.8249)


@attrs.frozen
class Planes:
    """An image as float planes in 0..255: colour composited on white, plus alpha if any."""

    size: int
    colour: tuple[tuple[float, ...], ...]  # 1 plane (gray) or 3 (RGB)
    alpha: tuple[float, ...] | None = None


def planes_of(img: Image.Image) -> Planes:
    """Planes of a decoded 8-bit thumbnail, composited on white like ``reference``."""
    assert img.width == img.height, img.size
    has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGBA" if has_alpha else "RGB")
    colour_bands = img.getbands()[:-1] if has_alpha else img.getbands()
    alpha = tuple(float(a) for a in img.getchannel("A").tobytes()) if has_alpha else None
    colour = []
    for band in colour_bands:
        values = img.getchannel(band).tobytes()
        if alpha is None:
            colour.append(tuple(float(v) for v in values))
        else:
            colour.append(
                tuple(v * a / 255 + 255 * (1 - a / 255) for v, a in zip(values, alpha, strict=True))
            )
    return Planes(size=img.width, colour=tuple(colour), alpha=alpha)


def reference(data: bytes, size: int) -> Planes:
    """The float reference thumbnail of an encoded image (see the module docstring)."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        icc = opened.info.get("icc_profile")
        img = ImageOps.exif_transpose(opened)
    img = _to_8bit(img)
    if isinstance(icc, bytes) and icc:
        img = _convert_icc(img, icc)
    if img.mode == "CMYK":
        img = img.convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA")
    bands = img.getbands()
    colour_bands = bands[:-1] if has_alpha else bands

    def resized(plane: Image.Image) -> list[float]:
        small = plane.resize((size, size), Image.Resampling.LANCZOS)
        return [float(small.getpixel((x, y))) for y in range(size) for x in range(size)]  # type: ignore[arg-type]

    if not has_alpha:
        colour = tuple(
            tuple(_clip(v) for v in resized(img.getchannel(b).convert("F"))) for b in colour_bands
        )
        return Planes(size=size, colour=colour)
    # Filter premultiplied colour (as any correct resampler does), then composite on white.
    alpha_f = img.getchannel("A").convert("F")
    alpha = [_clip(v) for v in resized(alpha_f)]
    planes = []
    for band in colour_bands:
        premultiplied = _multiply(img.getchannel(band).convert("F"), alpha_f)
        values = resized(premultiplied)
        planes.append(
            tuple(_clip(p + 255 * (1 - a / 255)) for p, a in zip(values, alpha, strict=True))
        )
    return Planes(size=size, colour=tuple(planes), alpha=tuple(alpha))


def psnr(reference_planes: Planes, candidate: Planes) -> float:
    """Peak signal-to-noise ratio in dB over every colour plane (and alpha when both have it)."""
    if reference_planes.size != candidate.size:
        raise ValueError(f"sizes differ: {reference_planes.size} vs {candidate.size}")
    ref, cand = reference_planes.colour, candidate.colour
    if len(ref) != len(cand):
        # A grayscale reference against an RGB candidate (or the reverse): compare as RGB.
        ref, cand = _as_rgb(ref), _as_rgb(cand)
    pairs = list(zip(ref, cand, strict=True))
    if reference_planes.alpha is not None and candidate.alpha is not None:
        pairs.append((reference_planes.alpha, candidate.alpha))
    total = 0.0
    count = 0
    for a, b in pairs:
        total += sum((x - y) ** 2 for x, y in zip(a, b, strict=True))
        count += len(a)
    mse = total / count
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _as_rgb(planes: tuple[tuple[float, ...], ...]) -> tuple[tuple[float, ...], ...]:
    return planes * 3 if len(planes) == 1 else planes


def _clip(v: float) -> float:
    return min(255.0, max(0.0, v))


def _multiply(a: Image.Image, alpha: Image.Image) -> Image.Image:
    result = ImageMath.lambda_eval(lambda args: args["a"] * args["b"] / 255.0, a=a, b=alpha)
    assert isinstance(result, Image.Image)
    return result


def _to_8bit(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("RGB", "RGBA", "L", "LA", "CMYK"):
        return img
    if mode in ("P", "PA"):
        return img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
    if mode.startswith("I;16") or mode == "I":
        return img.convert("F").point(lambda v: v / 257).convert("L")
    if mode == "F":
        return img.point(lambda v: v * 255).convert("L")
    if mode == "1":
        return img.convert("L")
    return img.convert("RGBA" if "A" in mode else "RGB")


def _convert_icc(img: Image.Image, icc: bytes) -> Image.Image:
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    srgb = ImageCms.createProfile("sRGB")
    out_mode = "RGBA" if img.mode in ("RGBA", "LA") else "RGB"
    if img.mode == "LA":
        return img
    # The profile's own pipeline in float (NOOPTIMIZE): littlecms's default 8-bit tables are an
    # approximation (up to 16 levels off on a CMYK press profile), not a yardstick.
    converted = ImageCms.profileToProfile(
        img,
        profile,
        srgb,
        renderingIntent=ImageCms.Intent.PERCEPTUAL,
        outputMode=out_mode,
        flags=ImageCms.Flags.NOOPTIMIZE,
    )
    assert converted is not None
    if profile.profile.xcolor_space.strip() == "GRAY":
        converted = converted.convert("L")
    return converted


# --- ICC profiles from numbers ----------------------------------------------------------------


def srgb_to_linear(v: float) -> float:
    """The sRGB transfer function, 0..1 -> linear 0..1."""
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def linear_to_srgb(v: float) -> float:
    v = min(1.0, max(0.0, v))
    return v * 12.92 if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055


def matrix_profile(
    primaries: Sequence[tuple[float, float, float]], description: str = "test RGB"
) -> bytes:
    """An RGB display profile: the given D50 primaries (columns R, G, B) and the sRGB curve."""
    curve = _curv([srgb_to_linear(i / 1023) for i in range(1024)])
    tags = {
        b"desc": _desc(description),
        b"cprt": _text("no copyright, test data"),
        b"wtpt": _xyz(_D50),
        b"rXYZ": _xyz(primaries[0]),
        b"gXYZ": _xyz(primaries[1]),
        b"bXYZ": _xyz(primaries[2]),
        b"rTRC": curve,
        b"gTRC": curve,
        b"bTRC": curve,
    }
    return _profile(b"mntr", b"RGB ", b"XYZ ", tags)


def gray_profile(gamma: float, description: str = "test gray") -> bytes:
    """A grayscale display profile with a pure power-law curve (1.0: linear light)."""
    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256))
    tags = {
        b"desc": _desc(description),
        b"cprt": _text("no copyright, test data"),
        b"wtpt": _xyz(_D50),
        b"kTRC": curve,
    }
    return _profile(b"mntr", b"GRAY", b"XYZ ", tags)


def cmyk_profile(inks: dict[str, tuple[int, int, int]], description: str = "test CMYK") -> bytes:
    """A CMYK output profile whose solid inks look like the given sRGB colours.

    ``inks`` maps "C", "M", "Y", "K" to the sRGB colour of that ink at 100% on white paper.
    Overprints multiply in linear light (a simple subtractive model); the profile samples the
    model on a 2-point grid per ink, so solid inks and their overprints are exact.
    """
    transmittance = {
        ink: tuple(srgb_to_linear(c / 255) for c in colour) for ink, colour in inks.items()
    }
    clut: list[int] = []
    # ICC CLUT order: the first input channel (C) varies slowest.
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    linear = [1.0, 1.0, 1.0]
                    for ink, on in (("C", c), ("M", m), ("Y", y), ("K", k)):
                        if on:
                            linear = [
                                x * t for x, t in zip(linear, transmittance[ink], strict=True)
                            ]
                    xyz = [sum(SRGB_D50[ch][i] * linear[ch] for ch in range(3)) for i in range(3)]
                    clut.extend(min(65535, max(0, round(v * 32768))) for v in xyz)
    body = b"mft2" + b"\0" * 4 + bytes([4, 3, 2, 0])
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    body += b"".join(_s15(v) for v in identity)
    body += struct.pack(">HH", 2, 2)
    body += struct.pack(">8H", *([0, 65535] * 4))  # input curves: identity
    body += struct.pack(f">{len(clut)}H", *clut)
    body += struct.pack(">6H", *([0, 65535] * 3))  # output curves: identity
    tags = {
        b"desc": _desc(description),
        b"cprt": _text("no copyright, test data"),
        b"wtpt": _xyz(_D50),
        b"A2B0": body,
        b"A2B1": body,
    }
    return _profile(b"prtr", b"CMYK", b"XYZ ", tags)


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(v: Sequence[float]) -> bytes:
    return b"XYZ " + b"\0" * 4 + b"".join(_s15(x) for x in v)


def _curv(values: Sequence[float]) -> bytes:
    table = [min(65535, max(0, round(v * 65535))) for v in values]
    return b"curv" + b"\0" * 4 + struct.pack(f">I{len(table)}H", len(table), *table)


def _text(s: str) -> bytes:
    return b"text" + b"\0" * 4 + s.encode("ascii") + b"\0"


def _desc(s: str) -> bytes:
    ascii_ = s.encode("ascii") + b"\0"
    return (
        b"desc"
        + b"\0" * 4
        + struct.pack(">I", len(ascii_))
        + ascii_
        + struct.pack(">II", 0, 0)
        + struct.pack(">HB", 0, 0)
        + b"\0" * 67
    )


def _profile(cls: bytes, space: bytes, pcs: bytes, tags: dict[bytes, bytes]) -> bytes:
    count = len(tags)
    offset = 128 + 4 + 12 * count
    table = b""
    data = b""
    for sig, body in tags.items():
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body + b"\0" * (-len(body) % 4)
    size = offset + len(data)
    header = (
        struct.pack(">I", size)
        + b"\0" * 4  # preferred CMM
        + bytes([2, 0x10, 0, 0])  # version 2.1
        + cls
        + space
        + pcs
        + struct.pack(">6H", 2026, 1, 1, 0, 0, 0)
        + b"acsp"
        + b"\0" * 4  # platform
        + b"\0" * 4  # flags
        + b"\0" * 8  # manufacturer, model
        + b"\0" * 8  # attributes
        + struct.pack(">I", 0)  # perceptual intent
        + b"".join(_s15(v) for v in _D50)
        + b"\0" * 4  # creator
        + b"\0" * 16  # profile id
        + b"\0" * 28
    )
    assert len(header) == 128, len(header)
    return header + struct.pack(">I", count) + table + data
