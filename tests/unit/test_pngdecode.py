"""The fast PNG decoder gives exactly Pillow's pixels, or declines (None) and leaves the file to
Pillow: it may make a PNG faster, never different."""

from __future__ import annotations

import io
import os
import random
import struct
import zlib

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from resizer import imaging, pngdecode
from tests.unit.imaging_samples import encode, exif_with_orientation, photo, upright_quadrants

FUZZ = settings(
    # RESIZER_FUZZ_EXAMPLES=20000 for a long hunt, as in test_imaging_fuzz.py.
    max_examples=int(os.environ.get("RESIZER_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
COLOUR_TYPES = {"L": 0, "RGB": 2, "LA": 4, "RGBA": 6}


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], len(SIGNATURE)
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        out.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def assemble(parts: list[tuple[bytes, bytes]]) -> bytes:
    return SIGNATURE + b"".join(chunk(kind, body) for kind, body in parts)


def pillow_pixels(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.copy()


def sample(mode: str, size: int = 96, seed: int = 0) -> Image.Image:
    img = photo(size, grain=6.0, seed=seed)
    if mode in ("L", "LA"):
        img = img.convert("L")
    if mode in ("LA", "RGBA"):
        img = img.convert(mode)
        img.putalpha(Image.radial_gradient("L").resize((size, size)))
    return img


def paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def with_filters(img: Image.Image, filters: list[int], idat_size: int = 1000) -> bytes:
    """A PNG written by hand, row r filtered with filters[r % len(filters)] (PNG's five filter
    types: None, Sub, Up, Average, Paeth), its data split into IDAT chunks of idat_size."""
    bpp = CHANNELS[img.mode]
    raw = img.tobytes()
    stride = img.width * bpp
    previous = bytes(stride)
    rows = bytearray()
    for r in range(img.height):
        line = raw[r * stride : (r + 1) * stride]
        kind = filters[r % len(filters)]
        rows.append(kind)
        for i, x in enumerate(line):
            a = line[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            predictor = (0, a, b, (a + b) // 2, paeth(a, b, c))[kind]
            rows.append((x - predictor) & 0xFF)
        previous = line
    stream = zlib.compress(bytes(rows), 6)
    header = struct.pack(">IIBBBBB", img.width, img.height, 8, COLOUR_TYPES[img.mode], 0, 0, 0)
    idats = [(b"IDAT", stream[i : i + idat_size]) for i in range(0, len(stream), idat_size)]
    return assemble([(b"IHDR", header), *idats, (b"IEND", b"")])


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_every_filter_type_and_split_idat_give_pillows_pixels(mode: str) -> None:
    img = sample(mode, 61)  # odd width: rows are not a multiple of anything convenient
    data = with_filters(img, [0, 1, 2, 3, 4, 4, 3, 2, 1, 0])
    decoded = pngdecode.decode(data)
    assert decoded is not None
    assert decoded.image.mode == mode
    assert decoded.image.tobytes() == img.tobytes()
    assert decoded.image.tobytes() == pillow_pixels(data).tobytes()


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
@pytest.mark.parametrize("params", [{}, {"optimize": True}, {"compress_level": 0}])
def test_pillow_written_files_decode_to_the_same_pixels(
    mode: str, params: dict[str, object]
) -> None:
    # 400 px of grain: Pillow writes several IDAT chunks, with filters of its own choosing.
    data = encode(sample(mode, 400, seed=3), "PNG", **params)
    assert sum(kind == b"IDAT" for kind, _ in chunks(data)) > 1
    decoded = pngdecode.decode(data)
    assert decoded is not None
    want = pillow_pixels(data)
    assert (decoded.image.mode, decoded.image.size) == (want.mode, want.size)
    assert decoded.image.tobytes() == want.tobytes()


def test_a_thumbnail_is_the_same_whichever_decoder_made_the_pixels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = encode(sample("RGB", 700, seed=4), "PNG")
    fast = imaging.make_thumbnails(data)
    monkeypatch.setattr(pngdecode, "decode", lambda data: None)
    assert imaging.make_thumbnails(data) == fast


def palette_with_transparency() -> bytes:
    return encode(photo(64).quantize(16), "PNG", transparency=3)


def rgb_with_transparent_colour() -> bytes:
    return encode(photo(64), "PNG", transparency=(10, 20, 30))


def sixteen_bit() -> bytes:
    img = Image.new("I;16", (64, 64))
    img.putdata([(x * 1021) % 65536 for x in range(64 * 64)])
    return encode(img, "PNG")


def interlaced() -> bytes:
    parts = chunks(encode(photo(64), "PNG"))
    ihdr = parts[0][1][:12] + b"\x01"  # Adam7: the rows are stored in seven passes
    return assemble([(b"IHDR", ihdr), *parts[1:]])


def animated() -> bytes:
    frames = [photo(64, seed=s).convert("RGBA") for s in (1, 2)]
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:])


def imagemagick_exif() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", "\nexif\n      8\n45786966000049492a00\n")
    return encode(photo(64), "PNG", pnginfo=info)


def idat_interrupted() -> bytes:
    parts = chunks(with_filters(sample("RGB", 32), [4]))
    idats = [p for p in parts if p[0] == b"IDAT"]
    assert len(idats) > 1
    return assemble([parts[0], idats[0], (b"tEXt", b"Comment\0between"), *idats[1:], parts[-1]])


def truncated() -> bytes:
    data = with_filters(sample("RGB", 64), [4])
    return data[: len(data) // 2]


def grey_with_alpha() -> bytes:
    return with_filters(sample("LA", 32), [0, 1, 2, 3, 4])


def inflates_short() -> bytes:
    img = sample("RGB", 32)
    parts = chunks(with_filters(img, [1]))
    ihdr = struct.pack(">IIBBBBB", 32, 33, 8, 2, 0, 0, 0)  # one row more than the data holds
    return assemble([(b"IHDR", ihdr), *parts[1:]])


@pytest.mark.parametrize(
    "make",
    [
        palette_with_transparency,
        rgb_with_transparent_colour,
        sixteen_bit,
        grey_with_alpha,
        interlaced,
        animated,
        imagemagick_exif,
        idat_interrupted,
        truncated,
        inflates_short,
        lambda: encode(photo(64).convert("1"), "PNG"),
        lambda: encode(photo(64), "JPEG"),
        lambda: b"",
    ],
    ids=lambda make: getattr(make, "__name__", "other"),
)
def test_files_it_does_not_handle_are_left_to_pillow(make: object) -> None:
    assert callable(make)
    assert pngdecode.decode(make()) is None


def test_files_over_the_memory_cap_are_left_to_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(sample("RGB", 64), "PNG")
    assert pngdecode.decode(data) is not None
    monkeypatch.setattr(pngdecode, "MAX_INFLATED_BYTES", 64 * (1 + 64 * 3) - 1)
    assert pngdecode.decode(data) is None


def test_exif_after_the_pixels_still_orients_the_thumbnail() -> None:
    upright = upright_quadrants(200)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what orientation 6 undoes
    exif = exif_with_orientation(6).tobytes()
    parts = [p for p in chunks(encode(stored, "PNG")) if p[0] != b"eXIf"]
    moved = assemble([*parts[:-1], (b"eXIf", exif), parts[-1]])  # just before IEND
    decoded = pngdecode.decode(moved)
    assert decoded is not None
    assert decoded.exif == exif
    _, (big, _small) = imaging.thumbnail_images(moved)
    red = big.getpixel((16, 16))
    assert isinstance(red, tuple)
    # Red stays top-left once turned upright.
    assert red[0] > 200, red
    assert red[1] < 60, red


def _mutated_pngs() -> st.SearchStrategy[bytes]:
    seeds = [
        with_filters(sample("RGB", 40), [0, 1, 2, 3, 4], idat_size=300),
        encode(sample("RGBA", 48, seed=2), "PNG"),
        encode(sample("LA", 40, seed=5), "PNG", optimize=True),
    ]

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        rng = random.Random(draw(st.integers(0, 2**32)))
        for _ in range(draw(st.integers(1, 4))):
            if not data:
                break
            pos = rng.randrange(len(data))
            kind = rng.choice(["flip", "delete", "truncate", "insert"])
            if kind == "flip":
                data[pos] ^= 1 << rng.randrange(8)
            elif kind == "delete":
                del data[pos : pos + rng.randrange(1, 32)]
            elif kind == "insert":
                data[pos:pos] = rng.randbytes(rng.randrange(1, 16))
            else:
                del data[pos:]
        return bytes(data)

    return mutate()


@FUZZ
@given(_mutated_pngs())
def test_damaged_files_decode_as_pillow_does_or_are_left_to_it(data: bytes) -> None:
    decoded = pngdecode.decode(data)  # must not raise, whatever the bytes
    if decoded is None:
        event("left to Pillow")
        return
    try:
        want = pillow_pixels(data)
    except Exception:
        # Pillow checks chunk CRCs that this decoder does not; the pixels it returned still
        # came out of a complete, checksummed zlib stream.
        event("decoded; Pillow refused")
        return
    event("decoded by both: compared")
    assert decoded.image.tobytes() == want.tobytes()


@st.composite
def _rewritten_rows(draw: st.DrawFn) -> bytes:
    """Valid PNG files (right lengths, CRCs and checksums) around arbitrary row data: filter-type
    bytes, including invalid ones, and sample bytes, compressed at any level and split anywhere."""
    mode = draw(st.sampled_from(["L", "RGB", "RGBA"]))
    side = draw(st.integers(1, 24))
    stride = 1 + side * CHANNELS[mode]
    rows = bytearray(draw(st.binary(min_size=side * stride, max_size=side * stride)))
    kinds = [0, 1, 2, 3, 4] + ([5, 255] if draw(st.integers(0, 3)) == 0 else [])
    for r in range(side):
        rows[r * stride] = draw(st.sampled_from(kinds))
    stream = zlib.compress(bytes(rows), draw(st.integers(0, 9)))
    cut = draw(st.integers(1, max(1, len(stream))))
    header = struct.pack(">IIBBBBB", side, side, 8, COLOUR_TYPES[mode], 0, 0, 0)
    idats = [(b"IDAT", stream[:cut])] + ([(b"IDAT", stream[cut:])] if stream[cut:] else [])
    return assemble([(b"IHDR", header), *idats, (b"IEND", b"")])


@FUZZ
@given(_rewritten_rows())
def test_any_rows_decode_exactly_as_pillow_decodes_them(data: bytes) -> None:
    decoded = pngdecode.decode(data)
    try:
        want = pillow_pixels(data)
    except Exception:
        # Pillow refuses only what libpng refuses too (an unknown filter type): nothing here
        # is damaged otherwise.
        assert decoded is None
        event("refused by both")
        return
    assert decoded is not None
    event("decoded by both")
    assert decoded.image.mode == want.mode
    assert decoded.image.tobytes() == want.tobytes()
