"""The tape writers: SyncTapeWriter and the asyncio TapeWriter (bounded queue, background thread)."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import time
from pathlib import Path

import pytest

from shadowtap.recorder import ConfigError, SyncTapeWriter, TapeOptions, TapeReader, TapeWriteError, TapeWriter
from shadowtap.recorder import writer as writer_module
from shadowtap.recorder._frames import SEGMENT_HEADER_SIZE
from shadowtap.recorder.model import exchange_to_wire
from shadowtap.recorder.writer import record_bytes
from tests.recorder.tape_samples import make_exchange

PLAIN = TapeOptions(redaction=None, fsync="none", compression="none")


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.stape"))


def test_sync_writer_round_trips_in_order(tmp_path: Path) -> None:
    exchanges = [make_exchange(i) for i in range(50)]
    with SyncTapeWriter(tmp_path / "tape", PLAIN) as writer:
        assert writer.write_many(exchanges) == 50
    assert list(TapeReader(tmp_path / "tape")) == exchanges
    assert writer.stats.written == 50


def test_segments_are_private_files(tmp_path: Path) -> None:
    with SyncTapeWriter(tmp_path / "tape", TapeOptions()) as writer:
        writer.write(make_exchange(1))
    files = list((tmp_path / "tape").iterdir())
    # The redaction key lives outside the tape (shadowtap.recorder.redact.default_key_path): a tape is copied whole.
    assert {f.suffix for f in files} == {".stape"}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_rotation_by_size_keeps_every_exchange_in_order(tmp_path: Path) -> None:
    exchanges = [make_exchange(i, body=b"x" * 2000) for i in range(40)]
    options = TapeOptions(redaction=None, max_segment_bytes=8192, block_bytes=4096, fsync="none", compression="none")
    with SyncTapeWriter(tmp_path, options) as writer:
        writer.write_many(exchanges)
    segments = segment_files(tmp_path)
    assert len(segments) >= 10
    assert all(s.stat().st_size <= 8192 for s in segments)
    assert list(TapeReader(tmp_path)) == exchanges


def test_rotation_by_age(tmp_path: Path) -> None:
    options = TapeOptions(redaction=None, max_segment_age_s=0.05, fsync="every")
    with SyncTapeWriter(tmp_path, options) as writer:
        writer.write(make_exchange(1))
        writer.write(make_exchange(2))
        time.sleep(0.06)
        writer.write(make_exchange(3))
    assert len(segment_files(tmp_path)) == 2
    assert [e.id for e in TapeReader(tmp_path)] == ["ex-000001", "ex-000002", "ex-000003"]


def test_zstd_blocks_are_smaller_and_read_back(tmp_path: Path) -> None:
    exchanges = [make_exchange(i, body=b'{"name":"alice","items":[1,2,3]}' * 30) for i in range(200)]
    with SyncTapeWriter(tmp_path / "plain", PLAIN) as writer:
        writer.write_many(exchanges)
    with SyncTapeWriter(tmp_path / "zstd", TapeOptions(redaction=None, compression="zstd", fsync="none")) as writer:
        writer.write_many(exchanges)
    plain_size = sum(s.stat().st_size for s in segment_files(tmp_path / "plain"))
    zstd_size = sum(s.stat().st_size for s in segment_files(tmp_path / "zstd"))
    assert zstd_size * 5 < plain_size
    assert list(TapeReader(tmp_path / "zstd")) == exchanges


def test_closed_sync_writer_refuses(tmp_path: Path) -> None:
    writer = SyncTapeWriter(tmp_path, PLAIN)
    writer.close()
    with pytest.raises(TapeWriteError, match="closed"):
        writer.write(make_exchange(1))


def test_a_file_where_the_directory_should_be_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(TapeWriteError) as info:
        SyncTapeWriter(tmp_path / "file", PLAIN)
    assert str(tmp_path / "file") in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"compression": "lz4"}, "tape.compression"),
        ({"fsync": "sometimes"}, "tape.fsync"),
        ({"queue_size": 0}, "tape.queue_size"),
        ({"queue_bytes": 100}, "tape.queue_bytes"),
        ({"max_segment_bytes": 10}, "tape.max_segment_bytes"),
        ({"max_segment_age_s": 0}, "tape.max_segment_age_s"),
        ({"fsync_interval_s": -1.0}, "tape.fsync_interval_s"),
        ({"zstd_level": 99}, "tape.zstd_level"),
    ],
)
def test_options_are_validated_naming_the_key(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        TapeOptions(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


async def test_async_writer_writes_everything_submitted(tmp_path: Path) -> None:
    writer = TapeWriter(tmp_path, TapeOptions(redaction=None, fsync="interval", fsync_interval_s=0.01))
    await writer.start()
    exchanges = [make_exchange(i) for i in range(500)]
    assert all(writer.submit(e) for e in exchanges)
    await writer.close()
    stats = writer.stats
    assert (stats.written, stats.dropped_queue_full, stats.write_errors, stats.queue_depth) == (500, 0, 0, 0)
    assert stats.bytes_written == sum(s.stat().st_size for s in segment_files(tmp_path))
    assert list(TapeReader(tmp_path)) == exchanges


async def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    writer = TapeWriter(tmp_path, TapeOptions(redaction=None, queue_size=10))
    # Not started yet: nothing drains, so the bound is exact.
    results = [writer.submit(make_exchange(i)) for i in range(25)]
    assert results == [True] * 10 + [False] * 15
    assert writer.stats.dropped_queue_full == 15
    assert writer.stats.queue_depth == 10
    await writer.start()
    await writer.close()
    assert writer.stats.written == 10
    assert not writer.submit(make_exchange(99))
    assert writer.stats.dropped_closed == 1
    assert [e.id for e in TapeReader(tmp_path)] == [f"ex-{i:06d}" for i in range(10)]


async def test_the_queue_is_bounded_in_bytes_as_well_as_exchanges(tmp_path: Path) -> None:
    writer = TapeWriter(tmp_path, TapeOptions(redaction=None, queue_bytes=100_000))
    body = b"b" * 10_000  # a primary and a shadow answer: ~21 KiB an exchange, 4 fit in 100,000
    size = record_bytes(exchange_to_wire(make_exchange(0, body=body)))
    assert 20_000 < size < 25_000
    # Not started yet: nothing drains, so the bound is exact.
    results = [writer.submit(make_exchange(i, body=body)) for i in range(6)]
    assert results == [True] * 4 + [False] * 2
    assert writer.submit_record(exchange_to_wire(make_exchange(6)))  # a small one still fits
    stats = writer.stats
    assert (stats.dropped_queue_bytes_full, stats.dropped_queue_full, stats.queue_depth) == (2, 0, 5)
    assert stats.queue_bytes == 4 * size + record_bytes(exchange_to_wire(make_exchange(6))) <= 100_000
    await writer.start()
    await writer.close()
    assert (writer.stats.written, writer.stats.queue_bytes) == (5, 0)
    assert [e.id for e in TapeReader(tmp_path)] == [f"ex-{i:06d}" for i in (0, 1, 2, 3, 6)]


async def test_one_exchange_bigger_than_the_byte_bound_is_taken_when_nothing_waits(tmp_path: Path) -> None:
    writer = TapeWriter(tmp_path, TapeOptions(redaction=None, queue_bytes=2048))
    assert writer.submit(make_exchange(0, body=b"x" * 5000))
    assert not writer.submit(make_exchange(1))  # the big one holds more than the bound
    assert writer.stats.dropped_queue_bytes_full == 1
    await writer.start()
    await writer.close()
    assert [e.id for e in TapeReader(tmp_path)] == ["ex-000000"]


async def test_unencodable_exchange_is_counted_not_raised(tmp_path: Path) -> None:
    writer = TapeWriter(tmp_path, TapeOptions(redaction=None))
    await writer.start()
    bad = make_exchange(1)
    object.__setattr__(bad, "tags", {"x": object()})
    assert writer.submit(make_exchange(0))
    assert writer.submit(bad)
    assert writer.submit(make_exchange(2))
    await writer.close()
    assert writer.stats.encode_errors == 1
    assert writer.stats.written == 2
    assert [e.id for e in TapeReader(tmp_path)] == ["ex-000000", "ex-000002"]


async def test_async_writer_as_context_manager_rotates_and_compresses(tmp_path: Path) -> None:
    options = TapeOptions(redaction=None, compression="zstd", max_segment_bytes=4096, block_bytes=2048)
    exchanges = [make_exchange(i, body=os.urandom(700)) for i in range(60)]
    async with TapeWriter(tmp_path, options) as writer:
        for e in exchanges:
            assert writer.submit(e)
            await asyncio.sleep(0)
    assert len(segment_files(tmp_path)) > 3
    assert writer.stats.segments == len(segment_files(tmp_path))
    assert list(TapeReader(tmp_path)) == exchanges


@pytest.mark.parametrize("fsync", ["none", "interval", "every"])
async def test_every_fsync_policy_writes_the_same_tape(tmp_path: Path, fsync: str) -> None:
    options = TapeOptions(redaction=None, fsync=fsync, fsync_interval_s=0.01)  # type: ignore[arg-type]
    exchanges = [make_exchange(i) for i in range(30)]
    async with TapeWriter(tmp_path, options) as writer:
        for e in exchanges[:15]:
            writer.submit(e)
        await asyncio.sleep(0.05)  # lets the interval policy sync while idle
        for e in exchanges[15:]:
            writer.submit(e)
    assert writer.stats.written == 30
    assert list(TapeReader(tmp_path)) == exchanges


async def test_start_on_an_unusable_directory_raises_before_any_submit(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    writer = TapeWriter(tmp_path / "file" / "tape")
    with pytest.raises(TapeWriteError) as info:
        await writer.start()
    assert str(tmp_path / "file" / "tape") in str(info.value)
    await writer.close()
    assert not writer.submit(make_exchange(1))


async def test_submit_record_wakes_the_thread_once_per_batch(tmp_path: Path) -> None:
    writer = TapeWriter(tmp_path, TapeOptions(redaction=None, fsync="none", queue_size=30))
    await writer.start()
    wakes = 0
    set_wake = writer._wake.set

    def counting_set() -> None:
        nonlocal wakes
        wakes += 1
        set_wake()

    writer._wake.set = counting_set  # type: ignore[method-assign]
    records = [exchange_to_wire(make_exchange(i)) for i in range(40)]
    taken = [writer.submit_record(r) for r in records]
    assert taken == [True] * 30 + [False] * 10  # the bound holds before the thread has woken
    assert (writer.stats.queue_depth, writer.stats.dropped_queue_full, wakes) == (30, 10, 0)
    for _ in range(100):
        if writer.stats.written == 30:
            break
        await asyncio.sleep(0.01)
    assert (writer.stats.written, wakes) == (30, 1)
    await writer.close()
    assert not writer.submit_record(records[0])
    assert writer.stats.dropped_closed == 1
    assert [e.id for e in TapeReader(tmp_path)] == [f"ex-{i:06d}" for i in range(30)]


class FillingDisk:
    """The writer's ``os`` module over a disk with room for ``room`` more bytes: past them, a
    write takes what fits and the next raises ENOSPC, as a full filesystem does (the real one, a
    small tmpfs, is in test_writer_functional.py and needs root)."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = os.write(fd, bytes(data[: self.room]))
        self.room -= written
        return written


def write_refused(writer: SyncTapeWriter, i: int) -> bool:
    try:
        writer.write(make_exchange(i, body=b"e" * 3000))
    except TapeWriteError:
        return True
    return False


def test_a_full_disk_reuses_the_segment_cut_back_to_its_last_whole_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = FillingDisk(room=20_000)
    monkeypatch.setattr(writer_module, "os", disk)
    options = TapeOptions(redaction=None, fsync="none", block_bytes=1024, retry_after_error_s=0.0, compression="none")
    with SyncTapeWriter(tmp_path, options) as writer:
        refused = [write_refused(writer, i) for i in range(40)]  # each one a block, each refused one a retry
        disk.room = 10_000  # some room again: the same segment takes more
        refused += [write_refused(writer, i) for i in range(40, 60)]
    assert refused.count(False) == writer.stats.written and refused.count(True) > 30
    (segment,) = sorted(tmp_path.glob("*.stape"))
    reader = TapeReader(tmp_path)
    got = [int(e.id[3:]) for e in reader]
    assert reader.report.torn_tails == []
    assert got == [i for i, no in enumerate(refused) if not no] and max(got) >= 40
    assert segment.stat().st_size == writer.stats.bytes_written
    assert writer.stats.segments == 1


def test_a_disk_full_from_the_start_leaves_no_segment_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "os", FillingDisk(room=0))
    options = TapeOptions(redaction=None, fsync="none", block_bytes=1024, retry_after_error_s=0.0, compression="none")
    with SyncTapeWriter(tmp_path, options) as writer:
        assert all(write_refused(writer, i) for i in range(10))
    assert list(tmp_path.glob("*.stape")) == []
    assert (writer.stats.segments, writer.stats.bytes_written) == (0, 0)


def test_a_segment_left_with_its_header_alone_is_removed_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Room for the header and nothing more: the segment is opened, every block is refused.
    monkeypatch.setattr(writer_module, "os", FillingDisk(room=SEGMENT_HEADER_SIZE))
    options = TapeOptions(redaction=None, fsync="none", block_bytes=1024, retry_after_error_s=0.0, compression="none")
    with SyncTapeWriter(tmp_path, options) as writer:
        assert write_refused(writer, 0)
        assert len(list(tmp_path.glob("*.stape"))) == 1  # kept open for the retry
    assert list(tmp_path.glob("*.stape")) == []
    assert (writer.stats.segments, writer.stats.bytes_written) == (0, 0)


def test_a_new_tape_directory_is_private_and_a_shared_one_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    previous = os.umask(0o022)
    try:
        with caplog.at_level("WARNING", logger="shadowtap.recorder.private"):
            with SyncTapeWriter(tmp_path / "new" / "tape", PLAIN) as writer:
                writer.write(make_exchange(1))
            assert stat.S_IMODE((tmp_path / "new" / "tape").stat().st_mode) == 0o700
            assert not caplog.records
            shared = tmp_path / "shared"
            shared.mkdir()
            shared.chmod(0o755)
            with SyncTapeWriter(shared, PLAIN) as writer:
                writer.write(make_exchange(2))
    finally:
        os.umask(previous)
    (record,) = caplog.records
    assert str(shared) in record.getMessage() and "755" in record.getMessage()
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in shared.iterdir())
