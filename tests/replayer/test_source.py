"""Tape sources: several tapes merged by time, re-readable, with the readers' problems counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowtap.recorder import InputFormatError, SyncTapeWriter, TapeOptions
from shadowtap.replayer.source import tape_source
from tests.replayer.tapes import make_exchange


def write(path: Path, items: list[tuple[int, float]]) -> str:
    with SyncTapeWriter(path, TapeOptions(redaction=None, compression="none")) as writer:
        for i, at in items:
            writer.write(make_exchange(i, at))
    return str(path)


def test_tapes_merge_by_time_and_can_be_read_again(tmp_path: Path) -> None:
    a = write(tmp_path / "a", [(0, 0), (2, 20), (4, 40)])
    b = write(tmp_path / "b", [(1, 10), (3, 30)])
    source = tape_source((a, b))
    assert [e.id for e in source()] == ["ex0", "ex1", "ex2", "ex3", "ex4"]
    assert [e.id for e in source()] == ["ex0", "ex1", "ex2", "ex3", "ex4"]  # a fresh pass for --loop
    assert source.problems() == {"torn_tails": 0, "skipped_ranges": 0}


def test_a_missing_tape_fails_before_reading(tmp_path: Path) -> None:
    with pytest.raises(InputFormatError, match="no such tape"):
        tape_source((str(tmp_path / "nope"),))


def test_a_torn_tail_is_counted_and_the_complete_frames_are_kept(tmp_path: Path) -> None:
    tape = write(tmp_path / "t", [(i, i) for i in range(20)])
    (segment,) = Path(tape).glob("*.stape")
    segment.write_bytes(segment.read_bytes()[:-7])  # a crash mid-write
    source = tape_source((tape,))
    assert len(list(source())) == 19
    assert source.problems()["torn_tails"] == 1
