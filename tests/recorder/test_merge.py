"""Merging tapes by start time, streaming."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowtap.recorder import ConfigError, SyncTapeWriter, TapeFilter, TapeOptions, TapeReader, merge_tapes
from tests.recorder.tape_samples import BASE_NS, make_exchange

PLAIN = TapeOptions(redaction=None, fsync="none", compression="none")


def write(directory: Path, indexes: list[int], options: TapeOptions = PLAIN) -> Path:
    with SyncTapeWriter(directory, options) as writer:
        writer.write_many(make_exchange(i) for i in indexes)
    return directory


def test_three_sidecars_merge_in_time_order(tmp_path: Path) -> None:
    inputs = [write(tmp_path / f"side{k}", list(range(k, 60, 3))) for k in range(3)]
    result = merge_tapes(tmp_path / "out", inputs, PLAIN)
    assert (result.exchanges, result.inputs, result.torn_tails, result.skipped_ranges) == (60, 3, 0, 0)
    assert [e.id for e in TapeReader(tmp_path / "out")] == [f"ex-{i:06d}" for i in range(60)]


def test_equal_start_times_keep_input_order(tmp_path: Path) -> None:
    a = write(tmp_path / "a", [1, 2])
    b = write(tmp_path / "b", [1, 2])
    merge_tapes(tmp_path / "out", [b, a], PLAIN)
    got = [(e.id, str(e.started_at_ns - BASE_NS)) for e in TapeReader(tmp_path / "out")]
    assert got == [("ex-000001", "1000000")] * 2 + [("ex-000002", "2000000")] * 2


def test_merge_filters_and_reports_torn_inputs(tmp_path: Path) -> None:
    a = write(tmp_path / "a", list(range(10)))
    (segment,) = a.glob("*.stape")
    segment.write_bytes(segment.read_bytes()[:-5])
    b = write(tmp_path / "b", list(range(10, 20)))
    window = TapeFilter(since_ns=BASE_NS + 5_000_000, until_ns=BASE_NS + 15_000_000)
    result = merge_tapes(tmp_path / "out", [a, b], PLAIN, filter=window)
    assert result.torn_tails == 1
    assert [e.id for e in TapeReader(tmp_path / "out")] == [f"ex-{i:06d}" for i in range(5, 15) if i != 9]


def test_merge_refuses_its_own_output_and_no_inputs(tmp_path: Path) -> None:
    a = write(tmp_path / "a", [1])
    with pytest.raises(ConfigError, match="also an input"):
        merge_tapes(a, [a], PLAIN)
    with pytest.raises(ConfigError, match="at least one"):
        merge_tapes(tmp_path / "out", [], PLAIN)
