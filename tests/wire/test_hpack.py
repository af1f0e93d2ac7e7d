"""The wire layer's HPACK codec against the ``hpack`` package (the reference both ways), RFC 7541's
examples, and the header blocks it must refuse."""

from __future__ import annotations

import random

import hpack
import hpack.exceptions
import pytest

from shadowtap.wire.hpack import Decoder, Encoder, huffman_decode


def _fields(rng: random.Random, count: int) -> list[tuple[bytes, bytes]]:
    names = [b":method", b":path", b":authority", b":scheme", b"content-type", b"user-agent", b"x-trace",
             b"grpc-status", b"te", b"cookie", b"x-" + bytes(rng.choice(b"abcdef") for _ in range(5))]  # fmt: skip
    out = []
    for _ in range(count):
        name = rng.choice(names)
        size = rng.choice((0, 1, 5, 20, 300))
        value = bytes(rng.randrange(0x20, 0x7F) for _ in range(size))
        if rng.random() < 0.3:
            value = rng.choice((b"GET", b"/", b"http", b"trailers", b"application/grpc", b"0"))
        out.append((name, value))
    return out


def test_blocks_round_trip_with_the_hpack_package_both_ways() -> None:
    rng = random.Random(7)
    ours, reference = Encoder(), hpack.Decoder()
    theirs, decoder = hpack.Encoder(), Decoder()
    for round_index in range(300):
        fields = _fields(rng, rng.randrange(1, 12))
        if round_index % 50 == 49:
            size = rng.choice((0, 256, 4096))
            ours.header_table_size = size
            reference.max_allowed_table_size = size
            theirs.header_table_size = size
            decoder.max_allowed_table_size = size
        assert [tuple(f) for f in reference.decode(ours.encode(fields), raw=True)] == fields
        assert decoder.decode(theirs.encode(fields, huffman=round_index % 2 == 0)) == fields


def test_repeated_fields_are_sent_as_indexes() -> None:
    encoder = Encoder()
    fields = [(b":method", b"POST"), (b"content-type", b"application/grpc"), (b"x-tenant", b"blue")]
    first = encoder.encode(fields)
    again = encoder.encode(fields)
    assert len(again) == 3 < len(first)
    decoder = Decoder()
    assert decoder.decode(first) == fields
    assert decoder.decode(again) == fields


def test_never_indexed_fields_stay_never_indexed() -> None:
    block = Encoder().encode([hpack.NeverIndexedHeaderTuple(b"authorization", b"secret")])
    assert block[0] & 0xF0 == 0x10
    (field,) = Decoder().decode(block)
    assert isinstance(field, hpack.NeverIndexedHeaderTuple) and tuple(field) == (b"authorization", b"secret")
    (field,) = hpack.Decoder().decode(block, raw=True)
    assert isinstance(field, hpack.NeverIndexedHeaderTuple)


def test_rfc_7541_request_examples_with_huffman() -> None:
    # RFC 7541 appendix C.4: three requests on one connection.
    decoder = Decoder()
    first = bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff")
    second = bytes.fromhex("828684be5886a8eb10649cbf")
    third = bytes.fromhex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf")
    assert decoder.decode(first) == [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                                     (b":authority", b"www.example.com")]  # fmt: skip
    assert decoder.decode(second)[-1] == (b"cache-control", b"no-cache")
    assert decoder.decode(third)[-1] == (b"custom-key", b"custom-value")


def test_huffman_of_every_byte_round_trips() -> None:
    data = bytes(range(256)) * 2
    block = hpack.Encoder().encode([(b"x", data)], huffman=True)
    assert Decoder().decode(block) == [(b"x", data)]
    assert huffman_decode(b"") == b""


def test_short_huffman_strings_are_decoded_once_per_connection_and_the_cache_stays_bounded() -> None:
    from shadowtap.wire import hpack as ours

    decoder = Decoder()
    # The same literal twice (each block from a fresh encoder, so not an index into the table).
    date = [(b"date", b"Sat, 05 Dec 2026 16:20:00 GMT")]
    assert decoder.decode(hpack.Encoder().encode(date, huffman=True)) == date
    kept = dict(decoder._huffman)
    assert b"Sat, 05 Dec 2026 16:20:00 GMT" in kept.values()
    assert decoder.decode(hpack.Encoder().encode(date, huffman=True)) == date
    assert decoder._huffman == kept
    # Many distinct values: the cache is cleared at its bound, every value still right.
    for i in range(3 * ours._HUFFMAN_CACHE):
        field = [(b"x-n", b"value-%d" % i)]
        assert decoder.decode(hpack.Encoder().encode(field, huffman=True)) == field
        assert len(decoder._huffman) <= ours._HUFFMAN_CACHE
    # A long string is decoded, not kept; an invalid one raises each time.
    long_value = [(b"x-long", b"v" * (2 * ours._HUFFMAN_CACHED_BYTES))]
    assert decoder.decode(hpack.Encoder().encode(long_value, huffman=True)) == long_value
    assert all(len(key) <= ours._HUFFMAN_CACHED_BYTES for key in decoder._huffman)
    for _ in range(2):
        with pytest.raises(hpack.exceptions.HPACKDecodingError):
            decoder.decode(b"\x00\x84\xff\xff\xff\xff\x01a")


@pytest.mark.parametrize(
    ("block", "error"),
    [
        (b"\x80", hpack.exceptions.InvalidTableIndexError),  # index 0
        (b"\xbe", hpack.exceptions.InvalidTableIndexError),  # index 62, empty dynamic table
        (b"\x00\x05ab", hpack.exceptions.HPACKDecodingError),  # a name past the end
        (b"\xff\xff\xff\xff\xff\xff\xff", hpack.exceptions.HPACKDecodingError),  # an integer that never ends
        (b"\xff" + b"\xff" * 8 + b"\x01", hpack.exceptions.HPACKDecodingError),  # an integer too large
        (b"\x82\x20", hpack.exceptions.HPACKDecodingError),  # a size update after a field
        (b"\x3f\xe2\x1f", hpack.exceptions.InvalidTableSizeError),  # a size above the allowed 4096
        (b"\x00\x81\x00\x01a", hpack.exceptions.HPACKDecodingError),  # Huffman padding of zeros
        (b"\x00\x84\xff\xff\xff\xff\x01a", hpack.exceptions.HPACKDecodingError),  # EOS in a string
    ],
)
def test_bad_blocks_are_refused_as_hpack_refuses_them(block: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        Decoder().decode(block)
    with pytest.raises(hpack.exceptions.HPACKDecodingError):
        hpack.Decoder().decode(block, raw=True)


def test_a_header_list_over_the_limit_is_refused() -> None:
    block = Encoder().encode([(b"x-big", b"v" * 200)] * 3)
    with pytest.raises(hpack.exceptions.OversizedHeaderListError):
        Decoder(max_header_list_size=500).decode(block)
    assert len(Decoder(max_header_list_size=800).decode(block)) == 3
