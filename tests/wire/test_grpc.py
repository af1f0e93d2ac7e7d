"""gRPC message framing: split, incremental split, bounds, truncation and compression bombs."""

from __future__ import annotations

import gzip
import re
import zlib

import pytest

from shadowtap.wire.grpc import (
    GrpcFramingError,
    GrpcMessage,
    MessageSplitter,
    decompress_message,
    encode_message,
    split_messages,
)


def test_split_gives_each_message_with_its_flag() -> None:
    body = encode_message(b"\x0a\x02p1") + encode_message(b"", compressed=False) + encode_message(b"zz", True)
    assert split_messages(body) == [
        GrpcMessage(False, b"\x0a\x02p1"),
        GrpcMessage(False, b""),
        GrpcMessage(True, b"zz"),
    ]
    assert split_messages(b"") == []


@pytest.mark.parametrize(
    ("body", "error", "offset"),
    [
        (b"\x00\x00\x00", "truncated message prefix (3 of 5 bytes)", 0),
        (encode_message(b"abc") + b"\x00\x00\x00\x00\x09abc", "truncated message: 3 of 9 bytes", 8),
        (b"\x02\x00\x00\x00\x00", "reserved bits", 0),
        (b"\x00\x7f\xff\xff\xff", "exceeds the 4194304-byte bound", 0),
    ],
)
def test_a_bad_body_is_a_clear_error_with_its_offset(body: bytes, error: str, offset: int) -> None:
    with pytest.raises(GrpcFramingError, match=re.escape(error)) as info:
        split_messages(body)
    assert info.value.offset == offset


def test_the_splitter_takes_any_cut_of_the_body() -> None:
    messages = [bytes([i]) * i for i in range(40)]
    body = b"".join(encode_message(m, i % 3 == 0) for i, m in enumerate(messages))
    for step in (1, 2, 5, 7, 64, len(body)):
        splitter = MessageSplitter()
        got: list[GrpcMessage] = []
        for start in range(0, len(body), step):
            got += splitter.feed(body[start : start + step])
        splitter.end()
        assert [m.data for m in got] == messages
        assert [m.compressed for m in got] == [i % 3 == 0 for i in range(40)]


def test_the_splitter_refuses_a_long_message_before_buffering_it_and_a_cut_end() -> None:
    splitter = MessageSplitter(max_message_bytes=16)
    assert splitter.feed(encode_message(b"x" * 16)) == [GrpcMessage(False, b"x" * 16)]
    with pytest.raises(GrpcFramingError, match="exceeds the 16-byte bound") as info:
        splitter.feed(b"\x00\x00\x00\x00\x11")
    assert info.value.offset == 21
    cut = MessageSplitter()
    assert cut.feed(encode_message(b"abcdef")[:7]) == []
    assert cut.pending_bytes == 7
    with pytest.raises(GrpcFramingError, match="body ended inside a message"):
        cut.end()


def test_decompression_is_bounded() -> None:
    assert decompress_message(gzip.compress(b"hello"), "gzip") == b"hello"
    assert decompress_message(zlib.compress(b"hello"), "deflate") == b"hello"
    assert decompress_message(b"plain", "identity") == b"plain"
    bomb = gzip.compress(b"\x00" * (8 * 1024 * 1024))
    assert len(bomb) < 16 * 1024
    with pytest.raises(GrpcFramingError, match="compression bomb"):
        decompress_message(bomb, "gzip")
    with pytest.raises(GrpcFramingError, match="truncated"):
        decompress_message(gzip.compress(b"hello" * 100)[:20], "gzip")
    with pytest.raises(GrpcFramingError, match="cannot decompress"):
        decompress_message(b"not gzip at all", "gzip")
    with pytest.raises(GrpcFramingError, match="unsupported grpc-encoding 'snappy'"):
        decompress_message(b"x", "snappy")
