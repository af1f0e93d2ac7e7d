"""The tape writers host any ``Intake``: a toy one, knowing nothing of the proxy, in a thread and a child.

``NoteIntake`` turns an entry (a request line) plus the extras naming it (tags) into one exchange
record, at ``close`` or when an entry waits longer than its timeout. The same intake, the same items:
the thread writer and the writer process must write the same records.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shadowtap.recorder import TapeOptions, TapeReader, TapeWriter
from shadowtap.recorder.model import Exchange, Request, Response, exchange_to_wire
from shadowtap.recorder.tape_process import ProcessTapeWriter
from shadowtap.recorder.writer import ITEM_ENTRY, ITEM_EXTRA, IntakeStats


class Note:
    """An item: an entry (``key``, ``text`` is the path) or an extra (a tag for ``key``)."""

    def __init__(self, kind: int, key: str, text: str) -> None:
        self.kind, self.key, self.text = kind, key, text

    def wire(self) -> list[Any]:
        return [self.kind, self.key, self.text]

    def size_bytes(self) -> int:
        return len(self.key) + len(self.text)


class NoteIntake:
    """Module level, so the writer process can unpickle it by name."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._emit: Callable[[list[Any]], None] | None = None
        self._open: dict[str, tuple[float, str, list[str]]] = {}
        self._timed_out = 0
        self._orphans = 0

    @property
    def sweep_every_s(self) -> float:
        return 0.05

    def start(self, emit: Callable[[list[Any]], None]) -> None:
        self._emit = emit

    def load(self, raw: Any) -> Note:
        kind, key, text = raw
        return Note(kind, key, text)

    def take(self, item: Note, size_bytes: int, now_s: float) -> None:
        if item.kind == ITEM_ENTRY:
            self._open[item.key] = (now_s, item.text, [])
        elif item.key in self._open:
            self._open[item.key][2].append(item.text)
        else:
            self._orphans += 1

    def discard(self) -> None:
        self._orphans += 1

    def sweep(self, now_s: float, limit: int | None = None) -> bool:
        late = [key for key, (since, _, _) in self._open.items() if now_s - since >= self.timeout_s]
        for key in late[:limit]:
            self._timed_out += 1
            self._finish(key)
        return limit is not None and len(late) > limit

    def close(self) -> None:
        for key in list(self._open):
            self._finish(key)

    def _finish(self, key: str) -> None:
        assert self._emit is not None
        _, path, tags = self._open.pop(key)
        exchange = Exchange(
            id=key,
            started_at_ns=1_700_000_000_000_000_000,
            request=Request("GET", path, (), b""),
            primary=Response(200, "OK", (), b""),
            tags={f"t{i}": tag for i, tag in enumerate(tags)},
        )
        self._emit(exchange_to_wire(exchange))

    def stats(self) -> IntakeStats:
        held_bytes = sum(len(path) for _, path, _ in self._open.values())
        counters = {"timed_out": self._timed_out, "orphans": self._orphans}
        return IntakeStats(counters, held=len(self._open), held_bytes=held_bytes)


ITEMS = [
    Note(ITEM_ENTRY, "a", "/a"),
    Note(ITEM_EXTRA, "a", "x"),
    Note(ITEM_ENTRY, "b", "/b"),
    Note(ITEM_EXTRA, "b", "y"),
    Note(ITEM_EXTRA, "a", "z"),
    Note(ITEM_EXTRA, "nobody", "lost"),
]


def _read(directory: Path) -> dict[str, tuple[str, dict[str, str]]]:
    return {ex.id: (ex.request.target, dict(ex.tags)) for ex in TapeReader(directory)}


@pytest.mark.parametrize("writer_kind", ["thread", "process"])
async def test_a_writer_hosts_an_intake_it_knows_nothing_about(tmp_path: Path, writer_kind: str) -> None:
    intake = NoteIntake(timeout_s=60.0)
    assert pickle.loads(pickle.dumps(intake)).timeout_s == 60.0
    options = TapeOptions(redaction=None)
    writer: TapeWriter | ProcessTapeWriter
    if writer_kind == "thread":
        writer = TapeWriter(tmp_path / "tape", options, intake)
    else:
        writer = ProcessTapeWriter(tmp_path / "tape", options, intake)
    async with writer:
        assert writer.hosts_intake
        for item in ITEMS:
            if item.kind == ITEM_ENTRY:
                assert writer.submit_entry(item)
            else:
                assert writer.submit_extra(item)
    assert _read(tmp_path / "tape") == {"a": ("/a", {"t0": "x", "t1": "z"}), "b": ("/b", {"t0": "y"})}
    assert writer.stats.written == 2
    stats = writer.intake_stats
    assert dict(stats.counters) == {"timed_out": 0, "orphans": 1} and stats.held == 0


async def test_the_writer_sweeps_its_intake(tmp_path: Path) -> None:
    # An entry nobody closes is finished by the intake's own sweep, while the writer runs.
    writer = ProcessTapeWriter(tmp_path / "tape", TapeOptions(redaction=None), NoteIntake(timeout_s=0.1))
    async with writer:
        assert writer.submit_entry(Note(ITEM_ENTRY, "late", "/late"))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if writer.stats.written == 1:
                break
        assert writer.stats.written == 1
    assert dict(writer.intake_stats.counters)["timed_out"] == 1
    assert _read(tmp_path / "tape") == {"late": ("/late", {})}
