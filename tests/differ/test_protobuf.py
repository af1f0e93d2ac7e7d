"""Protobuf field trees: the schema-less reading of the wire format, conservative about nesting."""

from __future__ import annotations

import pytest

from shadowtap.differ import protobuf
from shadowtap.differ.protobuf import MAX_DEPTH, ProtobufDecodeError, decode_schemaless


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, wire_type: int, payload: bytes) -> bytes:
    return varint(number << 3 | wire_type) + payload


def ld(number: int, payload: bytes) -> bytes:
    return field(number, 2, varint(len(payload)) + payload)


def test_scalars_strings_bytes_and_repeats() -> None:
    data = (
        field(1, 0, varint(150))
        + field(2, 0, varint(2**64 - 1))  # a negative int64 on the wire
        + field(3, 1, (7).to_bytes(8, "little"))
        + field(4, 5, (9).to_bytes(4, "little"))
        + ld(5, b"hello world")
        + ld(6, b"\xff\xfe\x00")
        + ld(7, b"")
        + field(8, 0, varint(1))
        + field(8, 0, varint(2))
        + field(8, 0, varint(3))
        + field(20000, 0, varint(5))
    )
    assert decode_schemaless(data) == {
        "1": 150, "2": 2**64 - 1, "3": 7, "4": 9, "5": "hello world", "6": "//4A", "7": "", "8": [1, 2, 3],
        "20000": 5,
    }  # fmt: skip


def test_a_nested_message_only_when_it_parses_fully_and_is_not_text() -> None:
    inner = ld(1, b"EUR") + field(2, 0, varint(1299))
    assert decode_schemaless(ld(3, inner)) == {"3": {"1": "EUR", "2": 1299}}
    # "hi" parses as a message (field 13 = 105), but printable text is read as text.
    assert decode_schemaless(ld(1, b"hi")) == {"1": "hi"}
    # A cut-short inner field that is not UTF-8 either: bytes, as base64.
    assert decode_schemaless(ld(1, b"\x0a\x05\xffb")) == {"1": "CgX/Yg=="}
    # Valid UTF-8 with control characters that does not parse: the text it is.
    assert decode_schemaless(ld(1, b"\x01\x02")) == {"1": "\x01\x02"}
    repeated = ld(5, inner) + ld(5, inner)
    assert decode_schemaless(repeated) == {"5": [{"1": "EUR", "2": 1299}, {"1": "EUR", "2": 1299}]}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x08", "message ends inside a varint"),
        (b"\x0a\x05ab", "5 bytes announced, 2 left"),
        (b"\x0b\x0c", "wire type 3"),
        (b"\x00\x01", "field number 0"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes"),
        (b"\x0d\x01\x02", "32-bit value"),
        (b"\xf8\xff\xff\xff\xff\x01\x00", "out of range"),
    ],
)
def test_what_is_not_a_message_is_a_clear_error(data: bytes, error: str) -> None:
    with pytest.raises(ProtobufDecodeError, match=error):
        decode_schemaless(data)


def test_nesting_stops_at_the_depth_bound_without_recursing_further() -> None:
    data = ld(1, b"\x00end")
    for _ in range(MAX_DEPTH + 50):
        data = ld(1, data)
    tree = decode_schemaless(data)
    depth = 0
    node = tree
    while isinstance(node, dict):
        node = node["1"]
        depth += 1
    assert depth == MAX_DEPTH + 1  # past the bound the rest stays one value (its bytes)
    assert isinstance(node, str)


def test_the_memo_of_small_values_is_bounded() -> None:
    protobuf._MEMO.clear()
    for i in range(protobuf._MEMO_MAX_ENTRIES + 10):
        decode_schemaless(ld(1, b"\x00" + i.to_bytes(4, "big")))
    assert 0 < len(protobuf._MEMO) <= protobuf._MEMO_MAX_ENTRIES
    big = b"\x00" * (protobuf._MEMO_MAX_VALUE_BYTES + 1)
    decode_schemaless(ld(1, big))
    assert big not in protobuf._MEMO
