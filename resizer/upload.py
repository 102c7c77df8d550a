"""Reading an upload as it arrives: the JSON envelope, its base64, and the SHA-256, in one pass.

Sans-IO: the web layer feeds body chunks as they come off the socket and calls ``finish()`` at
the end. Each chunk costs time in proportion to its size (C-speed scans and decoding), so the
event loop never stalls on a large body and no helper process is needed. The decoded image is
held once, as the list of decoded slices, and joined once at the end.

JSON is checked as ``json.loads`` would check it: the part of the document that is not the
``data`` string (the *skeleton*, bounded in size) is kept and parsed at the end, and the ``data``
string itself is checked as it streams (escapes, control characters). A document nested deeper
than ``MAX_DEPTH`` is refused before anything is parsed, so no input can exhaust the stack.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Final

import pybase64

from resizer.errors import BadRequest, InvalidImage

MAX_DEPTH: Final = 32
MAX_SKELETON_BYTES: Final = 64 * 1024
"""The JSON around ``data`` (other fields, whitespace) is small in any honest request."""

_SHAPE = 'the body must be a JSON object like {"data": "<base64>"}'
_WHITESPACE: Final = b" \t\r\n\x0b\x0c"
_JSON_WHITESPACE: Final = frozenset(b" \t\r\n")
# What JSON forbids unescaped in a string. Searched for in short pieces only (or in one the
# decoding refused): a regex scans ~0.5 GB/s here, where bytes.find runs at memory speed.
_CONTROL: Final = re.compile(rb"[\x00-\x1f]")
_LARGE: Final = 4096
"""Pieces of the data string this long are decoded where they lie, without a search."""
_DATA_URL: Final = re.compile(rb"^data:[\w.+/-]*(?:;[\w=.+-]+)*;base64,", re.IGNORECASE)
_DATA_URL_MAX: Final = 256
_STRING_REST: Final = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
"""A JSON string's characters as far as they go: to its closing quote, or to the input's end."""


class RawUpload:
    """A body that is the image itself."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._hash = hashlib.sha256()

    def feed(self, chunk: bytes) -> None:
        self._parts.append(chunk)
        self._hash.update(chunk)

    def finish(self) -> tuple[bytes, str]:
        """The image and its SHA-256 (hex)."""
        data = b"".join(self._parts)
        self._parts.clear()
        if not data:
            raise InvalidImage("the body is empty: send the image's bytes")
        return data, self._hash.hexdigest()


class _Base64:
    """Strict base64, decoded in slices as it arrives; whitespace and a ``data:`` URL prefix
    tolerated (as ``base64`` wraps lines and browsers write data URLs).

    Large pieces straight from the JSON string are not searched for the control characters
    JSON forbids: the strict decoding refuses any character outside base64, so a piece that
    decodes has none, and only a piece that fails is searched (to answer 400, not 422).
    """

    def __init__(self) -> None:
        self._head = bytearray()  # the first characters, until we know if a prefix is there
        self._head_done = False
        self._pending = b""  # the characters not decoded yet: 4 to 7 of them, at most
        self._parts: list[bytes] = []
        self._hash = hashlib.sha256()
        self.error: InvalidImage | None = None

    def feed(self, text: bytes) -> None:
        """Characters an escape in the JSON string stands for (``\\n``, ``\\/``...)."""
        self._feed(text, raw=False)

    def feed_raw(self, text: bytes) -> None:
        """Characters straight from the JSON string, without quote or backslash: a control
        character among them makes the body invalid JSON (BadRequest)."""
        self._feed(text, raw=True)

    def _feed(self, text: bytes, raw: bool) -> None:
        if not text:
            return
        if self.error is not None or not text.isascii():
            _check_controls(text, raw)
            if self.error is None:
                self.error = InvalidImage('"data" is not base64: it has non-ASCII characters')
            return
        if not raw:
            text = text.translate(None, _WHITESPACE)
        elif b" " in text:  # the only whitespace JSON leaves unescaped in a string
            text = text.replace(b" ", b"")
        if not self._head_done:
            need = _DATA_URL_MAX - len(self._head)
            piece, text = text[:need], text[need:]
            _check_controls(piece, raw)
            self._head += piece
            if len(self._head) < _DATA_URL_MAX:
                return
            self._decode(self._take_head(), raw=False)
            self._feed(text, raw)  # the rest, now that the head is known
            return
        self._decode(text, raw)

    def _take_head(self) -> bytes:
        self._head_done = True
        head = bytes(self._head)
        self._head.clear()
        match = _DATA_URL.match(head)
        return head[match.end() :] if match else head

    def _decode(self, text: bytes, raw: bool) -> None:
        # The last quantum waits for the end: only then is its padding (or what follows it)
        # judged, exactly as one decode of the whole string would judge it.
        if len(text) < _LARGE:
            _check_controls(text, raw)
            text = self._pending + text
            usable = max(0, len(text) - len(text) % 4 - 4)
            self._pending = text[usable:]
            if usable:
                self._decode_span(text[:usable], b"", raw=False, text=b"")
            return
        # Large: decoded where it lies (no copy), after the few characters that complete the
        # quantum left pending.
        total = len(self._pending) + len(text)
        stop = total - total % 4 - 4 - len(self._pending)
        lead = -len(self._pending) % 4
        tail = text[stop:]
        _check_controls(tail, raw)
        head = self._pending + text[:lead]
        self._pending = tail
        self._decode_span(head, memoryview(text)[lead:stop], raw, text)

    def _decode_span(self, head: bytes, body: bytes | memoryview, raw: bool, text: bytes) -> None:
        """Decode ``head`` then ``body``: whole quanta that more characters follow."""
        last = bytes(body[-2:]) if body else head[-2:]
        if b"=" in last or (body and b"=" in head[-2:]):
            self.error = InvalidImage('"data" is not valid base64: Excess data after padding')
            return
        try:
            decoded = [binascii.a2b_base64(head, strict_mode=True)] if head else []
            if body:
                decoded.append(_decode_quanta(body))
        except binascii.Error as exc:
            _check_controls(text, raw)
            self.error = InvalidImage(f'"data" is not valid base64: {exc}')
            return
        for part in decoded:
            self._parts.append(part)
            self._hash.update(part)

    def finish(self) -> tuple[bytes, str]:
        if not self._head_done:
            self._decode(self._take_head(), raw=False)
        if self.error is None and self._pending:
            try:
                decoded = binascii.a2b_base64(self._pending, strict_mode=True)
            except binascii.Error as exc:
                self.error = InvalidImage(f'"data" is not valid base64: {exc}')
            else:
                self._parts.append(decoded)
                self._hash.update(decoded)
        if self.error is not None:
            raise self.error
        data = b"".join(self._parts)
        self._parts.clear()
        if not data:
            raise InvalidImage('"data" is empty')
        return data, self._hash.hexdigest()


def _decode_quanta(text: bytes | memoryview) -> bytes:
    """Whole base64 quanta without padding, strictly: SIMD (pybase64), ~25x binascii here.

    On such text both accept exactly the base64 alphabet; a refusal is decoded again by
    binascii for its message, the same as ever."""
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return binascii.a2b_base64(text, strict_mode=True)


def _whole_escapes(text: bytes) -> int:
    """How much of ``text`` (a JSON string's characters, from an escape on) holds only whole
    escapes: all of it, or up to an escape that its end cuts short (in its last 6 bytes)."""
    last = text.rfind(b"\\", max(0, len(text) - 6))
    if last < 0:
        return len(text)
    if (last - len(text[:last].rstrip(b"\\"))) % 2:
        return len(text)  # the second half of an escaped backslash
    needed = 6 if text[last + 1 : last + 2] in (b"u", b"") else 2
    return last if len(text) - last < needed else len(text)


def _check_controls(text: bytes, raw: bool) -> None:
    """A control character straight from a JSON string is a JSON error (escaped, it is not)."""
    if raw and _CONTROL.search(text):
        raise BadRequest("the body is not valid JSON: a control character in a string")


class JsonUpload:
    """A body ``{"data": "<base64>"}`` (other fields allowed and ignored)."""

    def __init__(self) -> None:
        self._skeleton = bytearray()
        self._depth = 0
        self._in_string = False  # in a string of the skeleton (a key or another field's value)
        self._escaped = False
        self._previous = ord(" ")  # the last byte outside strings that is not whitespace
        self._expect_data = False  # the next value belongs to the top-level key "data"
        self._key: bytearray | None = None  # the top-level key being read
        self._last_key: bytes | None = None
        self._in_data = False
        self._data_seen = False
        self._data_not_string = False
        self._escape = b""  # an escape in the data string cut by a chunk boundary
        self._base64 = _Base64()
        self._done = False  # the top-level object closed

    def feed(self, chunk: bytes) -> None:
        if self._escape:
            chunk, self._escape = self._escape + chunk, b""
        i, end = 0, len(chunk)
        while i < end:
            i = self._feed_data(chunk, i) if self._in_data else self._feed_skeleton(chunk, i)

    def _feed_data(self, chunk: bytes, i: int) -> int:
        end = len(chunk)
        quote = chunk.find(b'"', i)
        stop = end if quote < 0 else quote
        backslash = chunk.find(b"\\", i, stop)
        j = stop if backslash < 0 else backslash
        if j > i:
            self._base64.feed_raw(chunk[i:j])
        if j == end:
            return end
        if j == quote:
            return self._data_closed(quote)
        return self._feed_escaped(chunk, j)

    def _data_closed(self, quote: int) -> int:
        self._in_data = False
        self._skeleton += b'"'
        return quote + 1

    def _feed_escaped(self, chunk: bytes, start: int) -> int:
        """The data string from an escape on, to its closing quote or to the chunk's end.

        C's JSON string scanner decodes the escapes: a Python step for each let 32 MB of
        ``\\/`` hold the event loop for 21 s. An escape the chunk's end cuts waits for the next.
        """
        found = _STRING_REST.match(chunk, start)
        stop = found.end() if found else start
        closed = stop < len(chunk) and chunk[stop] == ord('"')
        if not closed:
            stop = start + _whole_escapes(chunk[start:])
            self._escape = chunk[stop:]
        text = chunk[start:stop].decode("latin-1")  # byte for byte: base64 is ASCII anyway
        try:
            value, _ = scanstring(f'"{text}"', 1, True)
        except ValueError:
            if _CONTROL.search(chunk, start, stop):
                raise BadRequest(
                    "the body is not valid JSON: a control character in a string"
                ) from None
            raise BadRequest("the body is not valid JSON: a bad escape in a string") from None
        # What \\u escapes name past Latin-1 is not base64: "?" fails the same way.
        self._base64.feed(value.encode("latin-1", "replace"))
        return self._data_closed(stop) if closed else len(chunk)

    def _feed_skeleton(self, chunk: bytes, i: int) -> int:
        """Walk the JSON outside the data string, one byte at a time (it is small)."""
        end = len(chunk)
        while i < end:
            if self._done:
                # Whitespace may follow the object, as much as the body holds: checked at once.
                if chunk[i:].translate(None, b" \t\r\n"):
                    raise BadRequest("the body is not valid JSON: data after the object")
                return end
            char = chunk[i]
            self._skeleton.append(char)
            if len(self._skeleton) > MAX_SKELETON_BYTES:
                raise BadRequest(
                    f'the JSON around "data" is over {MAX_SKELETON_BYTES // 1024} KiB: {_SHAPE}'
                )
            i += 1
            if self._in_string:
                if self._key is not None and not (char == ord('"') and not self._escaped):
                    self._key.append(char)
                if self._escaped:
                    self._escaped = False
                elif char == ord("\\"):
                    self._escaped = True
                elif char == ord('"'):
                    self._in_string = False
                    if self._key is not None:
                        self._last_key, self._key = self._decode_key(self._key), None
                continue
            if self._expect_data and char not in _JSON_WHITESPACE:
                self._expect_data = False
                if char == ord('"'):
                    if self._data_seen:
                        raise BadRequest('"data" appears twice in the body')
                    self._data_seen = self._in_data = True
                    self._previous = char
                    return i
                self._data_not_string = True
            if char in _JSON_WHITESPACE:
                continue
            previous, self._previous = self._previous, char
            if self._depth == 0 and char != ord("{"):
                raise BadRequest(f"the body is not valid JSON for this API: {_SHAPE}")
            if char == ord('"'):
                self._in_string = True
                # At the top level, a string that follows { or , is a key.
                if self._depth == 1 and previous in b"{,":
                    self._key = bytearray()
            elif char in b"{[":
                self._depth += 1
                if self._depth > MAX_DEPTH:
                    raise BadRequest(f"the body is nested deeper than {MAX_DEPTH} levels")
            elif char in b"}]":
                self._depth -= 1
                if self._depth == 0:
                    self._done = True
            elif char == ord(":") and self._depth == 1 and self._last_key == b"data":
                self._expect_data = True
        return i

    @staticmethod
    def _decode_key(raw: bytearray) -> bytes:
        if b"\\" not in raw:
            return bytes(raw)
        try:
            return str(json.loads(b'"' + raw + b'"')).encode()
        except ValueError:
            return bytes(raw)  # json.loads of the skeleton reports it at the end

    def finish(self) -> tuple[bytes, str]:
        """The image and its SHA-256 (hex); the JSON's errors (400) before the image's (422)."""
        if self._in_data or self._escape or not self._done:
            raise BadRequest("the body is not valid JSON: it ends before the object closes")
        try:
            payload = json.loads(self._skeleton)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise BadRequest(_SHAPE)
        if "data" not in payload:
            raise BadRequest('"data" must be a string of base64: required field missing')
        if self._data_not_string or not isinstance(payload["data"], str):
            raise BadRequest('"data" must be a string of base64')
        return self._base64.finish()
