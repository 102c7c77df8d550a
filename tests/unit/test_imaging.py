"""The image pipeline on realistic files made here: orientation, colour, modes, formats, quality
against a float reference, and hostile input."""

from __future__ import annotations

import contextlib
import gc
import io
import random
import subprocess
import sys
import time
import tracemalloc

import pytest
from PIL import Image, ImageChops, ImageDraw

from resizer import budget, header, imaging
from resizer.errors import ImageDecodeError, InvalidImage
from resizer.models import Thumbnail
from tests.helpers import jpeg_scan_bomb
from tests.quality import (
    DISPLAY_P3_D50,
    SRGB_D50,
    cmyk_profile,
    gray_profile,
    matrix_profile,
    planes_of,
    psnr,
    reference,
)
from tests.unit.imaging_samples import (
    PRESS_INKS,
    STORED_FOR_ORIENTATION,
    UPRIGHT_QUADRANTS,
    close,
    encode,
    exif_with_orientation,
    photo,
    pixel,
    png_header_only,
    upright_quadrants,
)

MAX_PIXELS = 50_000_000


def decoded(thumb: Thumbnail) -> Image.Image:
    img = Image.open(io.BytesIO(thumb.data))
    img.load()
    return img


def thumbs(data: bytes) -> dict[int, Image.Image]:
    result = imaging.make_thumbnails(data)
    assert [t.size for t in result] == [64, 32]
    for t in result:
        img = decoded(t)
        assert img.size == (t.size, t.size)
        assert (img.format or "").lower() == t.format, "the format field must match the bytes"
    return {t.size: decoded(t) for t in result}


# --- header inspection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "expected"), [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif")]
)
def test_inspect_reads_format_and_size(fmt: str, expected: str) -> None:
    info = header.inspect(encode(photo(300), fmt), MAX_PIXELS)
    assert (info.format, info.width, info.height) == (expected, 300, 300)


def test_inspect_reads_the_header_only() -> None:
    # 3000x3000 declared, no pixel data at all: decoding would fail, the header check must not.
    header_only = png_header_only(3000, 3000)
    truncated = encode(photo(2000), "JPEG")[:2000]
    started = time.perf_counter()
    info = header.inspect(header_only, MAX_PIXELS)
    assert (info.width, info.height) == (3000, 3000)
    assert header.inspect(truncated, MAX_PIXELS).width == 2000
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is not an image at all" * 10, "supported format"),
        (encode(photo(64).resize((64, 48)), "PNG"), "square"),
        (png_header_only(8000, 8000), "over the limit"),
        (png_header_only(100_000, 100_000), "too many pixels"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "supported format"),
        (encode(photo(32), "PPM"), "supported format"),
    ],
    ids=["empty", "garbage", "not-square", "over-max-pixels", "bomb", "eps", "ppm"],
)
def test_inspect_rejects_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImage, match=message) as caught:
        header.inspect(data, MAX_PIXELS)
    assert caught.value.status == 422


def test_inspect_never_accepts_what_the_decoder_would_refuse() -> None:
    # RESIZER_MAX_PIXELS set above Pillow's bomb limit: the header check still says no, so the
    # client gets a 422 instead of a task that is bound to fail.
    side = 10_000  # 100 MP: past Pillow's 89 MP limit, under a generous 200 MP setting
    with pytest.raises(InvalidImage, match="over the limit"):
        header.inspect(png_header_only(side, side), 200_000_000)


def test_a_jpeg_of_too_many_scans_is_refused_before_it_is_decoded() -> None:
    """Each scan is a pass over the whole image, whatever its few bytes: a file of many is an
    hour of decoding in a few kilobytes, refused by the web (422) and by the worker alike."""
    own = jpeg_scan_bomb(256, 0).count(b"\xff\xda")  # the encoder's own progression
    over = jpeg_scan_bomb(256, budget.MAX_JPEG_SCANS + 1 - own)
    with pytest.raises(InvalidImage, match=r"has 101 scans, over the limit of 100") as caught:
        header.inspect(over, MAX_PIXELS)
    assert caught.value.status == 422
    with pytest.raises(ImageDecodeError, match="scans"):
        imaging.make_thumbnails(over)
    at_most = jpeg_scan_bomb(256, budget.MAX_JPEG_SCANS - own)
    assert header.inspect(at_most, MAX_PIXELS).width == 256
    assert [thumb.size for thumb in imaging.make_thumbnails(at_most)] == [64, 32]


def test_the_bytes_of_metadata_are_not_taken_for_scans() -> None:
    """A profile (or a thumbnail, or an MPO's second picture) may hold 0xFF 0xDA: only the
    first picture's own scans count. 8 MB of random profile holds some 130 such pairs."""
    out = io.BytesIO()
    Image.new("RGB", (64, 64)).save(out, "JPEG", icc_profile=b"\xff\xda" * 150)
    data = out.getvalue()
    data += data  # a second picture after the first's end, as an MPO has
    assert data.count(b"\xff\xda") > 2 * budget.MAX_JPEG_SCANS
    assert header.inspect(data, MAX_PIXELS).width == 64
    assert [thumb.size for thumb in imaging.make_thumbnails(data)] == [64, 32]


def test_output_format_and_content_type() -> None:
    assert header.output_format("jpeg") == "jpeg"
    assert header.output_format("mpo") == "jpeg"
    assert header.output_format("webp") == "webp"
    for other in ("gif", "tiff", "bmp", "avif", "png"):
        assert header.output_format(other) == "png"
    assert header.content_type("jpeg") == "image/jpeg"
    assert header.content_type("png") == "image/png"
    assert header.content_type("webp") == "image/webp"


# --- formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("JPEG", "jpeg"),
        ("PNG", "png"),
        ("WEBP", "webp"),
        ("GIF", "png"),
        ("TIFF", "png"),
        ("BMP", "png"),
        ("AVIF", "png"),
    ],
)
def test_output_is_the_input_format_where_pillow_writes_it_well(fmt: str, expected: str) -> None:
    result = imaging.make_thumbnails(encode(photo(200), fmt))
    assert [(t.size, t.format) for t in result] == [(64, expected), (32, expected)]
    for t in result:
        img = decoded(t)
        assert (img.format or "").lower() == expected
        assert img.size == (t.size, t.size)
        assert header.content_type(t.format) == Image.MIME[img.format or ""]


def test_multi_picture_jpeg_comes_out_as_jpeg() -> None:
    first, second = photo(200), photo(200, seed=3)
    data = encode(first, "MPO", save_all=True, append_images=[second])
    assert header.inspect(data, MAX_PIXELS).format == "mpo"
    assert [t.format for t in imaging.make_thumbnails(data)] == ["jpeg", "jpeg"]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_images_give_their_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (120, 120), c) for c in ((220, 20, 20), (20, 220, 20))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(io.BytesIO(data)) as check:
        assert getattr(check, "n_frames", 1) == 2, "the test file must really be animated"
    for img in thumbs(data).values():
        assert close(pixel(img.convert("RGB"), (img.width // 2,) * 2), (220, 20, 20), 6)


# --- orientation --------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied(fmt: str, orientation: int) -> None:
    upright = upright_quadrants(400)
    turn = STORED_FOR_ORIENTATION[orientation]
    stored = upright if turn is None else upright.transpose(turn)
    data = encode(stored, fmt, exif=exif_with_orientation(orientation), quality=95)
    for size, img in thumbs(data).items():
        q = size // 4
        corners = [(q, q), (size - q, q), (q, size - q), (size - q, size - q)]
        got = [pixel(img.convert("RGB"), xy) for xy in corners]
        for have, want in zip(got, UPRIGHT_QUADRANTS, strict=True):
            assert close(have, want, 12), (orientation, size, got)


def test_phone_photo_with_orientation_6_comes_out_upright_not_mirrored() -> None:
    upright = upright_quadrants(1200)
    data = encode(
        upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif_with_orientation(6)
    )
    img = thumbs(data)[64]
    assert close(pixel(img, (16, 16)), UPRIGHT_QUADRANTS[0], 12)  # red stays top-left
    assert close(pixel(img, (48, 16)), UPRIGHT_QUADRANTS[1], 12)  # green top-right: not mirrored


def test_broken_exif_is_ignored_not_fatal() -> None:
    good = encode(upright_quadrants(200), "JPEG")
    # An APP1 "Exif" segment whose TIFF header is garbage, right after SOI.
    junk = b"Exif\x00\x00MM\x00\x2a\xff\xff\xff\xff" + bytes(range(40))
    app1 = b"\xff\xe1" + (len(junk) + 2).to_bytes(2, "big") + junk
    img = thumbs(good[:2] + app1 + good[2:])[64]
    assert close(pixel(img, (16, 16)), UPRIGHT_QUADRANTS[0], 12)


def test_self_referencing_exif_does_not_hang() -> None:
    # The EXIF sub-IFD pointer (0x8769) points back at IFD0: a loop, as in some hostile files.
    ifd = (
        b"MM\x00\x2a\x00\x00\x00\x08"
        + b"\x00\x02"
        + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
        + b"\x87\x69\x00\x04\x00\x00\x00\x01\x00\x00\x00\x08"
        + b"\x00\x00\x00\x08"  # next IFD: itself again
    )
    junk = b"Exif\x00\x00" + ifd
    app1 = b"\xff\xe1" + (len(junk) + 2).to_bytes(2, "big") + junk
    good = encode(upright_quadrants(200), "JPEG")
    started = time.perf_counter()
    with contextlib.suppress(ImageDecodeError):
        imaging.make_thumbnails(good[:2] + app1 + good[2:])
    assert time.perf_counter() - started < 5


# --- colour -------------------------------------------------------------------------------


def _solid(mode: str, colour: tuple[int, ...], size: int = 160) -> Image.Image:
    return Image.new(mode, (size, size), colour)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_embedded_icc_profile_is_converted_to_srgb(fmt: str) -> None:
    # A profile whose primaries are sRGB's in another order: its "red" is sRGB's blue and so
    # on, so converting (200, 120, 40) must give (120, 40, 200). Ignoring it would keep the
    # colour as stored: the difference is unmistakable.
    permuted = matrix_profile((SRGB_D50[2], SRGB_D50[0], SRGB_D50[1]), "permuted")
    data = encode(_solid("RGB", (200, 120, 40)), fmt, icc_profile=permuted, quality=100)
    for img in thumbs(data).values():
        assert close(pixel(img, (img.width // 2,) * 2), (120, 40, 200), 3)


def test_display_p3_photo_keeps_grey_grey_and_desaturates_into_srgb() -> None:
    p3 = matrix_profile(DISPLAY_P3_D50, "P3")
    grey = thumbs(encode(_solid("RGB", (128, 128, 128)), "PNG", icc_profile=p3))[64]
    assert close(pixel(grey, (32, 32)), (128, 128, 128), 1)
    # P3's green is outside sRGB: in sRGB it is the most saturated green there is, with red
    # and blue at 0, whereas a P3 orange-ish (200, 100, 50) gets *more* red in sRGB.
    orange = thumbs(encode(_solid("RGB", (200, 100, 50)), "PNG", icc_profile=p3))[64]
    r, g, b = pixel(orange, (32, 32))
    assert r > 205, (r, g, b)
    assert g < 100, (r, g, b)
    assert b < 50, (r, g, b)


def test_cmyk_without_profile_uses_the_naive_conversion_browsers_use() -> None:
    data = encode(_solid("CMYK", (255, 0, 0, 0)), "JPEG", quality=100)
    assert header.inspect(data, MAX_PIXELS).format == "jpeg"
    img = thumbs(data)[64]
    assert img.mode == "RGB"
    assert close(pixel(img, (32, 32)), (0, 255, 255), 3)
    half = thumbs(encode(_solid("CMYK", (0, 0, 0, 128)), "TIFF"))[64]
    assert close(pixel(half, (32, 32)), (127, 127, 127), 2)


@pytest.mark.parametrize(
    ("cmyk", "srgb"),
    [
        ((255, 0, 0, 0), PRESS_INKS["C"]),
        ((0, 255, 0, 0), PRESS_INKS["M"]),
        ((0, 0, 0, 255), PRESS_INKS["K"]),
        ((0, 0, 0, 0), (255, 255, 255)),
    ],
)
def test_cmyk_with_profile_looks_like_the_press_inks(
    cmyk: tuple[int, int, int, int], srgb: tuple[int, int, int]
) -> None:
    profile = cmyk_profile(PRESS_INKS)
    for fmt in ("JPEG", "TIFF"):
        data = encode(_solid("CMYK", cmyk), fmt, icc_profile=profile, quality=100)
        img = thumbs(data)[64]
        assert img.mode == "RGB"
        assert close(pixel(img, (32, 32)), srgb, 4), (fmt, pixel(img, (32, 32)))


@pytest.mark.parametrize("size", [(8, 6), (7, 5)])
def test_cmyk_halves_are_the_diagonal_pixels_of_each_block_converted_then_averaged(
    size: tuple[int, int],
) -> None:
    """Each 2x2 block becomes the mean of its top-left and bottom-right pixels, each converted
    on its own; an odd last row or column has no bottom-right pixel, so its top-left stands."""
    width, height = size
    cmyk = Image.frombytes("CMYK", size, bytes(range(7, 7 + 4 * width * height)))
    halves = imaging._halves_to_srgb(cmyk, None)
    assert halves.size == ((width + 1) // 2, (height + 1) // 2)
    converted = imaging._to_srgb(cmyk, None)
    for y in range(halves.height):
        for x in range(halves.width):
            top_left = pixel(converted, (2 * x, 2 * y))
            inside = 2 * x + 1 < width and 2 * y + 1 < height
            bottom_right = pixel(converted, (2 * x + 1, 2 * y + 1)) if inside else top_left
            mean = tuple(round((a + b) / 2) for a, b in zip(top_left, bottom_right, strict=True))
            assert close(pixel(halves, (x, y)), mean, 1), (x, y)


def test_cmyk_that_needs_no_reduce_is_converted_whole() -> None:
    """Only a reduce by an even factor may convert half of the pixels: a CMYK image small enough
    for no reduce at all thumbnails exactly as its conversion to RGB does."""
    cmyk = Image.frombytes("CMYK", (100, 100), random.Random(7).randbytes(4 * 100 * 100))
    ours = thumbs(encode(cmyk, "TIFF"))
    expected = thumbs(encode(cmyk.convert("RGB"), "PNG"))
    for size in (64, 32):
        assert ImageChops.difference(ours[size], expected[size]).getbbox() is None, size


def test_malformed_icc_profile_is_ignored() -> None:
    data = encode(_solid("RGB", (200, 120, 40)), "PNG", icc_profile=b"\x00\x01garbage" * 20)
    assert close(pixel(thumbs(data)[64], (32, 32)), (200, 120, 40), 1)


# --- modes ---------------------------------------------------------------------------------------


def _cutout(mode: str = "RGBA") -> Image.Image:
    """An opaque red disc on a transparent background, soft edge."""
    img = Image.new("RGBA", (400, 400), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((60, 60, 340, 340), fill=(220, 30, 30, 255))
    return img.convert(mode)


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGBA"), ("WEBP", "RGBA"), ("PNG", "LA")])
def test_alpha_is_kept_when_the_format_carries_it(fmt: str, mode: str) -> None:
    for img in thumbs(encode(_cutout(mode), fmt)).values():
        assert img.mode == mode
        size = img.width
        assert pixel(img, (0, 0))[-1] == 0  # transparent corner
        centre = pixel(img, (size // 2, size // 2))
        assert centre[-1] == 255
        if mode == "RGBA":
            # Premultiplied resampling: no dark fringe leaks from the transparent black pixels.
            assert close(centre[:3], (220, 30, 30), 2)


def test_palette_with_transparency_keeps_alpha() -> None:
    data = encode(_cutout().convert("RGB").quantize(8), "GIF", transparency=0)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "P"
        assert "transparency" in check.info
    for img in thumbs(data).values():
        assert img.mode == "RGBA"
        assert "A" in img.getbands()


def test_alpha_is_composited_on_white_for_jpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    # No JPEG input has alpha, so route a transparent PNG to JPEG output to exercise the path.
    monkeypatch.setitem(header._ALIASES, "png", "jpeg")
    fmt, images = imaging.thumbnail_images(encode(_cutout(), "PNG"))
    assert fmt == "jpeg"
    for img in images:
        assert img.mode == "RGB"
        assert pixel(img, (0, 0)) == (255, 255, 255)  # white, never black
        assert close(pixel(img, (img.width // 2,) * 2), (220, 30, 30), 2)
    delivered = imaging.make_thumbnails(encode(_cutout(), "PNG"))
    assert close(pixel(decoded(delivered[0]), (0, 0)), (255, 255, 255), 2)


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    ramp = Image.linear_gradient("L").resize((256, 256))  # 0 at the top, 255 at the bottom
    wide = Image.new("I;16", ramp.size)
    wide.putdata([v * 257 for v in ramp.tobytes()])
    data = encode(wide, "PNG")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode.startswith("I")
    img = thumbs(data)[64]
    assert img.mode == "L"  # grayscale stays grayscale
    assert close(pixel(img, (32, 32)), pixel(ramp.resize((64, 64)), (32, 32)), 3)
    assert pixel(img, (32, 4))[0] < 30
    assert pixel(img, (32, 60))[0] > 225


def test_float_tiff_is_handled() -> None:
    ramp = Image.linear_gradient("L").resize((128, 128))
    data = encode(ramp.convert("F").point(lambda v: v / 255), "TIFF")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "F"
    img = thumbs(data)[64]
    assert img.mode == "L"
    assert close(pixel(img, (32, 32)), pixel(ramp.resize((64, 64)), (32, 32)), 3)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_grayscale_stays_grayscale(fmt: str) -> None:
    data = encode(photo(300).convert("L"), fmt)
    for img in thumbs(data).values():
        assert img.mode == "L" or (fmt == "WEBP" and _is_gray(img))


def _is_gray(img: Image.Image) -> bool:
    # WebP has no grayscale mode: gray is stored as YUV with neutral chroma, and decodes as RGB
    # whose channels differ by rounding only.
    r, g, b = img.convert("RGB").split()
    return all(_max_difference(x, y) <= 2 for x, y in ((r, g), (g, b)))


def _max_difference(a: Image.Image, b: Image.Image) -> int:
    high = ImageChops.difference(a, b).getextrema()[1]
    assert isinstance(high, int | float), high
    return int(high)


def test_one_bit_images_become_grayscale() -> None:
    img1 = Image.new("1", (200, 200), 0)
    ImageDraw.Draw(img1).rectangle((0, 0, 99, 199), fill=1)
    out = thumbs(encode(img1, "PNG"))[64]
    assert out.mode == "L"
    assert pixel(out, (10, 32)) == (255,)
    assert pixel(out, (54, 32)) == (0,)


def test_palette_images_are_filtered_in_rgb_not_nearest_neighbour() -> None:
    # One-pixel red/blue stripes: filtered, they average to purple; nearest-neighbour on the
    # palette would give pure red or pure blue.
    stripes = Image.new("RGB", (256, 256))
    draw = ImageDraw.Draw(stripes)
    for x in range(0, 256, 2):
        draw.line((x, 0, x, 255), fill=(255, 0, 0))
        draw.line((x + 1, 0, x + 1, 255), fill=(0, 0, 255))
    data = encode(stripes.quantize(2), "PNG")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "P"
    for img in thumbs(data).values():
        assert img.mode == "RGB"
        assert close(pixel(img, (img.width // 2,) * 2), (128, 0, 128), 4)


def test_gray_palette_stays_grayscale() -> None:
    data = encode(photo(200).convert("L").quantize(16), "GIF")
    assert thumbs(data)[64].mode == "L"


# --- quality against the float reference ---------------------------------------------------


def _photo_cutout(size: int) -> Image.Image:
    """A photo cut out along a hard-edged disc (the hardest case for alpha resampling)."""
    cut = _cutout().resize((size, size))
    return Image.composite(photo(size, seed=7).convert("RGBA"), cut, cut.getchannel("A"))


def _press_separation(img: Image.Image) -> Image.Image:
    """CMYK as a prepress tool separates it: grey balance replaced by black ink (full GCR), so
    black and the colour inks change together at every edge."""
    c, m, y, _ = img.convert("CMYK").split()
    k = ImageChops.darker(c, ImageChops.darker(m, y))
    return Image.merge("CMYK", [*(ImageChops.subtract(ink, k) for ink in (c, m, y)), k])


def _cases() -> dict[str, bytes]:
    p3 = matrix_profile(DISPLAY_P3_D50, "P3")
    phone = photo(2400, grain=8.0, seed=1)
    return {
        "grainy-phone-2400.jpg": encode(phone, "JPEG", quality=95),
        "phone-p3-rot6-1600.jpg": encode(
            photo(1600, grain=8.0, seed=2).transpose(Image.Transpose.ROTATE_90),
            "JPEG",
            quality=95,
            icc_profile=p3,
            exif=exif_with_orientation(6),
        ),
        "smooth-1000.jpg": encode(photo(1000, seed=3), "JPEG", quality=90),
        "odd-size-1000.jpg": encode(photo(1003, grain=4.0, seed=4), "JPEG", quality=92),
        "cmyk-scan-900.jpg": encode(
            photo(900, seed=5).convert("CMYK"),
            "JPEG",
            quality=95,
            icc_profile=cmyk_profile(PRESS_INKS),
        ),
        # Drafted to 375 px then reduced: averaging ink levels before converting costs 6 dB
        # here (40.4 dB, even when each ink is first straightened by its own curve).
        "gcr-scan-1500.jpg": encode(
            _press_separation(photo(1500, grain=8.0, seed=11)),
            "JPEG",
            quality=92,
            icc_profile=cmyk_profile(PRESS_INKS),
        ),
        "photo-700.png": encode(photo(700, grain=3.0, seed=6), "PNG"),
        "cutout-600.png": encode(
            Image.composite(
                photo(600, seed=7).convert("RGBA"),
                _cutout().resize((600, 600)),
                _cutout().resize((600, 600)).getchannel("A"),
            ),
            "PNG",
        ),
        "photo-600.webp": encode(photo(600, grain=3.0, seed=8), "WEBP", quality=90),
        "palette-500.gif": encode(photo(500, seed=9).quantize(256), "GIF"),
        "gray-600.png": encode(photo(600, seed=10).convert("L"), "PNG"),
    }


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_thumbnails_reach_the_quality_bar(name: str) -> None:
    data = CASES[name]
    fmt, pixels = imaging.thumbnail_images(data)
    delivered = imaging.make_thumbnails(data)
    for img, thumb in zip(pixels, delivered, strict=True):
        ref = reference(data, thumb.size)
        before = psnr(ref, planes_of(img))
        after = psnr(ref, planes_of(decoded(thumb)))
        assert before >= 42, f"{name} {thumb.size}px pixels: {before:.1f} dB"
        assert after >= 36, f"{name} {thumb.size}px {fmt} file: {after:.1f} dB"


def test_the_quality_yardstick_can_fail() -> None:
    # The same bar applied to a careless resize (nearest neighbour, no orientation): it must
    # fail, or the test above proves nothing.
    data = CASES["grainy-phone-2400.jpg"]
    with Image.open(io.BytesIO(data)) as img:
        careless = img.resize((64, 64), Image.Resampling.NEAREST)
    assert psnr(reference(data, 64), planes_of(careless)) < 36


# --- hostile input --------------------------------------------------------------------------


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8\xff",
        _truncated(encode(photo(600, grain=5.0), "JPEG")),
        _truncated(encode(photo(600, grain=5.0), "PNG")),
        _truncated(encode(photo(600, grain=5.0), "WEBP")),
        png_header_only(3000, 3000, idat=b"\x78\x9c" + b"\x00" * 50),
        b"GIF89a" + b"\xff" * 30,
        encode(photo(32), "PPM"),
        encode(photo(64).resize((64, 40)), "PNG"),
    ],
    ids=[
        "empty",
        "soi-only",
        "jpeg-half",
        "png-half",
        "webp-half",
        "png-no-data",
        "gif",
        "ppm",
        "not-square",
    ],
)
def test_undecodable_input_is_a_permanent_failure(data: bytes) -> None:
    with pytest.raises(ImageDecodeError) as caught:
        imaging.make_thumbnails(data)
    assert caught.value.message
    assert caught.value.status == 422


def test_declared_dimensions_past_pillows_limit_fail_fast() -> None:
    for side in (10_000, 20_000, 60_000):  # warning zone, error zone, far past it
        data = png_header_only(side, side)
        started = time.perf_counter()
        with pytest.raises(ImageDecodeError, match=r"too large|limit"):
            imaging.make_thumbnails(data)
        assert time.perf_counter() - started < 1


def test_png_text_chunk_bomb_is_rejected() -> None:
    import struct
    import zlib

    body = b"Comment\x00\x00" + zlib.compress(b"A" * 50_000_000, 9)
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body
    chunk += struct.pack(">I", zlib.crc32(b"zTXt" + body) & 0xFFFFFFFF)
    good = encode(photo(64), "PNG")
    data = good[:33] + chunk + good[33:]  # right after IHDR
    started = time.perf_counter()
    try:
        header.inspect(data, MAX_PIXELS)
        imaging.make_thumbnails(data)
    except (InvalidImage, ImageDecodeError):
        pass
    assert time.perf_counter() - started < 5


def test_wrong_extension_does_not_matter_content_decides() -> None:
    # Bytes carry no name: a PNG is a PNG whatever the client called it.
    data = encode(photo(128), "PNG")
    assert header.inspect(data, MAX_PIXELS).format == "png"
    assert imaging.make_thumbnails(data)[0].format == "png"


def test_deeply_nested_xmp_is_never_parsed() -> None:
    # 9000 levels of XML in an XMP packet: a recursive parser would blow its stack. The pipeline
    # reads only the orientation from EXIF, never XMP.
    nested = b"<a>" * 9000 + b"</a>" * 9000
    xmp = b"http://ns.adobe.com/xap/1.0/\x00" + nested
    app1 = b"\xff\xe1" + (len(xmp) + 2).to_bytes(2, "big") + xmp
    good = encode(upright_quadrants(200), "JPEG")
    img = thumbs(good[:2] + app1 + good[2:])[64]
    assert close(pixel(img, (16, 16)), UPRIGHT_QUADRANTS[0], 12)


def test_many_pages_cost_nothing_but_the_first() -> None:
    pages = [Image.new("RGB", (16, 16), (200, 30, 30))] + [Image.new("RGB", (16, 16))] * 600
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    started = time.perf_counter()
    img = thumbs(data)[64]
    assert time.perf_counter() - started < 1
    assert close(pixel(img, (32, 32)), (200, 30, 30), 2)


def test_icc_conversion_keeps_alpha() -> None:
    permuted = matrix_profile((SRGB_D50[2], SRGB_D50[0], SRGB_D50[1]), "permuted")
    data = encode(_solid("RGBA", (200, 120, 40, 128)), "PNG", icc_profile=permuted)
    for img in thumbs(data).values():
        assert img.mode == "RGBA"
        assert close(pixel(img, (img.width // 2,) * 2), (120, 40, 200, 128), 3)


def test_gray_icc_profile_is_converted_and_stays_gray() -> None:
    # A linear-light gray profile: stored 128 is half the light, which sRGB encodes as ~188.
    data = encode(_solid("L", (128,)), "PNG", icc_profile=gray_profile(1.0))
    for img in thumbs(data).values():
        assert img.mode == "L"
        assert close(pixel(img, (img.width // 2,) * 2), (188,), 3)


# --- the colour transform cache -------------------------------------------------------------

_PERMUTED = matrix_profile((SRGB_D50[2], SRGB_D50[0], SRGB_D50[1]), "permuted")


@pytest.fixture
def transforms(monkeypatch: pytest.MonkeyPatch) -> imaging._TransformCache:
    """An empty cache of 4 entries in place of the process's (other tests fill that one)."""
    cache = imaging._TransformCache(entries=4)
    monkeypatch.setattr(imaging, "_TRANSFORMS", cache)
    return cache


def test_a_profile_seen_again_reuses_its_transform(
    transforms: imaging._TransformCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    build = imaging._build_transform

    def counted(icc: bytes, mode: str) -> object:
        built.append(mode)
        return build(icc, mode)

    monkeypatch.setattr(imaging, "_build_transform", counted)
    for red in (200, 150, 100):
        data = encode(_solid("RGB", (red, 120, 40)), "PNG", icc_profile=_PERMUTED)
        assert close(pixel(thumbs(data)[64], (32, 32)), (120, 40, red), 3)
    assert built == ["RGB"]


def test_the_cache_is_bounded_and_keyed_by_the_profiles_digest(
    transforms: imaging._TransformCache,
) -> None:
    for n in range(10):
        # Distinct profiles, 50 KB each (a long description).
        profile = matrix_profile(SRGB_D50, f"profile {n} " + "x" * 50_000)
        thumbs(encode(_solid("RGB", (200, 120, 40), 64), "PNG", icc_profile=profile))
    keys = transforms.keys()
    assert len(keys) == transforms.entries
    assert all(len(digest) == 32 and mode == "RGB" for digest, mode in keys)


def test_junk_profiles_are_not_cached_and_hold_no_memory(
    transforms: imaging._TransformCache,
) -> None:
    # The case: JPEGs carrying distinct 8 MB junk profiles. A cache keyed by the bytes
    # kept every one of them (80 MB for ten).
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(10):
            junk = bytes([n]) * (8 * 2**20)
            data = encode(_solid("RGB", (200, 120, 40), 64), "JPEG", icc_profile=junk)
            assert close(pixel(thumbs(data)[64], (32, 32)), (200, 120, 40), 4)  # ignored
        del junk, data
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 2**20, held
    assert transforms.keys() == []


def test_a_profile_over_the_size_limit_is_converted_uncached(
    transforms: imaging._TransformCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imaging, "_MAX_CACHED_PROFILE_BYTES", len(_PERMUTED) - 1)
    data = encode(_solid("RGB", (200, 120, 40)), "PNG", icc_profile=_PERMUTED)
    assert close(pixel(thumbs(data)[64], (32, 32)), (120, 40, 200), 3)
    assert transforms.keys() == []


def test_the_web_imports_no_pixel_stack_and_pillow_only_with_its_first_image() -> None:
    # numpy and pyspng are the worker's alone; the web loads Pillow when an upload comes.
    check = (
        "import sys, resizer.api, resizer.header as h; s = sys.modules; "
        "print('numpy' in s, 'pyspng' in s, 'PIL' in s); "
        "h.inspect(bytes.fromhex(sys.argv[1]), 10**6); print('PIL' in s, 'numpy' in s)"
    )
    image = encode(_solid("RGB", (200, 120, 40)), "PNG").hex()
    out = subprocess.run(
        [sys.executable, "-c", check, image], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False", "False", "True", "False"]
    pipeline = check.replace("resizer.api", "resizer.imaging")
    out = subprocess.run(
        [sys.executable, "-c", pipeline, image], capture_output=True, text=True, check=True
    )
    assert out.stdout.split()[:3] == ["True", "True", "True"]  # the check above can tell


def test_a_multi_picture_jpeg_is_served_as_jpeg() -> None:
    from resizer import header

    assert header.content_type("mpo") == header.content_type("jpeg") == "image/jpeg"
    assert header.content_type("tiff") == "application/octet-stream"
