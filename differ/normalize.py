"""Turn a recorded response into something comparable: decoded body, parsed by content type.

Bodies are decoded from their Content-Encoding (gzip, deflate, br, zstd, in the order applied) and
parsed as JSON, form, text (HTML and XML included) or binary (hash and size). Header names are
lower-cased. Invalid JSON is compared as text; a body that cannot be decoded is compared as the
raw bytes it was. This module must never raise on response content and never compare anything.
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import parse_qsl

import brotli

from shadowtap.recorder.model import Headers

__all__ = [
    "MAX_DECODED_BYTES",
    "Body",
    "BodyDecodeError",
    "BodyKind",
    "decode_codings",
    "decode_content",
    "header_map",
    "parse_body",
]

#: ``invalid``: a body its content type promises a structure for, that does not have it (a gRPC body
#: whose framing or protobuf does not decode, ``shadowtap.differ.grpc``); ``value`` says why.
BodyKind = Literal["empty", "json", "form", "text", "binary", "invalid"]

#: Decoding stops past this size: a small compressed body can expand without limit (a zip bomb), and
#: one response must not be able to take the differ's memory.
MAX_DECODED_BYTES: Final = 64 * 1024 * 1024

_BROTLI_SLICE_BYTES: Final = 1024
_TEXT_TYPES: Final = ("text/", "application/xml", "application/javascript", "application/xhtml")


@dataclass(frozen=True, slots=True)
class Body:
    """A decoded body: ``value`` is the parsed JSON / form mapping / text (a protobuf message's field
    tree is ``json``), the reason for ``invalid``, ``None`` for binary/empty."""

    kind: BodyKind
    value: Any
    data: bytes


def header_map(headers: Headers) -> dict[str, tuple[str, ...]]:
    """Header values by lower-case name (latin-1 decoded, as HTTP/1.1 allows), duplicates kept in order."""
    out: dict[str, tuple[str, ...]] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        out[name] = (*out.get(name, ()), raw_value.decode("latin-1").strip())
    return out


class BodyDecodeError(ValueError):
    """A body could not be decoded from its content-encoding, or decoded past the size limit."""


def _bounded_zlib(data: bytes, wbits: int, limit_bytes: int) -> bytes:
    decoder = zlib.decompressobj(wbits)
    out = decoder.decompress(data, limit_bytes)
    if decoder.unconsumed_tail:
        raise BodyDecodeError(f"decoded body exceeds {limit_bytes} bytes")
    return out


def _decode_one(data: bytes, coding: str, limit_bytes: int) -> bytes:
    if coding in ("gzip", "x-gzip"):
        return _bounded_zlib(data, 16 + zlib.MAX_WBITS, limit_bytes)
    if coding == "deflate":
        try:
            return _bounded_zlib(data, zlib.MAX_WBITS, limit_bytes)
        except zlib.error:
            # Many servers send raw deflate without the zlib wrapper.
            return _bounded_zlib(data, -zlib.MAX_WBITS, limit_bytes)
    if coding == "br":
        # Brotli has no output cap: feed small slices and check the output after each.
        decoder = brotli.Decompressor()
        parts: list[bytes] = []
        size = 0
        for start in range(0, len(data), _BROTLI_SLICE_BYTES):
            part: bytes = decoder.process(data[start : start + _BROTLI_SLICE_BYTES])
            size += len(part)
            if size > limit_bytes:
                raise BodyDecodeError(f"decoded body exceeds {limit_bytes} bytes")
            parts.append(part)
        return b"".join(parts)
    if coding == "zstd":
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            out = reader.read(limit_bytes + 1)
        if len(out) > limit_bytes:
            raise BodyDecodeError(f"decoded body exceeds {limit_bytes} bytes")
        return bytes(out)
    if coding in ("identity", ""):
        return data
    raise BodyDecodeError(f"unknown content-encoding {coding!r}")


def decode_codings(data: bytes, codings: Sequence[str], limit_bytes: int) -> bytes:
    """Undo ``codings`` (in the order they were applied), never producing more than ``limit_bytes``.

    Raises ``BodyDecodeError`` for damaged data, an unknown coding, or output over the limit (a
    compression bomb in a tape must not exhaust memory).
    """
    decoded = data
    for coding in reversed(codings):
        try:
            decoded = _decode_one(decoded, coding, limit_bytes)
        except BodyDecodeError:
            raise
        except Exception as exc:
            # Each decoder has its own error type (zlib.error, brotli.error, ZstdError ...).
            raise BodyDecodeError(f"cannot decode {coding}: {exc}") from exc
    return decoded


def decode_content(data: bytes, content_encoding: str | None) -> tuple[bytes, bool]:
    """Undo ``content_encoding`` (``gzip, br`` means br was applied last); ``(bytes, decoded_ok)``.

    A body that cannot be decoded is compared as the bytes that were recorded.
    """
    if not content_encoding or not data:
        return data, True
    try:
        codings = [c.strip().lower() for c in content_encoding.split(",")]
        return decode_codings(data, codings, MAX_DECODED_BYTES), True
    except BodyDecodeError:
        return data, False


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _as_text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _parse_json(data: bytes) -> tuple[bool, Any]:
    try:
        return True, json.loads(data)
    except (ValueError, RecursionError):
        return False, None


def parse_body(data: bytes, content_type: str | None, content_encoding: str | None, truncated: bool) -> Body:
    """Decode and parse one body. A truncated body is only ever compared as bytes."""
    if not data:
        return Body("empty", None, b"")
    if truncated:
        return Body("binary", None, data)
    decoded, ok = decode_content(data, content_encoding)
    if not ok:
        return Body("binary", None, data)
    media = _media_type(content_type)
    if media == "application/json" or media.endswith("+json") or media == "text/json":
        parsed, value = _parse_json(decoded)
        if parsed:
            return Body("json", value, decoded)
        text = _as_text(decoded)
        return Body("text", text, decoded) if text is not None else Body("binary", None, decoded)
    if media == "application/x-www-form-urlencoded":
        text = _as_text(decoded)
        if text is None:
            return Body("binary", None, decoded)
        form: dict[str, Any] = {}
        for key, value in parse_qsl(text, keep_blank_values=True):
            previous = form.get(key)
            if previous is None:
                form[key] = value
            else:
                form[key] = [*(previous if isinstance(previous, list) else [previous]), value]
        return Body("form", form, decoded)
    if media.startswith(_TEXT_TYPES) or media.endswith("+xml"):
        text = _as_text(decoded)
        return Body("text", text, decoded) if text is not None else Body("binary", None, decoded)
    if media:
        return Body("binary", None, decoded)
    # No Content-Type: sniff, JSON first since APIs forget the header more than anyone.
    head = decoded.lstrip()[:1]
    if head in (b"{", b"["):
        parsed, value = _parse_json(decoded)
        if parsed:
            return Body("json", value, decoded)
    text = _as_text(decoded)
    return Body("text", text, decoded) if text is not None else Body("binary", None, decoded)
