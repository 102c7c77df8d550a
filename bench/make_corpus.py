"""Build the benchmark corpus in bench/corpus/ from scikit-image's bundled sample photos.

Nothing is downloaded: the photos ship inside the scikit-image wheel. They are small (at most
640 px), so the large files are upscales; a smooth upscale compresses and decodes unrealistically
well, so the "phone" files get the grain of a small sensor (luma and chroma noise, a little
spatially correlated) before being written at the quality phones use.

Usage: python -m bench.make_corpus [--out bench/corpus] [--force]
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as samples

from tests.quality import DISPLAY_P3_D50, cmyk_profile, matrix_profile

CORPUS = Path(__file__).resolve().parent / "corpus"
# Ink colours of a typical coated-paper press, as sRGB.
# Grain (luma, chroma sigma) and quality that make a 3000 px photo about 3 MB, like a phone's.
PHONE_GRAIN = (6.0, 3.0)
PHONE_QUALITY = 95
PRESS_INKS = {"C": (0, 174, 239), "M": (236, 0, 140), "Y": (255, 242, 0), "K": (35, 31, 32)}


def sample(name: str) -> np.ndarray:
    """One of scikit-image's bundled photos, as an RGB array."""
    photo: np.ndarray = getattr(samples, name)()
    return photo


def square(rgb: np.ndarray, size: int) -> Image.Image:
    """Centre-crop to a square and resize (LANCZOS) to size x size."""
    img = Image.fromarray(rgb)
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side)).resize(
        (size, size), Image.Resampling.LANCZOS
    )


def grain(img: Image.Image, luma: float, chroma: float, seed: int) -> Image.Image:
    """Sensor-like noise: gaussian luma and chroma noise, slightly blurred (demosaicing)."""
    rng = np.random.default_rng(seed)
    h, w = img.height, img.width
    noise_l = rng.normal(0.0, luma, (h, w)).astype(np.float32)
    noise_c = rng.normal(0.0, chroma, (h, w, 3)).astype(np.float32)
    noise = noise_l[:, :, None] + noise_c
    # A 3x3 box blur of the noise: real sensor noise is correlated over a pixel or two.
    padded = np.pad(noise, ((1, 1), (1, 1), (0, 0)), mode="edge")
    rows = (padded[:-2] + padded[1:-1] + padded[2:]) / 3
    blurred = (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) / 3
    noisy = np.asarray(img, dtype=np.float32) + blurred * 2.2
    return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int, **params: object) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality, **params)
    return out.getvalue()


def png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG", compress_level=6)
    return out.getvalue()


def with_orientation(img: Image.Image, orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def smooth_3000() -> bytes:
    return jpeg(square(sample("astronaut"), 3000), 90)


def phone_3000() -> bytes:
    return jpeg(grain(square(sample("coffee"), 3000), *PHONE_GRAIN, seed=1), PHONE_QUALITY)


def phone_4000() -> bytes:
    return jpeg(grain(square(sample("chelsea"), 4000), *PHONE_GRAIN, seed=2), PHONE_QUALITY)


def phone_p3_rotated_3000() -> bytes:
    # What a recent phone sends: Display P3 profile, sensor turned (orientation 6).
    img = grain(square(sample("rocket"), 3000), *PHONE_GRAIN, seed=3).transpose(
        Image.Transpose.ROTATE_90
    )
    return jpeg(
        img,
        PHONE_QUALITY,
        icc_profile=matrix_profile(DISPLAY_P3_D50, "Display P3 (test)"),
        exif=with_orientation(img, 6),
    )


def phone_1024() -> bytes:
    return jpeg(grain(square(sample("rocket"), 1024), *PHONE_GRAIN, seed=4), PHONE_QUALITY)


def scan_cmyk_1500() -> bytes:
    # Separated as prepress software does it: black ink replaces the grey balance of the colour
    # inks (full GCR), so black and colour change together at every edge. (Pillow's own
    # RGB->CMYK leaves black empty, which makes averaging inks before converting look harmless.)
    rgb = np.asarray(grain(square(sample("astronaut"), 1500), 1.5, 0.5, seed=6), dtype=np.int16)
    cmy = 255 - rgb
    black = cmy.min(axis=2, keepdims=True)
    cmyk = np.concatenate([cmy - black, black], axis=2).astype(np.uint8)
    img = Image.fromarray(cmyk, "CMYK")
    return jpeg(img, 92, icc_profile=cmyk_profile(PRESS_INKS, "press (test)"))


def photo_512_png() -> bytes:
    return png(square(sample("astronaut"), 512))


def photo_2048_png() -> bytes:
    return png(grain(square(sample("chelsea"), 2048), 1.5, 0.5, seed=5))


def logo_1024_rgba_png() -> bytes:
    # A cut-out: the photo inside a soft-edged circle, transparent around it.
    img = square(sample("coffee"), 1024).convert("RGBA")
    yy, xx = np.mgrid[0:1024, 0:1024]
    dist = np.hypot(xx - 511.5, yy - 511.5)
    alpha = np.clip((480.0 - dist) * 8.0, 0, 255).astype(np.uint8)
    img.putalpha(Image.fromarray(alpha))
    return png(img)


def gray16_1024_png() -> bytes:
    gray = square(np.stack([sample("camera")] * 3, axis=-1), 1024).convert("L")
    wide = (np.asarray(gray, dtype=np.uint16) * 257).astype(np.uint16)
    return png(Image.fromarray(wide))


def palette_512_gif() -> bytes:
    img = square(sample("astronaut"), 512).quantize(256)
    out = io.BytesIO()
    img.save(out, "GIF")
    return out.getvalue()


def photo_1024_webp() -> bytes:
    out = io.BytesIO()
    grain(square(sample("coffee"), 1024), 2.0, 1.0, seed=6).save(out, "WEBP", quality=90)
    return out.getvalue()


FILES: dict[str, Callable[[], bytes]] = {
    "smooth-3000.jpg": smooth_3000,
    "phone-3000.jpg": phone_3000,
    "phone-p3-rot6-3000.jpg": phone_p3_rotated_3000,
    "phone-4000.jpg": phone_4000,
    "phone-1024.jpg": phone_1024,
    "scan-gcr-cmyk-1500.jpg": scan_cmyk_1500,
    "photo-512.png": photo_512_png,
    "photo-2048.png": photo_2048_png,
    "logo-rgba-1024.png": logo_1024_rgba_png,
    "gray16-1024.png": gray16_1024_png,
    "palette-512.gif": palette_512_gif,
    "photo-1024.webp": photo_1024_webp,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=CORPUS)
    parser.add_argument("--force", action="store_true", help="rebuild files that exist")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, make in FILES.items():
        path = args.out / name
        if path.exists() and not args.force:
            continue
        path.write_bytes(make())
        sys.stderr.write(f"corpus: {name} {path.stat().st_size / 1e6:.2f} MB\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
