"""How report bodies are shown: decoded with a bound, classified, redacted, capped; never an exception."""

from __future__ import annotations

import gzip
import json
import zlib

import brotli
import pytest
import zstandard

from shadowtap.differ.reports._bodies import DECODE_LIMIT_BYTES, DISPLAY_LIMIT_CHARS, display_body, value_at
from shadowtap.recorder.model import Failure, Response

JSON_TYPE = (b"Content-Type", b"application/json")
DOC = {"id": 7, "items": [1, 2], "password": "hunter2"}
RAW = json.dumps(DOC).encode()


def encoded(coding: bytes) -> tuple[tuple[bytes, bytes], ...]:
    return (JSON_TYPE, (b"Content-Encoding", coding))


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        (b"gzip", gzip.compress(RAW, mtime=0)),
        (b"x-gzip", gzip.compress(RAW, mtime=0)),
        (b"deflate", zlib.compress(RAW)),
        (b"deflate", raw_deflate(RAW)),
        (b"br", brotli.compress(RAW)),
        (b"zstd", zstandard.ZstdCompressor().compress(RAW)),
        (b"gzip, br", brotli.compress(gzip.compress(RAW, mtime=0))),
        (b"identity", RAW),
    ],
)
def test_content_encodings_are_undone(coding: bytes, body: bytes) -> None:
    shown = display_body(encoded(coding), body)
    assert shown.kind == "json"
    assert shown.value == {"id": 7, "items": [1, 2], "password": "[redacted]"}
    assert shown.redacted
    assert shown.wire_bytes == len(body)
    assert shown.decoded_from == (None if coding == b"identity" else coding.decode())
    assert shown.note is None


def test_a_corrupt_encoding_is_shown_raw_with_a_note() -> None:
    shown = display_body(encoded(b"gzip"), b"\x1f\x8b not really gzip")
    assert shown.kind == "binary"
    assert shown.note is not None and shown.note.startswith("cannot decode gzip")
    shown = display_body(encoded(b"compress"), b"abc")
    assert shown.note == "unknown content-encoding 'compress'"


@pytest.mark.parametrize(
    ("coding", "bomb"),
    [
        (b"gzip", gzip.compress(b"\0" * (DECODE_LIMIT_BYTES * 8), mtime=0)),
        (b"deflate", zlib.compress(b"\0" * (DECODE_LIMIT_BYTES * 8))),
        (b"br", brotli.compress(b"\0" * (DECODE_LIMIT_BYTES * 8))),
        (b"zstd", zstandard.ZstdCompressor().compress(b"\0" * (DECODE_LIMIT_BYTES * 8))),
    ],
)
def test_decompression_stops_at_the_bound(coding: bytes, bomb: bytes) -> None:
    assert len(bomb) < DECODE_LIMIT_BYTES // 16
    shown = display_body(encoded(coding), bomb)
    assert shown.note == f"decoded body exceeds {DECODE_LIMIT_BYTES} bytes"
    assert shown.kind == "binary"
    assert len(shown.binary) == len(bomb)


def test_json_is_sniffed_and_invalid_json_is_text() -> None:
    assert display_body((), b' [1, {"a": null}]').kind == "json"
    invalid = display_body((JSON_TYPE,), b'{"a": 1,')
    assert (invalid.kind, invalid.text) == ("text", '{"a": 1,')
    nested = display_body((JSON_TYPE,), b'[{"token": ' * 300 + b'"t"' + b"}]" * 300)
    assert nested.kind == "json" and nested.redacted
    too_deep = display_body((JSON_TYPE,), b"[" * 100_000 + b"]" * 100_000)
    assert too_deep.kind == "text"


def test_text_is_capped_and_binary_summarised() -> None:
    big = display_body(((b"Content-Type", b"text/plain"),), b"x" * (DISPLAY_LIMIT_CHARS + 10))
    assert (big.kind, len(big.text), big.omitted_chars) == ("text", DISPLAY_LIMIT_CHARS, 10)
    blob = bytes(range(256)) * 600
    binary = display_body(((b"Content-Type", b"application/octet-stream"),), blob)
    assert binary.kind == "binary"
    assert binary.text.startswith(f"binary, {len(blob)} bytes, sha256 ")
    assert "00 01 02 03" in binary.text
    assert binary.binary == blob[:DISPLAY_LIMIT_CHARS]
    assert binary.omitted_chars == len(blob) - DISPLAY_LIMIT_CHARS
    assert display_body((), b"").kind == "empty"


def test_forms_are_redacted_and_recording_truncation_is_noted() -> None:
    form = display_body(((b"Content-Type", b"application/x-www-form-urlencoded"),), b"u=ann&password=p", 100)
    assert form.text == "u=ann&password=[redacted]"
    assert form.note == "recorded body was cut at 16 of 100 bytes"


def test_value_at_gives_short_redacted_values_for_every_path_form() -> None:
    response = Response(
        404,
        "Not Found",
        (JSON_TYPE, (b"Set-Cookie", b"s=1; Path=/"), (b"Vary", b"a"), (b"vary", b"b")),
        json.dumps({"error": {"code": "E1", "detail": "x" * 200}, "list": [10, 20]}).encode(),
    )
    assert value_at(response, "status") == "404"
    assert value_at(response, "header.vary") == "a, b"
    assert value_at(response, "header.set-cookie") == "s=[redacted]; Path=/"
    assert value_at(response, "header.etag") == "(absent)"
    assert value_at(response, "body.list[1]") == "20"
    assert value_at(response, "body.list[5]") == "(absent)"
    assert value_at(response, "body.error.code") == '"E1"'  # a secret name in a query, not in JSON
    assert len(value_at(response, "body.error.detail", 40)) == 40
    assert value_at(response, "something-else") == "HTTP 404"
    assert value_at(None, "status") == "(no response)"
    assert value_at(Failure("timeout", "2s"), "status") == "failure timeout: 2s"
    assert value_at(Response(204), "body") == "(empty)"


def test_multipart_bodies_are_redacted_by_field_name() -> None:
    body = (
        b"--b1\r\n"
        b'Content-Disposition: form-data; name="api_key"\r\n\r\n'
        b"k-123\r\n"
        b"--b1\r\n"
        b'Content-Disposition: form-data; name="comment"\r\n\r\n'
        b"hello\r\n"
        b"--b1--\r\n"
    )
    shown = display_body(((b"Content-Type", b"multipart/form-data; boundary=b1"),), body)
    assert shown.kind == "text" and shown.redacted
    assert "k-123" not in shown.text
    assert shown.text.startswith('--b1\r\nContent-Disposition: form-data; name="api_key"\r\n\r\n[redacted]\r\n--b1')
    assert "hello" in shown.text
