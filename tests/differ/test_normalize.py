"""Decoding and parsing bodies, never raising on what a server sent."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
import zstandard

from shadowtap.differ import normalize
from shadowtap.differ.normalize import MAX_DECODED_BYTES, decode_content, header_map, parse_body


def test_header_map_lowercases_and_keeps_duplicates() -> None:
    assert header_map(((b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2 "), (b"X-A", b"\xe9"))) == {
        "set-cookie": ("a=1", "b=2"),
        "x-a": ("\xe9",),
    }


def test_every_coding_and_stacked_codings() -> None:
    raw = b'{"a": 1}'
    assert decode_content(gzip.compress(raw), "gzip") == (raw, True)
    assert decode_content(zlib.compress(raw), "deflate") == (raw, True)
    assert decode_content(zlib.compress(raw)[2:-4], "deflate") == (raw, True)  # raw deflate
    assert decode_content(brotli.compress(raw), "br") == (raw, True)
    assert decode_content(zstandard.ZstdCompressor().compress(raw), "zstd") == (raw, True)
    assert decode_content(brotli.compress(gzip.compress(raw)), "gzip, br") == (raw, True)
    assert decode_content(raw, "identity") == (raw, True)


def test_bad_or_unknown_coding_keeps_the_bytes() -> None:
    assert decode_content(b"junk", "gzip") == (b"junk", False)
    assert decode_content(b"junk", "compress") == (b"junk", False)


def test_bombs_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real bound is 64 MiB; a 1 MiB one exercises the same code without compressing 64 MiB.
    monkeypatch.setattr(normalize, "MAX_DECODED_BYTES", 1 << 20)
    zeros = b"\0" * ((1 << 20) + 1024)
    for coding, bomb in (
        ("gzip", gzip.compress(zeros, mtime=0)),
        ("br", brotli.compress(zeros, quality=1)),
        ("zstd", zstandard.ZstdCompressor().compress(zeros)),
    ):
        data, ok = decode_content(bomb, coding)
        assert not ok and data == bomb, coding
    assert MAX_DECODED_BYTES == 64 * 1024 * 1024


def test_parse_by_content_type_and_sniffing() -> None:
    assert parse_body(b'{"a": 1}', "application/json; charset=utf-8", None, False).value == {"a": 1}
    assert parse_body(b'{"a": 1}', "application/problem+json", None, False).kind == "json"
    assert parse_body(b'{"a": 1', "application/json", None, False).kind == "text"
    assert parse_body(b"\xff\xfe{", "application/json", None, False).kind == "binary"
    assert parse_body(b"a=1&a=2&b=", "application/x-www-form-urlencoded", None, False).value == {
        "a": ["1", "2"],
        "b": "",
    }
    assert parse_body(b"<p>x</p>", "text/html", None, False).kind == "text"
    assert parse_body(b"<x/>", "application/atom+xml", None, False).kind == "text"
    assert parse_body(b"\x89PNG", "image/png", None, False).kind == "binary"
    assert parse_body(b" [1, 2]", None, None, False).value == [1, 2]
    assert parse_body(b"plain", None, None, False).kind == "text"
    assert parse_body(b"", "application/json", None, False).kind == "empty"
    assert parse_body(b'{"a": 1}', "application/json", None, True).kind == "binary"  # truncated: bytes only
    assert parse_body(b"[" * 100_000, "application/json", None, False).kind == "text"  # too deep: not an error
