"""The streaming upload reader against the obvious reference: json.loads, then base64."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resizer.errors import BadRequest, InvalidImage, ResizerError
from resizer.upload import MAX_DEPTH, JsonUpload, RawUpload

_DATA_URL = re.compile(r"^\s*data:[\w.+/-]*(?:;[\w=.+-]+)*;base64,", re.IGNORECASE)


def reference(body: bytes) -> bytes:
    """What a reader holding the whole body would do (the service's behaviour before)."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("not JSON") from None
    if not isinstance(payload, dict):
        raise BadRequest("not an object")
    if not isinstance(payload.get("data"), str):
        raise BadRequest("data missing or not a string")
    text: str = payload["data"]
    if not text.isascii():
        raise InvalidImage("non-ASCII")
    raw = _DATA_URL.sub("", text, count=1).encode().translate(None, b" \t\r\n\x0b\x0c")
    if not raw:
        raise InvalidImage("empty")
    try:
        return binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error:
        raise InvalidImage("not base64") from None


def streamed(body: bytes, cuts: list[int]) -> bytes:
    reader = JsonUpload()
    start = 0
    for cut in sorted({c % (len(body) + 1) for c in cuts}):
        reader.feed(body[start:cut])
        start = cut
    reader.feed(body[start:])
    data, digest = reader.finish()
    assert digest == hashlib.sha256(data).hexdigest()
    return data


def outcome(run: object) -> tuple[str, bytes]:
    try:
        data = run()  # type: ignore[operator]
    except ResizerError as exc:
        return type(exc).__name__, b""
    return "ok", data


def wrap(text: str, width: int) -> str:
    """Line breaks every ``width`` characters, as ``base64`` writes them (escaped in JSON)."""
    return "\n".join(text[i : i + width] for i in range(0, len(text), width)) if width else text


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    image = draw(st.binary(max_size=300))
    text = base64.b64encode(image).decode()
    text = wrap(text, draw(st.sampled_from([0, 4, 76])))
    if draw(st.booleans()):
        text = "data:image/png;base64," + text
    if draw(st.integers(0, 9)) == 0:  # a broken one now and then
        text = text[: draw(st.integers(0, len(text)))] + draw(st.sampled_from(["=", "*", "é", ""]))
    other = draw(
        st.dictionaries(
            st.text(max_size=5).filter(lambda k: k != "data"),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=3), inner, max_size=3)
                ),
                max_leaves=8,
            ),
            max_size=3,
        )
    )
    payload = {**other, "data": text}
    if draw(st.booleans()):
        payload = dict(reversed(list(payload.items())))
    encoded = json.dumps(
        payload, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 2]))
    )
    if draw(st.booleans()):
        encoded = encoded.replace("/", "\\/")  # JSON may escape any solidus
    return encoded.encode()


@settings(max_examples=400, suppress_health_check=list(HealthCheck), deadline=None)
@given(body=bodies(), cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_streamed_reading_agrees_with_the_reference(body: bytes, cuts: list[int]) -> None:
    assert outcome(lambda: streamed(body, cuts)) == outcome(lambda: reference(body))


@settings(max_examples=400, suppress_health_check=list(HealthCheck), deadline=None)
@given(
    body=st.one_of(
        st.text(alphabet='{}[]":, \\0123456789abdtu', max_size=40).map(str.encode),
        st.binary(max_size=40),
    ),
    cuts=st.lists(st.integers(0, 50), max_size=4),
)
def test_arbitrary_bodies_get_the_references_kind_of_answer(body: bytes, cuts: list[int]) -> None:
    ours, theirs = outcome(lambda: streamed(body, cuts)), outcome(lambda: reference(body))
    if theirs[0] != "ok" or ours[0] != "ok":
        # Invalid UTF-8 inside the data string: a 400 for json.loads, a 422 for us (the bytes
        # are not base64 either way). Every other disagreement is a bug.
        assert ours[0] == theirs[0] or (ours[0], theirs[0]) == ("InvalidImage", "BadRequest")
    else:
        assert ours == theirs


@pytest.mark.parametrize("opener", [b"[", b'{"a":['])
def test_deep_nesting_is_a_400_not_a_crash(opener: bytes) -> None:
    reader = JsonUpload()
    with pytest.raises(BadRequest, match=r"nested deeper|JSON object"):
        reader.feed(opener + b"[" * 100_000)
    depth_ok = b'{"a":' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b', "data": "QUJD"}'
    assert streamed(depth_ok, []) == b"ABC"


def test_a_duplicate_data_field_is_refused() -> None:
    with pytest.raises(BadRequest, match="twice"):
        streamed(b'{"data": "QUJD", "data": "QUJD"}', [])


def test_fields_around_data_are_bounded() -> None:
    reader = JsonUpload()
    with pytest.raises(BadRequest, match="KiB"):
        reader.feed(b'{"padding": "' + b"x" * 100_000 + b'", "data": "QUJD"}')


def test_a_large_body_in_network_sized_chunks() -> None:
    image = bytes(range(256)) * 40_000  # 10 MB
    body = json.dumps({"data": base64.encodebytes(image).decode()}).encode()
    reader = JsonUpload()
    for start in range(0, len(body), 65_536):
        reader.feed(body[start : start + 65_536])
    data, digest = reader.finish()
    assert data == image
    assert digest == hashlib.sha256(image).hexdigest()


def test_raw_bodies_are_hashed_as_they_arrive() -> None:
    reader = RawUpload()
    for part in (b"\x89PNG", b"\r\n", b"rest"):
        reader.feed(part)
    assert reader.finish() == (b"\x89PNG\r\nrest", hashlib.sha256(b"\x89PNG\r\nrest").hexdigest())
    with pytest.raises(InvalidImage):
        RawUpload().finish()


def test_padding_ends_the_data_even_across_chunks() -> None:
    padded = base64.b64encode(b"x" * 301).decode()  # ends in "=="
    body = json.dumps({"data": padded + "QUJD"}).encode()
    assert outcome(lambda: reference(body))[0] == "InvalidImage"
    for cut in (len(body) - 8, len(body) - 6, len(body) - 4):
        assert outcome(lambda cut=cut: streamed(body, [cut]))[0] == "InvalidImage"


@pytest.mark.parametrize(
    "escaped",
    [
        "QU\\/J\\/\\/D\\u0045\\u0046",  # solidus escapes, as PHP writes them, and \u ones
        "QUJD\\nRUZH\\r\\nSElK",  # line breaks, escaped
        "QUJD\\u004",  # a \u escape cut short by the closing quote
        "QUJD\\\\",  # an escaped backslash: not base64
        "QUJD\\x41",  # not an escape JSON knows
        "QUJD\\u00e9",  # a letter past ASCII: not base64
    ],
)
def test_escapes_cut_at_every_byte_agree_with_the_reference(escaped: str) -> None:
    body = b'{"data": "' + escaped.encode() + b'"}'
    expected = outcome(lambda: reference(body))
    for cut in range(len(body) + 1):
        for second in (cut, cut + 1, cut + 3):
            run = functools.partial(streamed, body, [cut, second])
            assert outcome(run) == expected, (cut, second)


def test_a_string_of_escapes_is_decoded_whole_not_an_escape_at_a_time() -> None:
    """A 64 KiB chunk of escapes is one call to C's JSON string scanner: 32 MB of "\\/" held
    the event loop for 21 s when each escape was a step in Python."""
    import json.decoder

    calls = 0
    real = json.decoder.scanstring  # type: ignore[attr-defined]

    def counted(*args: object) -> object:
        nonlocal calls
        calls += 1
        return real(*args)

    body = b'{"data": "' + b"QUJD\\/" * 40_000 + b'"}'  # 240 KB: four 64 KiB chunks
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("resizer.upload.scanstring", counted)
        data = streamed(body, list(range(65536, len(body), 65536)))
    assert data == reference(body)
    assert calls <= 5


@pytest.mark.parametrize("cut", [0, 5, 16, 17, 500, 2001])
def test_whitespace_after_the_object_is_allowed_and_nothing_else(cut: int) -> None:
    body = b'{"data": "QUJD"}' + b" \r\n\t" * 500
    assert streamed(body, [cut]) == b"ABC"
    with pytest.raises(BadRequest, match="data after the object"):
        streamed(body + b"x", [cut])
