"""The image pipeline: pure functions, bytes in, bytes out. Knows nothing of Redis or HTTP.

``make_thumbnails`` decodes once and produces every size (the worker's job). It imports the
pixel stack (numpy, pyspng and deflate, through ``pngdecode``); what the web process needs, reading
a header, lives in ``resizer.header``, which imports neither.

How a thumbnail is made, and why in this order (figures in BENCHMARKS.md):

0. The header says how much memory the decode will need (``budget.decode_bytes``); over the
   budget, the image is refused before any pixel is decoded.
1. JPEG shrinks on load (``draft``): libjpeg-turbo's scaled IDCT decodes at 1/2..1/8 of the size
   for a fraction of the cost. The scale is the smallest that keeps at least
   ``budget.JPEG_DRAFT_FACTOR`` times the largest target (1/8 for a 3000 px photo), which stays
   well above the quality bar. PNG has no shrink-on-load; the common PNGs (8-bit, not
   interlaced) are decoded faster than Pillow does by ``pngdecode``, the rest by Pillow.
2. The pixels are brought to one of RGB, RGBA, L, LA (8 bits) at whatever size the decoder gave;
   palettes become RGB(A) so they are filtered, not nearest-neighboured; 16-bit is scaled.
3. ``reduce()`` by the largest integer factor that leaves ``_REDUCING_GAP`` times the largest
   target (an exact box filter, very cheap), then colour conversion to sRGB on that reduced image.
   CMYK is the exception: its inks mix far from linearly, so littlecms converts it first, pixel
   by pixel (only half of them when a reduce by an even factor follows: ``_halves_to_srgb``).
4. One LANCZOS to the largest size; the smaller sizes come from that result for opaque images
   (cheapest, and well above the quality bar) and from the intermediate for images with alpha
   (through the 64, a hard-edged cut-out falls under the bar).
5. EXIF orientation is applied to each result: a pure permutation of pixels, so it commutes
   with the (symmetric, separable) resize and costs nothing at 64x64.
6. Alpha is composited on white only for JPEG, which cannot carry it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

from PIL import Image, ImageCms, ImageFile, UnidentifiedImageError

from resizer import budget, pngdecode
from resizer.errors import ImageDecodeError
from resizer.header import describe, open_image, output_format
from resizer.models import SIZES, Thumbnail

# reduce() is a box filter: exact and very fast, but it aliases when it does the whole job.
# Leaving LANCZOS at least this factor of the target keeps every corpus file >= 45 dB; a larger
# gap makes the 1/8 JPEG draft of a 3000 px photo skip reduce(2) and pay for a wider LANCZOS.
_REDUCING_GAP = 2.5

# At 64x64, JPEG's 4:2:0 chroma smears colour edges over a quarter of the image: 4:4:4 and a
# high quality are what it takes to reach the delivered-file bar (>= 36 dB); the files stay small.
_JPEG_QUALITY = 97
# Lossy WebP is always 4:2:0 and misses the bar at this size, even at quality 100; lossless WebP
# of a 64x64 is a few KB, and at the lowest effort it encodes ~40x faster for slightly larger files.
_WEBP_PARAMS = {"lossless": True, "quality": 0, "method": 0}

# As browsers and viewers render photos: perceptual, which maps a press gamut into sRGB smoothly.
_INTENT = ImageCms.Intent.PERCEPTUAL

_ORIENTATION_TAG = 0x0112
_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def make_thumbnails(
    data: bytes,
    sizes: tuple[int, ...] = SIZES,
    *,
    max_decode_bytes: int = budget.DEFAULT_MAX_DECODE_BYTES,
) -> list[Thumbnail]:
    """Decode once and produce one encoded thumbnail per size, largest first.

    Raises ImageDecodeError for any input that cannot be turned into thumbnails, including one
    whose decode would need more than ``max_decode_bytes``. The work is a deterministic function
    of the bytes, so any failure other than running out of memory would fail the same way on a
    retry: it is reported as permanent, with Pillow's reason.
    """
    fmt, images = thumbnail_images(data, sizes, max_decode_bytes=max_decode_bytes)
    try:
        return [Thumbnail(size=img.width, format=fmt, data=_encode(img, fmt)) for img in images]
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageDecodeError(f"the thumbnail could not be encoded: {describe(exc)}") from None


def thumbnail_images(
    data: bytes,
    sizes: tuple[int, ...] = SIZES,
    *,
    max_decode_bytes: int = budget.DEFAULT_MAX_DECODE_BYTES,
) -> tuple[str, list[Image.Image]]:
    """The thumbnails' pixels before encoding (RGB, RGBA, L or LA), largest first, and the
    format they are to be written in. Raises ImageDecodeError like ``make_thumbnails``."""
    wanted = sorted(set(sizes), reverse=True)
    if not wanted or wanted[-1] <= 0:
        raise ValueError(f"sizes must be positive, got {sizes!r}")
    try:
        return _thumbnail_images(data, wanted, max_decode_bytes)
    except (ImageDecodeError, MemoryError):
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image in a supported format") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"the image is too large to decode: {exc}") from None
    except Exception as exc:
        raise ImageDecodeError(f"the image could not be decoded: {describe(exc)}") from None


def _thumbnail_images(
    data: bytes, sizes: list[int], max_decode_bytes: int
) -> tuple[str, list[Image.Image]]:
    with open_image(data) as img:
        fmt = output_format((img.format or "").lower())
        width, height = img.size
        # Pillow's own bomb limit, as an error rather than a warning (warnings filters are
        # process-global and easily reset, so check it here instead of relying on them).
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and width * height > limit:
            raise ImageDecodeError(
                f"the image is {width}x{height} pixels, over the decoder's limit of {limit}"
            )
        if width <= 0 or width != height:
            # The web process checked this from the same header; a worker may still be handed
            # anything (an older API, a hand-queued task).
            raise ImageDecodeError(f"the image must be square and non-empty, got {width}x{height}")
        target = sizes[0]
        # The web process checked this too; a worker may still be handed a task that an older
        # API accepted, and a decode past the budget would take the worker down with it.
        refused = budget.refusal(budget.read_header(img, data), max_decode_bytes, target)
        if refused is not None:
            raise ImageDecodeError(refused)
        # The part of the decoded pixels that the original covers: shrinking by a factor that does
        # not divide the size leaves a partial last row and column, which must not be stretched.
        extent = float(width)
        if img.format in ("JPEG", "MPO"):
            wanted = budget.jpeg_draft_request(img.mode, target)
            drafted = img.draft(img.mode, (wanted, wanted))
            if drafted is not None:
                extent = drafted[1][2]
            _whole_file_at_once(img, data)
        # Most PNGs decode faster with our own decoder (pngdecode.py); the rest with Pillow.
        fast = pngdecode.decode(data) if img.format == "PNG" else None
        if fast is not None:
            decoded, orientation = fast.image, _orientation(functools.partial(_exif, fast.exif))
        else:
            # Reading the orientation after load() matters for PNG, where EXIF may follow the
            # pixels (and getexif() would otherwise decode the image a second time).
            img.load()
            decoded, orientation = img, _orientation(img.getexif)
        icc = img.info.get("icc_profile")
        work = _working_mode(decoded)
    profile = icc if isinstance(icc, bytes) else None
    # Colour profiles are not linear in the encoded values, so converting after averaging is not
    # the same as averaging after converting. For RGB profiles the difference is tiny and the
    # conversion runs on the reduced image (cheap); for CMYK it shifts colours by tens of levels,
    # so CMYK is converted before any filtering. Its conversion costs half as much as its draft
    # decode: when a reduce by an even factor follows, only half of its pixels are converted.
    factor = int(extent / (target * _REDUCING_GAP))
    if work.mode == "CMYK" and factor >= 2 and factor % 2 == 0:
        work, profile = _halves_to_srgb(work, profile), None
        factor //= 2
        extent /= 2
    elif work.mode == "CMYK":
        work, profile = _to_srgb(work, profile), None
    if factor > 1:
        work = work.reduce(factor)
        extent /= factor
    work = _to_srgb(work, profile)
    box = (0.0, 0.0, extent, extent)
    largest = work.resize((target, target), Image.Resampling.LANCZOS, box=box)
    # Opaque images: the smaller sizes come from the largest result, cheaper than from the
    # intermediate and >= 47 dB on the corpus. With alpha, the 8-bit premultiplied round trip
    # through the 64 costs too much on hard edges: from the intermediate.
    source = work if work.mode in ("RGBA", "LA") else largest
    source_box = box if source is work else None
    results = [largest]
    for size in sizes[1:]:
        results.append(source.resize((size, size), Image.Resampling.LANCZOS, box=source_box))
    if orientation in _TRANSPOSES:
        results = [thumb.transpose(_TRANSPOSES[orientation]) for thumb in results]
    if fmt == "jpeg":
        results = [_on_white(thumb) for thumb in results]
    return fmt, results


def _whole_file_at_once(img: ImageFile.ImageFile, data: bytes) -> None:
    """Have Pillow hand the JPEG decoder the whole file in one call (the bytes are in memory).

    By default it feeds 64 KB at a time, and each time a piece runs out libjpeg suspends and
    re-decodes the MCU it was in: 1-2% of a draft decode (12.5 -> 12.4 ms on a 3000 px smooth
    JPEG, 31.3 -> 30.8 ms on a grainy one). The benchmark's decode floor does the same.
    """
    img.decodermaxblock = max(img.decodermaxblock, len(data))


def _orientation(read_exif: Callable[[], Image.Exif]) -> int:
    try:
        value = read_exif().get(_ORIENTATION_TAG, 1)
    except Exception:
        # Broken EXIF is common (editors, truncation) and says nothing about the pixels, which
        # decoded fine: show them as stored, as browsers do.
        return 1
    return value if isinstance(value, int) else 1


def _exif(raw: bytes | None) -> Image.Exif:
    exif = Image.Exif()
    if raw:
        exif.load(raw)
    return exif


def _working_mode(img: Image.Image) -> Image.Image:
    """Bring any decoded mode to RGB, RGBA, L or LA (8 bits), keeping alpha and grayness.

    CMYK stays CMYK here: ``_to_srgb`` converts it with its ICC profile, if any.
    """
    mode = img.mode
    if mode in ("RGB", "RGBA", "L", "LA", "CMYK"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        if has_alpha:
            return img.convert("RGBA")
        return img.convert("L") if _palette_is_gray(img) else img.convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        # 16-bit samples (PNG, TIFF): scale to 8 bits. Pillow's own convert("L") clips at 255,
        # which would turn a 16-bit scan almost white.
        return img.convert("I").point(lambda v: v * (1 / 257)).convert("L")
    if mode == "F":
        # Floating-point TIFFs are conventionally 0..1; some tools write 0..255.
        _, high = img.getextrema()
        scale = 255.0 if isinstance(high, float) and high <= 1.0 else 1.0
        return img.point(lambda v: v * scale).convert("L")
    if mode in ("La", "RGBa"):
        return img.convert("RGBA" if mode == "RGBa" else "LA")
    if mode == "LAB":
        return ImageCms.applyTransform(img, _lab_to_srgb()) or img
    # RGBX, YCbCr, HSV and anything else Pillow can convert.
    return img.convert("RGB")


def _palette_is_gray(img: Image.Image) -> bool:
    palette = img.getpalette()
    if not palette:
        return False
    used = img.getcolors(256)
    indices: Iterable[int] = (
        (int(index) for _, index in used if isinstance(index, int))  # P pixels are indices
        if used
        else range(len(palette) // 3)
    )
    for index in indices:
        r, g, b = palette[index * 3 : index * 3 + 3]
        if not r == g == b:
            return False
    return True


def _to_srgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert to sRGB using the embedded profile; CMYK without a profile uses the naive formula.

    A profile that is malformed or does not match the pixels is ignored, as browsers do.
    """
    if icc:
        transform = _transform_for(icc, img.mode)
        if transform is not None:
            converted = ImageCms.applyTransform(img, transform)
            if converted is not None:
                # Only a grey profile converts an L image, to RGB: the result stays grey.
                img = converted.convert("L") if img.mode == "L" else converted
    if img.mode == "CMYK":
        # Pillow's CMYK->RGB is the multiplicative (255-C)(255-K)/255 that browsers use for
        # untagged CMYK.
        img = img.convert("RGB")
    return img


def _halves_to_srgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """``reduce(2)`` of the image's sRGB conversion, converting only half of its pixels: each
    2x2 block is the mean of its top-left and bottom-right pixels, each converted on its own.

    Those pixels are a quincunx lattice (every other one, staggered row to row): it loses only
    diagonal detail finer than the reduce keeps, and no inks are averaged.
    """
    width, height = img.size
    top_left = _to_srgb(_every_other(img, 0, ((width + 1) // 2, (height + 1) // 2)), icc)
    # An odd last column or row has no bottom-right pixels: there the top-left ones stand in.
    bottom_right = top_left.copy()
    bottom_right.paste(_to_srgb(_every_other(img, 1, (width // 2, height // 2)), icc))
    return Image.blend(top_left, bottom_right, 0.5)


def _every_other(img: Image.Image, offset: int, size: tuple[int, int]) -> Image.Image:
    """Pixel (x, y) of the result is pixel (2x + offset, 2y + offset) of ``img``."""
    # Nearest neighbour at the centre of each result pixel: source 2x + 1 + (offset - 1).
    return img.transform(size, Image.Transform.AFFINE, (2, 0, offset - 1, 0, 2, offset - 1))


class _TransformCache:
    """Colour transforms by the SHA-256 of their profile and the image mode, the least recently
    used dropped first. It holds no profile: a key is 32 bytes whatever the profile's size."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._transforms: OrderedDict[tuple[bytes, str], ImageCms.ImageCmsTransform] = OrderedDict()
        self._lock = threading.Lock()  # the worker decodes in a thread; tests and bench in many

    def get(self, key: tuple[bytes, str]) -> ImageCms.ImageCmsTransform | None:
        with self._lock:
            transform = self._transforms.get(key)
            if transform is not None:
                self._transforms.move_to_end(key)
            return transform

    def put(self, key: tuple[bytes, str], transform: ImageCms.ImageCmsTransform) -> None:
        with self._lock:
            self._transforms[key] = transform
            self._transforms.move_to_end(key)
            while len(self._transforms) > self.entries:
                self._transforms.popitem(last=False)

    def keys(self) -> list[tuple[bytes, str]]:
        with self._lock:
            return list(self._transforms)


# Building a transform takes up to 60 ms (a CMYK profile's 23^4 table) and images carry the same
# few profiles: worth caching. A CMYK transform holds ~1.5 MiB, hence few entries. Keys hold no
# profile, so large ones cost nothing to cache, and press profiles (several hundred KB to ~2 MB)
# must be: only profiles no real one reaches are converted uncached. Invalid or mismatched
# profiles are not cached: they cost a parse, and cannot push real transforms out.
_TRANSFORMS = _TransformCache(entries=16)
_MAX_CACHED_PROFILE_BYTES = 4 * 2**20


def _transform_for(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    if len(icc) > _MAX_CACHED_PROFILE_BYTES:
        return _build_transform(icc, mode)
    key = (hashlib.sha256(icc).digest(), mode)
    transform = _TRANSFORMS.get(key)
    if transform is None:
        transform = _build_transform(icc, mode)
        if transform is not None:
            _TRANSFORMS.put(key, transform)
    return transform


def _build_transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """The transform from ``icc`` to sRGB for an image in ``mode``, or None if the profile is
    malformed or is not for this kind of image."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = profile.profile.xcolor_space.strip()
        # littlecms has no gray+alpha layout in Pillow; gray ICC with alpha is rare enough to
        # keep as stored.
        expected = {"L": "GRAY", "RGB": "RGB", "RGBA": "RGB", "CMYK": "CMYK"}.get(mode)
        if expected is None or space != expected:
            return None
        return ImageCms.buildTransform(
            profile,
            _srgb(),
            mode,
            "RGBA" if mode == "RGBA" else "RGB",
            renderingIntent=_INTENT,
            # Transforms are cached and shared; without littlecms's one-pixel cache, applying one
            # is re-entrant, so threads may share it. For CMYK the default 17^4 table misses the
            # quality bar on saturated inks; the 23^4 one meets it at the same speed per pixel.
            flags=ImageCms.Flags.NOCACHE
            | (ImageCms.Flags.HIGHRESPRECALC if mode == "CMYK" else ImageCms.Flags.NONE),
        )
    except Exception:
        return None


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@functools.cache
def _lab_to_srgb() -> ImageCms.ImageCmsTransform:
    return ImageCms.buildTransform(ImageCms.createProfile("LAB"), _srgb(), "LAB", "RGB")


def _encode(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt == "jpeg":
        img.save(out, "JPEG", quality=_JPEG_QUALITY, subsampling=0)
    elif fmt == "webp":
        img.save(out, "WEBP", **_WEBP_PARAMS)
    else:
        img.save(out, "PNG", optimize=True)
    return out.getvalue()


def _on_white(img: Image.Image) -> Image.Image:
    if img.mode not in ("RGBA", "LA"):
        return img
    # JPEG has no alpha: composite on white, as a viewer shows a transparent image on a page.
    base_mode = "L" if img.mode == "LA" else "RGB"
    background = Image.new(base_mode, img.size, (255,) * len(base_mode))
    background.paste(img.convert(base_mode), mask=img.getchannel("A"))
    return background
