"""The tape reader: paths, filters, torn tails, corruption with file and offset, salvage, versions."""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from shadowtap.recorder import (
    ConfigError,
    InputFormatError,
    SyncTapeWriter,
    TapeFilter,
    TapeFormatError,
    TapeOptions,
    TapeReader,
    TapeVersionError,
    _frames,
    exchange_to_wire,
    tape_segments,
)
from shadowtap.recorder._segment import request_line
from shadowtap.recorder.reader import SegmentRange, frame_starts
from tests.recorder.tape_samples import BASE_NS, make_exchange

PLAIN = TapeOptions(redaction=None, fsync="none", compression="none")


def write_tape(directory: Path, count: int, options: TapeOptions = PLAIN) -> Path:
    with SyncTapeWriter(directory, options) as writer:
        writer.write_many(make_exchange(i) for i in range(count))
    (segment,) = sorted(directory.glob("*.stape"))
    return segment


def frame_offsets(segment: Path) -> list[int]:
    data = segment.read_bytes()
    offsets, pos = [], _frames.SEGMENT_HEADER_SIZE
    while pos < len(data):
        offsets.append(pos)
        _sync, _kind, length, _crc = _frames.FRAME_HEADER.unpack_from(data, pos)
        pos += _frames.FRAME_HEADER_SIZE + length
    return offsets


def ids(reader: TapeReader) -> list[str]:
    return [e.id for e in reader]


def test_reads_a_file_a_directory_a_glob_and_a_list(tmp_path: Path) -> None:
    a = write_tape(tmp_path / "a", 3)
    write_tape(tmp_path / "b", 2)
    assert len(ids(TapeReader(a))) == 3
    assert len(ids(TapeReader(tmp_path / "a"))) == 3
    assert len(ids(TapeReader(str(tmp_path / "*")))) == 5
    assert len(ids(TapeReader([tmp_path / "b", a]))) == 5
    assert tape_segments(str(tmp_path / "*" / "*.stape")) == sorted(tmp_path.glob("*/*.stape"))


def test_missing_path_and_empty_glob_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFormatError, match="no such tape") as info:
        TapeReader(tmp_path / "nope")
    assert info.value.path == str(tmp_path / "nope")
    with pytest.raises(InputFormatError, match="no files match"):
        TapeReader(str(tmp_path / "*.stape"))


def test_filters_by_time_window_method_and_path(tmp_path: Path) -> None:
    with SyncTapeWriter(tmp_path, PLAIN) as writer:
        for i in range(20):
            writer.write(
                make_exchange(i, method="POST" if i % 2 else "GET", path=f"/{'a' if i < 10 else 'b'}/{i}?x=/b/")
            )
    window = TapeFilter(since_ns=BASE_NS + 5_000_000, until_ns=BASE_NS + 8_000_000)
    assert ids(TapeReader(tmp_path, filter=window)) == ["ex-000005", "ex-000006", "ex-000007"]
    posts = TapeReader(tmp_path, filter=TapeFilter(methods=frozenset({"post"}), path_regex=r"^/b/"))
    assert ids(posts) == [f"ex-{i:06d}" for i in range(11, 20, 2)]


def test_bad_filter_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        TapeFilter(path_regex="(")
    assert info.value.field == "filter.path_regex"
    with pytest.raises(ConfigError):
        TapeFilter(since_ns=10, until_ns=5)


@pytest.mark.parametrize("cut", [1, 5, 11, 30, -1])
def test_truncated_last_frame_is_a_torn_tail_not_an_error(tmp_path: Path, cut: int) -> None:
    segment = write_tape(tmp_path, 5)
    last = frame_offsets(segment)[-1]
    data = segment.read_bytes()
    keep = last + cut if cut > 0 else len(data) + cut
    segment.write_bytes(data[:keep])
    reader = TapeReader(tmp_path)
    assert ids(reader) == [f"ex-{i:06d}" for i in range(4)]
    ((path, torn),) = reader.report.torn_tails
    assert path == str(segment)
    assert torn.offset == last
    assert torn.length == keep - last


def test_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    segment = write_tape(tmp_path, 3)
    size = segment.stat().st_size
    with segment.open("ab") as f:
        f.write(bytes(5000))
    reader = TapeReader(tmp_path)
    assert len(ids(reader)) == 3
    ((_, torn),) = reader.report.torn_tails
    assert (torn.offset, torn.length, torn.reason) == (size, 5000, "zero-filled tail")


def test_segment_with_an_incomplete_header_is_empty_and_torn(tmp_path: Path) -> None:
    (tmp_path / "seg-a.stape").write_bytes(_frames.MAGIC[:5])
    reader = TapeReader(tmp_path)
    assert ids(reader) == []
    assert reader.report.torn_tails[0][1].offset == 0


def corrupt_middle(tmp_path: Path) -> tuple[Path, int]:
    segment = write_tape(tmp_path, 6)
    offset = frame_offsets(segment)[2]
    data = bytearray(segment.read_bytes())
    data[offset + _frames.FRAME_HEADER_SIZE + 3] ^= 0xFF
    segment.write_bytes(bytes(data))
    return segment, offset


def test_corrupt_frame_in_the_middle_names_file_and_offset(tmp_path: Path) -> None:
    segment, offset = corrupt_middle(tmp_path)
    reader = TapeReader(tmp_path)
    seen: list[str] = []
    with pytest.raises(TapeFormatError) as info:
        seen.extend(e.id for e in reader)
    assert seen == ["ex-000000", "ex-000001"]
    assert (info.value.path, info.value.offset) == (str(segment), offset)
    assert f"{segment} at byte {offset}" in str(info.value)
    assert "checksum" in str(info.value) and "--salvage" in str(info.value)


def test_salvage_skips_to_the_next_valid_frame_and_reports_it(tmp_path: Path) -> None:
    segment, offset = corrupt_middle(tmp_path)
    next_frame = frame_offsets(segment)[3]
    reader = TapeReader(tmp_path, salvage=True)
    assert ids(reader) == ["ex-000000", "ex-000001", "ex-000003", "ex-000004", "ex-000005"]
    ((path, skipped),) = reader.report.skipped_ranges
    assert (path, skipped.offset, skipped.length) == (str(segment), offset, next_frame - offset)
    assert reader.report.torn_tails == []


def test_salvage_over_garbage_spanning_read_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shadowtap.recorder import reader as reader_module

    monkeypatch.setattr(reader_module, "_CHUNK_BYTES", 64)
    segment = write_tape(tmp_path, 4)
    offsets = frame_offsets(segment)
    data = segment.read_bytes()
    garbage = b"\xf5\x1d\x01" + bytes(range(256)) * 3  # starts like a frame, then nonsense
    segment.write_bytes(data[: offsets[2]] + garbage + data[offsets[2] :])
    reader = TapeReader(tmp_path, salvage=True)
    assert ids(reader) == [f"ex-{i:06d}" for i in range(4)]
    ((_, skipped),) = reader.report.skipped_ranges
    assert (skipped.offset, skipped.length) == (offsets[2], len(garbage))


def test_not_a_tape_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.stape").write_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(TapeFormatError, match="bad magic"):
        list(TapeReader(tmp_path))


def rewrite_version(segment: Path, version: int) -> None:
    data = segment.read_bytes()
    segment.write_bytes(_frames.encode_segment_header(0, version) + data[_frames.SEGMENT_HEADER_SIZE :])


def test_newer_version_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    segment = write_tape(tmp_path, 1)
    rewrite_version(segment, _frames.FORMAT_VERSION + 1)
    with pytest.raises(TapeVersionError, match="newer shadowtap") as info:
        list(TapeReader(tmp_path))
    assert info.value.path == str(segment)


def test_older_version_goes_through_the_migration_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    segment = write_tape(tmp_path, 2)
    rewrite_version(segment, _frames.FORMAT_VERSION - 1)
    monkeypatch.delitem(_frames.MIGRATIONS, _frames.FORMAT_VERSION - 1)
    with pytest.raises(TapeVersionError, match="no migration"):
        list(TapeReader(tmp_path))

    def tag_migrated(record: tuple[object, ...]) -> tuple[object, ...]:
        tags = dict(record[11])  # type: ignore[call-overload]
        tags["migrated"] = "yes"
        return (*record[:11], tags)

    monkeypatch.setitem(_frames.MIGRATIONS, _frames.FORMAT_VERSION - 1, tag_migrated)
    exchanges = list(TapeReader(tmp_path))
    assert [e.tags["migrated"] for e in exchanges] == ["yes", "yes"]


def test_unknown_optional_frame_kinds_are_skipped_required_ones_refused(tmp_path: Path) -> None:
    segment = write_tape(tmp_path, 2)
    data = segment.read_bytes()
    second = frame_offsets(segment)[1]
    optional = _frames.encode_frame(0x81, b"future metadata")
    segment.write_bytes(data[:second] + optional + data[second:])
    assert len(ids(TapeReader(tmp_path))) == 2
    segment.write_bytes(data[:second] + _frames.encode_frame(0x07, b"x") + data[second:])
    with pytest.raises(TapeFormatError, match="unknown frame kind 7") as info:
        list(TapeReader(tmp_path))
    assert info.value.offset == second


def test_checksummed_but_undecodable_record_is_an_error_or_salvaged(tmp_path: Path) -> None:
    segment = write_tape(tmp_path, 2)
    data = segment.read_bytes()
    bad = _frames.encode_frame(_frames.KIND_EXCHANGE, b"\x93\x01\x02\x03")
    segment.write_bytes(data + bad + data[_frames.SEGMENT_HEADER_SIZE :])
    with pytest.raises(TapeFormatError, match="malformed exchange record") as info:
        list(TapeReader(tmp_path))
    assert info.value.offset == len(data)
    reader = TapeReader(tmp_path, salvage=True)
    assert len(ids(reader)) == 4
    assert reader.report.skipped_ranges[0][1].offset == len(data)


def test_torn_zstd_block_loses_only_that_block(tmp_path: Path) -> None:
    options = TapeOptions(redaction=None, fsync="none", compression="zstd", block_bytes=2048)
    with SyncTapeWriter(tmp_path, options) as writer:
        writer.write_many(make_exchange(i, body=b"y" * 500) for i in range(30))
    (segment,) = sorted(tmp_path.glob("*.stape"))
    blocks = frame_offsets(segment)
    assert len(blocks) > 3
    segment.write_bytes(segment.read_bytes()[: blocks[-1] + 20])
    reader = TapeReader(tmp_path)
    got = ids(reader)
    assert got == [f"ex-{i:06d}" for i in range(len(got))]
    assert 20 <= len(got) < 30
    assert reader.report.torn_tails[0][1].offset == blocks[-1]


def test_report_counts_segments_frames_and_bytes(tmp_path: Path) -> None:
    segment = write_tape(tmp_path, 7)
    reader = TapeReader(tmp_path)
    assert reader.report.segments == []
    list(reader)
    (seg,) = reader.report.segments
    assert (seg.frames, seg.exchanges, seg.bytes, seg.version) == (7, 7, segment.stat().st_size, 2)


def test_header_layout_is_as_documented(tmp_path: Path) -> None:
    segment = write_tape(tmp_path, 1)
    data = segment.read_bytes()
    magic, version, flags, crc = struct.unpack_from("<8sHHI", data)
    assert (magic, version, flags) == (b"\x89STAPE\r\n", 2, 0)
    sync, kind, length, frame_crc = struct.unpack_from("<HBII", data, 16)
    assert (data[16:18], kind, len(data)) == (b"\xf5\x1d", 1, 16 + 11 + length)
    assert frame_crc == zlib.crc32(data[27:], zlib.crc32(data[16:23]))
    assert crc == zlib.crc32(data[:12])


def test_checksummed_but_undecodable_zstd_block_is_an_error_or_salvaged(tmp_path: Path) -> None:
    segment = write_tape(tmp_path, 2)
    data = segment.read_bytes()
    bad_block = _frames.encode_frame(_frames.KIND_ZSTD_BLOCK, b"not zstd at all")
    segment.write_bytes(data + bad_block)
    with pytest.raises(TapeFormatError, match="undecodable zstd block") as info:
        list(TapeReader(tmp_path))
    assert info.value.offset == len(data)
    reader = TapeReader(tmp_path, salvage=True)
    assert len(ids(reader)) == 2
    ((_, skipped),) = reader.report.skipped_ranges
    assert (skipped.offset, skipped.length) == (len(data), len(bad_block))


def test_zstd_block_holding_a_damaged_inner_frame_keeps_the_frames_before_it(tmp_path: Path) -> None:
    import zstandard

    inner = b"".join(
        _frames.encode_frame(
            _frames.KIND_EXCHANGE, msgpack.packb(exchange_to_wire(make_exchange(i)), use_bin_type=True)
        )
        for i in range(3)
    )
    damaged = inner[:-3] + bytes(b ^ 0xFF for b in inner[-3:])
    block = _frames.encode_frame(_frames.KIND_ZSTD_BLOCK, zstandard.ZstdCompressor().compress(damaged))
    (tmp_path / "seg.stape").write_bytes(_frames.encode_segment_header(_frames.FLAG_ZSTD) + block)
    reader = TapeReader(tmp_path, salvage=True)
    assert ids(reader) == ["ex-000000", "ex-000001"]
    assert "inside zstd block" in reader.report.skipped_ranges[0][1].reason


def test_damaged_segment_header_is_an_error_and_salvage_reads_on(tmp_path: Path) -> None:
    segment = write_tape(tmp_path, 3)
    data = bytearray(segment.read_bytes())
    data[10] ^= 0x01  # the flags: only the header checksum can tell
    segment.write_bytes(bytes(data))
    with pytest.raises(TapeFormatError, match="header checksum") as info:
        list(TapeReader(tmp_path))
    assert info.value.offset == 12
    reader = TapeReader(tmp_path, salvage=True)
    assert len(ids(reader)) == 3
    ((_, skipped),) = reader.report.skipped_ranges
    assert (skipped.offset, skipped.length) == (0, 16)


def test_small_read_chunks_give_the_same_exchanges(tmp_path: Path) -> None:
    """A caller on an event loop reads in small chunks; frames spanning chunk edges still decode."""
    tape = tmp_path / "t"
    exchanges = [make_exchange(i) for i in range(50)]
    with SyncTapeWriter(tape, TapeOptions(redaction=None, fsync="none")) as writer:
        writer.write_many(exchanges)
    assert list(TapeReader(tape, chunk_bytes=7)) == list(TapeReader(tape)) == exchanges
    with pytest.raises(ValueError, match="chunk_bytes"):
        TapeReader(tape, chunk_bytes=0)


# --- records with valid checksums but the wrong shape ---------------------------------------------


def plain_record(i: int) -> list[Any]:
    """The wire record of sample exchange ``i`` with every array a list, ready to be mutated."""

    def lists(value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [lists(v) for v in value]
        if isinstance(value, dict):
            return {k: lists(v) for k, v in value.items()}
        return value

    record: list[Any] = lists(exchange_to_wire(make_exchange(i)))
    return record


def write_records(directory: Path, records: list[Any], *, zstd: bool = False) -> Path:
    """A segment holding ``records`` as they are, each in a frame with a valid checksum."""
    directory.mkdir(parents=True, exist_ok=True)
    frames = b"".join(_frames.encode_frame(_frames.KIND_EXCHANGE, msgpack.packb(r, use_bin_type=True)) for r in records)
    if zstd:
        import zstandard

        frames = _frames.encode_frame(_frames.KIND_ZSTD_BLOCK, zstandard.ZstdCompressor().compress(frames))
    segment = directory / "seg-00000000T000000.000000Z-p1-000001.stape"
    segment.write_bytes(_frames.encode_segment_header(_frames.FLAG_ZSTD if zstd else 0) + frames)
    return segment


def _set(path: tuple[Any, ...], value: Any) -> Callable[[list[Any]], None]:
    def mutate(record: list[Any]) -> None:
        target: Any = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


#: Type mutations of a sample record, by the field the error must name. Each one crashed a
#: command with a traceback (or went through to the exporters) before records were validated.
MUTATIONS: dict[str, Callable[[list[Any]], None]] = {
    "request.headers[1][1]": _set((3, 2, 1, 1), "application/json"),
    "request.headers[0]": _set((3, 2, 0), {"Host": "api.local"}),
    "request.headers[2]": _set((3, 2, 2), [b"X-Dup"]),
    "request.headers": _set((3, 2), 7),
    "request.body": _set((3, 3), 5),
    "request.method": _set((3, 0), 5),
    "request.target": _set((3, 1), b"/users/1"),
    "request.truncated_from": _set((3, 7), "5"),
    "request": _set((3,), {"method": "GET"}),
    "primary.status": _set((4, 1), "200"),
    "primary.reason": _set((4, 2), 5),
    "primary.headers[0][0]": _set((4, 3, 0, 0), 1),
    "primary.body": _set((4, 4), 5),
    "primary.tag": _set((4, 0), "0"),
    "primary": _set((4,), "200 OK"),
    "shadows['v2'].status": _set((5, "v2", 1), True),
    "shadows['v3'].kind": _set((5, "v3", 1), 5),
    "shadows": _set((5,), [[0, 200]]),
    "timings['primary'].sent_ns": _set((6, "primary", 0), "10"),
    "timings['primary']": _set((6, "primary"), {"sent_ns": 10}),
    "timings": _set((6,), [[10, 200, 300]]),
    "id": _set((0,), 3),
    "started_at_ns": _set((1,), "2026-11-22T10:00:00Z"),
    "started_mono_ns": _set((2,), 1.5),
    "session": _set((7,), None),
    "decisions['v2']": _set((10, "v2"), 1),
    "decisions": _set((10,), [["v2", "mirrored"]]),
    "tags['source']": _set((11, "source"), ["test"]),
}


def mutated_record(field: str, i: int = 1) -> list[Any]:
    record = plain_record(i)
    MUTATIONS[field](record)
    return record


@pytest.mark.parametrize("field", MUTATIONS)
def test_a_record_of_the_wrong_shape_names_file_offset_and_field(tmp_path: Path, field: str) -> None:
    segment = write_records(tmp_path, [plain_record(0), mutated_record(field), plain_record(2)])
    bad_offset = frame_offsets(segment)[1]
    seen: list[str] = []
    with pytest.raises(TapeFormatError) as info:
        seen.extend(e.id for e in TapeReader(tmp_path))
    assert seen == ["ex-000000"]
    error = info.value
    assert (error.path, error.offset, error.field) == (str(segment), bad_offset, field)
    assert f"{segment} at byte {bad_offset}, field {field!r}: malformed exchange record" in str(error)
    assert "--salvage" in str(error)


@pytest.mark.parametrize("field", MUTATIONS)
def test_salvage_skips_a_record_of_the_wrong_shape_and_reports_it(tmp_path: Path, field: str) -> None:
    segment = write_records(tmp_path, [plain_record(0), mutated_record(field), plain_record(2)])
    offsets = frame_offsets(segment)
    reader = TapeReader(tmp_path, salvage=True)
    assert ids(reader) == ["ex-000000", "ex-000002"]
    ((path, skipped),) = reader.report.skipped_ranges
    assert (path, skipped.offset, skipped.length) == (str(segment), offsets[1], offsets[2] - offsets[1])
    assert field in skipped.reason


def test_a_record_of_the_wrong_shape_inside_a_zstd_block(tmp_path: Path) -> None:
    records = [plain_record(0), mutated_record("request.headers[1][1]"), plain_record(2)]
    segment = write_records(tmp_path, records, zstd=True)
    with pytest.raises(TapeFormatError) as info:
        list(TapeReader(tmp_path))
    error = info.value
    assert (error.path, error.offset, error.field) == (
        str(segment),
        _frames.SEGMENT_HEADER_SIZE,
        "request.headers[1][1]",
    )
    assert "block byte" in error.message
    reader = TapeReader(tmp_path, salvage=True)
    assert ids(reader) == ["ex-000000", "ex-000002"]
    assert "request.headers[1][1]" in reader.report.skipped_ranges[0][1].reason


# --- byte ranges: several readers sharing one segment ------------------------------------------


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_ranges_cut_at_frame_starts_read_each_exchange_once(tmp_path: Path, compression: str) -> None:
    options = TapeOptions(redaction=None, fsync="none", compression=compression)  # type: ignore[arg-type]
    with SyncTapeWriter(tmp_path, options) as writer:
        # Bodies that hold frame-like bytes: a reader starting at a frame never looks for one.
        writer.write_many(make_exchange(i) for i in range(400))
    (segment,) = sorted(tmp_path.glob("*.stape"))
    size = segment.stat().st_size
    starts = frame_offsets(segment)
    wanted = [size // 5, size // 2, size // 2 + 1, 4 * size // 5, size - 1]
    cuts = frame_starts(segment, wanted)
    assert cuts == [next((s for s in starts if s >= w), size) for w in wanted]
    bounds = [0, *cuts, size]
    readers = [
        TapeReader.of_ranges([SegmentRange(segment, lo, None if hi == size else hi)])
        for lo, hi in itertools.pairwise(bounds)
    ]
    parts = [ids(reader) for reader in readers]
    assert [i for part in parts for i in part] == ids(TapeReader(segment))
    assert [reader.segment_sizes() for reader in readers] == [[hi - lo] for lo, hi in itertools.pairwise(bounds)]
    assert sum(reader.report.exchanges for reader in readers) == 400
    assert [] in parts  # the cut one byte after the middle one found the same frame: an empty range
    assert not any(reader.report.torn_tails for reader in readers)


def test_a_range_ending_before_a_torn_tail_does_not_see_it(tmp_path: Path) -> None:
    segment = write_tape(tmp_path, 6)
    starts = frame_offsets(segment)
    segment.write_bytes(segment.read_bytes()[:-3])
    assert frame_starts(segment, [starts[3]]) == [starts[3]]
    assert frame_starts(segment, [starts[5] + 1]) is None  # the walk meets the torn frame: read it whole
    first = TapeReader.of_ranges([SegmentRange(segment, 0, starts[3])])
    rest = TapeReader.of_ranges([SegmentRange(segment, starts[3])])
    assert ids(first) == [f"ex-{i:06d}" for i in range(3)] and not first.report.torn_tails
    assert ids(rest) == [f"ex-{i:06d}" for i in range(3, 5)]
    ((_, torn),) = rest.report.torn_tails
    assert torn.offset == starts[5]


def test_frame_starts_of_a_damaged_or_foreign_file_is_none(tmp_path: Path) -> None:
    segment, offset = corrupt_middle(tmp_path)
    assert frame_starts(segment, [offset + 1]) is not None  # a damaged payload: lengths still walk
    data = bytearray(segment.read_bytes())
    data[offset] ^= 0xFF  # a damaged sync marker
    segment.write_bytes(bytes(data))
    assert frame_starts(segment, [offset + 1]) is None
    other = tmp_path / "other.stape"
    other.write_bytes(b"not a tape at all")
    assert frame_starts(other, [4]) is None
    assert frame_starts(tmp_path / "missing.stape", [4]) is None


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_keep_chooses_by_request_line_before_decoding(tmp_path: Path, compression: str) -> None:
    options = TapeOptions(redaction=None, fsync="none", compression=compression)  # type: ignore[arg-type]
    with SyncTapeWriter(tmp_path, options) as writer:
        writer.write_many(make_exchange(i, method="GET" if i % 3 else "POST") for i in range(300))
        # Long ids and targets: str8/str16 headers and large ints in the record's opening.
        writer.write(make_exchange(300, path="/" + "x" * 70_000 + "?q=1"))
    asked: list[tuple[str, str]] = []

    def posts(method: str, target: str) -> bool:
        asked.append((method, target))
        return method == "POST" or len(target) > 1000

    reader = TapeReader(tmp_path, keep=posts)
    kept = list(reader)
    assert [e.id for e in kept] == [f"ex-{i:06d}" for i in range(0, 300, 3)] + ["ex-000300"]
    assert kept[-1].request.target.endswith("x?q=1")
    assert len(asked) == 301 and asked[1] == ("GET", "/users/1?page=2")  # once each, the record's own
    assert reader.report.exchanges == 301
    others = TapeReader(tmp_path, keep=lambda method, target: not posts(method, target))
    assert len(list(others)) == 200


def test_request_line_of_a_record_is_read_off_its_opening() -> None:
    record = exchange_to_wire(make_exchange(7, method="PATCH", path="/ünï/çødé?x=1"))
    payload = memoryview(msgpack.packb(record, use_bin_type=True))
    assert request_line(payload) == ("PATCH", "/ünï/çødé?x=1")
    for bad in (b"", b"\x80", msgpack.packb([1, 2, 3]), msgpack.packb(["id", 1, 2, "no request"]), bytes(payload)[:30]):
        assert request_line(memoryview(bad)) is None


def test_keep_decides_an_older_version_record_after_decoding_it(tmp_path: Path) -> None:
    segment = write_tape(tmp_path, 6)
    rewrite_version(segment, _frames.FORMAT_VERSION - 1)  # its records go through the migration
    reader = TapeReader(segment, keep=lambda method, target: target.startswith("/users/3"))
    assert [e.id for e in reader] == ["ex-000003"]
    assert reader.report.exchanges == 6
