"""Property tests of the tape bytes: exact round trips, and no input crashes or hangs the reader."""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowtap.recorder import (
    Exchange,
    Failure,
    Request,
    Response,
    SyncTapeWriter,
    TapeFormatError,
    TapeOptions,
    TapeReader,
    Timing,
    _frames,
    exchange_to_wire,
)
from shadowtap.recorder import reader as reader_module
from tests.recorder.tape_samples import make_exchange

PLAIN = TapeOptions(redaction=None, fsync="none", compression="none")
names = st.text(min_size=1, max_size=8)
small_text = st.text(max_size=20)
headers = st.lists(st.tuples(st.binary(min_size=1, max_size=12), st.binary(max_size=30)), max_size=5).map(tuple)
maybe_int = st.none() | st.integers(min_value=0, max_value=2**63 - 1)
responses = st.builds(
    Response,
    status=st.integers(100, 599),
    reason=small_text,
    headers=headers,
    body=st.binary(max_size=200),
    http_version=st.sampled_from(["1.0", "1.1", "2"]),
    truncated_from=maybe_int,
)
outcomes = responses | st.builds(Failure, kind=small_text, message=small_text)
exchanges = st.builds(
    Exchange,
    id=small_text,
    started_at_ns=st.integers(min_value=0, max_value=2**63 - 1),
    request=st.builds(
        Request,
        method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
        target=small_text,
        headers=headers,
        body=st.binary(max_size=200),
        scheme=st.sampled_from(["http", "https"]),
        authority=small_text,
        http_version=st.sampled_from(["1.0", "1.1"]),
        truncated_from=maybe_int,
    ),
    primary=st.none() | outcomes,
    shadows=st.dictionaries(names, outcomes, max_size=3),
    timings=st.dictionaries(names, st.builds(Timing, maybe_int, maybe_int, maybe_int), max_size=3),
    started_mono_ns=st.integers(min_value=0, max_value=2**63 - 1),
    session=small_text,
    connection_id=small_text,
    client_addr=small_text,
    decisions=st.dictionaries(names, small_text, max_size=3),
    tags=st.dictionaries(names, small_text, max_size=3),
)


def packed(ex: Exchange) -> bytes:
    return msgpack.packb(exchange_to_wire(ex), use_bin_type=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(exchanges, min_size=1, max_size=5), st.sampled_from(["none", "zstd"]))
def test_any_exchange_round_trips_byte_exactly(batch: list[Exchange], compression: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        options = TapeOptions(redaction=None, fsync="none", compression=compression)  # type: ignore[arg-type]
        with SyncTapeWriter(directory, options) as writer:
            writer.write_many(batch)
        back = list(TapeReader(directory))
    assert back == batch
    assert [packed(e) for e in back] == [packed(e) for e in batch]


def frame_payload(parts: list[bytes]) -> bytes:
    """The payload of the one KIND_EXCHANGE frame ``FrameEncoder`` appended as three parts."""
    prefix, _crc, payload = parts
    assert len(prefix) + len(_crc) == _frames.FRAME_HEADER_SIZE
    return payload


@settings(max_examples=300, deadline=None)
@given(exchanges)
def test_the_fast_packer_writes_msgpacks_own_bytes(ex: Exchange) -> None:
    # Tapes written by ormsgpack must be the bytes msgpack would have written: the format is
    # msgpack's, and older tapes and other readers must not be able to tell the difference.
    parts: list[bytes] = []
    _frames.FrameEncoder().record_parts(exchange_to_wire(ex), parts, None)
    assert frame_payload(parts) == packed(ex)


def test_what_the_fast_packer_refuses_msgpack_still_encodes() -> None:
    # A record array from outside the model (an importer's) may hold what ormsgpack refuses but
    # msgpack takes, such as a dict keyed by bytes (ormsgpack takes str keys only). It is encoded
    # all the same; a bytearray body rides along and comes out as bytes.
    record = exchange_to_wire(make_exchange(1))
    record[3][3] = bytearray(b"from a buffer")
    record[11] = {b"raw-key": "v"}
    parts: list[bytes] = []
    _frames.FrameEncoder().record_parts(record, parts, None)
    assert frame_payload(parts) == msgpack.packb(record, use_bin_type=True)
    assert msgpack.unpackb(frame_payload(parts), raw=False, strict_map_key=False)[3][3] == b"from a buffer"


def sample_segment(options: TapeOptions = PLAIN, body: bytes = b'{"ok":true}') -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        with SyncTapeWriter(directory, options) as writer:
            writer.write_many(make_exchange(i, body=body) for i in range(4))
        (segment,) = Path(directory).glob("*.stape")
        return segment.read_bytes()


SAMPLE = sample_segment()
# One exchange per zstd block (each is over block_bytes), so truncation can lose one block at a time.
SAMPLE_ZSTD = sample_segment(
    TapeOptions(redaction=None, fsync="none", compression="zstd", block_bytes=1024), body=bytes(range(256)) * 5
)
SAMPLE_IDS = [f"ex-{i:06d}" for i in range(4)]


def read_bytes(data: bytes, salvage: bool = False) -> tuple[list[str], str | None]:
    """Ids read from a segment holding ``data``, and the error message if reading stopped."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "seg.stape"
        path.write_bytes(data)
        got: list[str] = []
        try:
            got.extend(e.id for e in TapeReader(path, salvage=salvage))
        except TapeFormatError as exc:
            assert exc.path == str(path)
            return got, str(exc)
        return got, None


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(SAMPLE)))
def test_truncation_anywhere_gives_the_complete_frames_before_it(cut: int) -> None:
    got, error = read_bytes(SAMPLE[:cut])
    assert error is None
    assert got == SAMPLE_IDS[: len(got)]
    frame_ends = []
    pos = _frames.SEGMENT_HEADER_SIZE
    while pos < len(SAMPLE):
        _s, _k, length, _c = _frames.FRAME_HEADER.unpack_from(SAMPLE, pos)
        pos += _frames.FRAME_HEADER_SIZE + length
        frame_ends.append(pos)
    assert len(got) == sum(1 for end in frame_ends if end <= cut)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=len(SAMPLE_ZSTD)))
def test_truncated_zstd_tape_gives_the_blocks_before_the_cut(cut: int) -> None:
    got, error = read_bytes(SAMPLE_ZSTD[:cut])
    assert error is None
    assert got == SAMPLE_IDS[: len(got)]
    assert (len(got) == 4) == (cut == len(SAMPLE_ZSTD))


def test_zstd_sample_has_one_block_per_exchange() -> None:
    blocks, pos = 0, _frames.SEGMENT_HEADER_SIZE
    while pos < len(SAMPLE_ZSTD):
        _s, kind, length, _c = _frames.FRAME_HEADER.unpack_from(SAMPLE_ZSTD, pos)
        assert kind == _frames.KIND_ZSTD_BLOCK
        pos += _frames.FRAME_HEADER_SIZE + length
        blocks += 1
    assert blocks == 4


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.booleans(), st.booleans())
def test_random_bytes_never_crash_or_hang(data: bytes, with_header: bool, salvage: bool) -> None:
    # Arbitrary bytes give a clean refusal or nothing (after a valid header: maybe a torn tail).
    if with_header:
        data = _frames.encode_segment_header() + data
    got, error = read_bytes(data, salvage)
    assert got == []
    if not with_header and not (len(data) < _frames.SEGMENT_HEADER_SIZE and _frames.MAGIC.startswith(data[:8])):
        assert error is not None and "bad magic" in error


flip = st.tuples(st.integers(min_value=_frames.SEGMENT_HEADER_SIZE, max_value=len(SAMPLE) - 1), st.integers(1, 255))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=_frames.SEGMENT_HEADER_SIZE, max_value=len(SAMPLE) - 1), st.integers(1, 255)),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
)
def test_random_damage_gives_valid_frames_or_a_clear_error(flips: list[tuple[int, int]], salvage: bool) -> None:
    data = bytearray(SAMPLE)
    for offset, mask in flips:
        data[offset] ^= mask
    got, error = read_bytes(bytes(data), salvage)
    # Whatever is returned is genuine: every id is one that was written, in order, no duplicates.
    assert got == [i for i in SAMPLE_IDS if i in got]
    if salvage:
        assert error is None


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=500), st.integers(min_value=0, max_value=4))
def test_garbage_between_frames_is_skipped_by_salvage(garbage: bytes, where: int) -> None:
    offsets = []
    pos = _frames.SEGMENT_HEADER_SIZE
    while pos < len(SAMPLE):
        offsets.append(pos)
        _s, _k, length, _c = _frames.FRAME_HEADER.unpack_from(SAMPLE, pos)
        pos += _frames.FRAME_HEADER_SIZE + length
    offsets.append(len(SAMPLE))
    at = offsets[where]
    got, error = read_bytes(SAMPLE[:at] + garbage + SAMPLE[at:], salvage=True)
    assert error is None
    assert got == SAMPLE_IDS


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(min_value=0, max_value=4), st.binary(min_size=1, max_size=300)), max_size=3),
    st.integers(min_value=1, max_value=64),
)
def test_salvage_across_tiny_read_chunks(insertions: list[tuple[int, bytes]], chunk_bytes: int) -> None:
    # Tiny chunks put frame and garbage boundaries across reads at every possible place.
    offsets = []
    pos = _frames.SEGMENT_HEADER_SIZE
    while pos < len(SAMPLE):
        offsets.append(pos)
        _s, _k, length, _c = _frames.FRAME_HEADER.unpack_from(SAMPLE, pos)
        pos += _frames.FRAME_HEADER_SIZE + length
    offsets.append(len(SAMPLE))
    cuts = sorted({offsets[where] for where, _ in insertions} | {0, len(SAMPLE)})
    garbage = {offsets[where]: junk for where, junk in insertions}
    data = b"".join(SAMPLE[a:b] + garbage.get(b, b"") for a, b in zip(cuts, cuts[1:], strict=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reader_module, "_CHUNK_BYTES", chunk_bytes)
        got, error = read_bytes(data, salvage=True)
        strict_got, _strict_error = read_bytes(data, salvage=False)
    assert error is None
    assert got == SAMPLE_IDS
    assert strict_got == SAMPLE_IDS[: len(strict_got)]
