"""What the web process needs to know of an image: its format and size from the header, whether
its decode fits the budget, and the content type of its thumbnails.

Nothing of the pixel stack (numpy, pyspng, deflate): only the worker, through ``resizer.imaging``,
decodes pixels. Pillow itself loads with the first image read (``open_image``), not with this
module: its C core and plugins are a tenth of the web's start, and every request but an upload
does without them (docs/imaging.md).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from resizer import budget, preamble
from resizer.errors import InvalidImage
from resizer.models import ImageInfo

if TYPE_CHECKING:
    from PIL import ImageFile

# What we open. Pillow knows many more formats, but some of them hand the bytes to an external
# program (EPS runs Ghostscript) or are rarely seen outside exploits; a short list keeps the
# attack surface to well-fuzzed decoders. (Phones' multi-picture JPEGs open through "JPEG" and
# report themselves as "MPO".)
INPUT_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "AVIF")

# Formats Pillow writes well at thumbnail size; anything else comes out as PNG.
_OUTPUT_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
_ALIASES = {"mpo": "jpeg"}  # a multi-picture JPEG's first picture is a plain JPEG
_CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def inspect(
    data: bytes, max_pixels: int, max_decode_bytes: int = budget.DEFAULT_MAX_DECODE_BYTES
) -> ImageInfo:
    """Identify an image from its header: format and dimensions, no pixel decoding.

    Raises InvalidImage (a 422) for anything the worker would refuse: not an image we take, not
    square, over ``max_pixels``, or a decode needing more than ``max_decode_bytes``.
    """
    if not data:
        raise InvalidImage("the image is empty")
    from PIL import Image, UnidentifiedImageError

    try:
        with open_image(data) as img:
            fmt = (img.format or "").lower()
            width, height = img.size
            refused = budget.refusal(budget.read_header(img, data), max_decode_bytes)
    except InvalidImage:
        raise
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"the image has too many pixels: {exc}") from None
    except UnidentifiedImageError:
        raise InvalidImage(
            "not an image in a supported format (JPEG, PNG, WebP, GIF, TIFF, BMP, AVIF)"
        ) from None
    except Exception as exc:
        # A header parser fed hostile bytes can fail in any way (struct.error, IndexError...);
        # all of them mean the same thing to the client.
        raise InvalidImage(f"not an image Pillow can read: {describe(exc)}") from None
    if width <= 0 or height <= 0:
        raise InvalidImage(f"the image has no pixels ({width}x{height})")
    if width != height:
        raise InvalidImage(f"the image must be square, got {width}x{height}")
    # The worker's decoder refuses images past Pillow's bomb limit whatever RESIZER_MAX_PIXELS
    # says: refuse them here too, with a 422 now rather than a FAILED task later.
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    if width * height > limit:
        raise InvalidImage(
            f"the image is {width}x{height} = {width * height} pixels, over the limit of {limit}"
        )
    if refused is not None:
        raise InvalidImage(refused)
    return ImageInfo(format=fmt, width=width, height=height)


def open_image(data: bytes) -> ImageFile.ImageFile:
    """``data`` opened as one of ``INPUT_FORMATS``: its header read, no pixels decoded.

    Raises InvalidImage for a header that would take Pillow out of proportion to read
    (``resizer.preamble``).
    """
    if (refused := preamble.refusal(data)) is not None:
        raise InvalidImage(refused)
    # Image.open(formats=...) only knows plugins that were imported: import exactly these (not
    # Image.init(), which registers every format). AVIF's comes with the first file that may be
    # one: its decoder brings libavif and the C++ runtime, 1.2 MB of resident memory, for the
    # rarest of these formats.
    from PIL import (  # noqa: F401  (each registers itself)
        BmpImagePlugin,
        GifImagePlugin,
        Image,
        JpegImagePlugin,
        PngImagePlugin,
        TiffImagePlugin,
        WebPImagePlugin,
    )

    if data[4:8] == b"ftyp":  # an ISO media file, as every AVIF is
        from PIL import AvifImagePlugin  # noqa: F401  (it registers itself)
    # Asked for a format whose plugin is not loaded, Pillow loads every plugin it has.
    loaded = tuple(fmt for fmt in INPUT_FORMATS if fmt in Image.OPEN)
    return Image.open(io.BytesIO(data), formats=loaded)


def output_format(input_format: str) -> str:
    """The format a thumbnail is written in: the input's where Pillow writes it well, else PNG."""
    fmt = _ALIASES.get(input_format, input_format)
    return fmt if fmt in _OUTPUT_FORMATS else "png"


def content_type(fmt: str) -> str:
    """The media type of an image in ``fmt`` (a format as ``inspect`` or ``output_format``
    names it); a multi-picture JPEG is served as the JPEG it starts with."""
    return _CONTENT_TYPES.get(_ALIASES.get(fmt, fmt), "application/octet-stream")


def describe(exc: BaseException) -> str:
    """An exception as one short line for a client: its message, or its type."""
    text = str(exc).strip() or type(exc).__name__
    return text[:200]
