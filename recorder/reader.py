"""Reading tapes: streams exchanges from segment files, directories or globs, in order, with filters.

A reader never loads a whole tape: it reads each segment in large chunks and decodes frame by frame.
A tape may also be an ``s3://bucket/prefix`` URL (``shadowtap.recorder.objectstore``): its segment
objects are streamed, and when the prefix holds several sources (one folder per sidecar), their
exchanges are merged by start time, as ``shadowtap tape merge`` would. A reader may also be given
byte ranges of segments (``TapeReader.of_ranges``, ranges starting at frames ``frame_starts``
found), so that several processes share one segment without decoding each other's frames.
It returns every complete frame after a crash and reports the torn tail; a corrupt frame with data
after it is a ``TapeFormatError`` naming the file and byte offset, unless ``salvage`` is on, when the
reader skips to the next valid frame and reports the skipped range. A checksummed record of the wrong
shape (a header value that is not bytes, a status that is not an int) is the same, its error also
naming the field (``shadowtap.recorder.model.exchange_from_wire`` checks every value). It must never return a
frame whose checksum failed or an Exchange whose values have the wrong types, and never hang or
crash on arbitrary bytes.
"""

from __future__ import annotations

import glob
import heapq
import operator
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from shadowtap.recorder._frames import (
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    FRAME_SYNC,
    MAGIC,
    MAX_FRAME_BYTES,
    SEGMENT_HEADER_SIZE,
    SEGMENT_SUFFIX,
)
from shadowtap.recorder._report import Segment, SegmentReport, SkippedRange, TornTail
from shadowtap.recorder._segment import SegmentReader  # the frame loop, compiled when the build matches
from shadowtap.recorder.errors import ConfigError, InputFormatError
from shadowtap.recorder.model import Exchange
from shadowtap.recorder.objectstore import ObjectSegment, is_object_url, list_object_segments

__all__ = [
    "SegmentRange",
    "SegmentReport",
    "SkippedRange",
    "TapeFilter",
    "TapeReadReport",
    "TapeReader",
    "TornTail",
    "frame_starts",
    "tape_segments",
]

#: Bytes read from a segment at a time: large reads keep the per-frame cost in Python, not syscalls.
_CHUNK_BYTES: Final = 4 * 1024 * 1024
#: A read of an object's body asks for at most this much: a reader merging many sources holds one
#: window per source, so 50 sidecars cost ~50 MiB of windows, not 200.
_OBJECT_CHUNK_BYTES: Final = 1024 * 1024
_GLOB_CHARS: Final = frozenset("*?[")
_unpack_header = FRAME_HEADER.unpack_from


@dataclass(frozen=True, slots=True)
class TapeFilter:
    """Which exchanges to return: all conditions must hold (``None`` means "any").

    ``since_ns``/``until_ns`` bound ``started_at_ns`` (inclusive, exclusive); ``methods`` are
    compared upper-case; ``path_regex`` is searched in the request path (no query).
    """

    since_ns: int | None = None
    until_ns: int | None = None
    methods: frozenset[str] | None = None
    path_regex: str | None = None
    _compiled: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.methods is not None:
            object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))
        if self.since_ns is not None and self.until_ns is not None and self.until_ns <= self.since_ns:
            raise ConfigError("must be later than since", field="filter.until")
        if self.path_regex is not None:
            try:
                object.__setattr__(self, "_compiled", re.compile(self.path_regex))
            except re.error as exc:
                raise ConfigError(f"invalid regular expression: {exc}", field="filter.path_regex") from exc

    def matches(self, ex: Exchange) -> bool:
        if self.since_ns is not None and ex.started_at_ns < self.since_ns:
            return False
        if self.until_ns is not None and ex.started_at_ns >= self.until_ns:
            return False
        if self.methods is not None and ex.request.method.upper() not in self.methods:
            return False
        return self._compiled is None or self._compiled.search(ex.request.path) is not None


@dataclass(slots=True)
class TapeReadReport:
    """What a pass over a tape met; complete once iteration has finished."""

    segments: list[SegmentReport] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.segments)

    @property
    def exchanges(self) -> int:
        return sum(s.exchanges for s in self.segments)

    @property
    def torn_tails(self) -> list[tuple[str, TornTail]]:
        return [(s.path, s.torn_tail) for s in self.segments if s.torn_tail is not None]

    @property
    def skipped_ranges(self) -> list[tuple[str, SkippedRange]]:
        return [(s.path, r) for s in self.segments for r in s.skipped]


@dataclass(frozen=True, slots=True)
class SegmentRange:
    """The frames of one segment that start at byte ``start`` or later and before ``stop`` (None: to
    its end). ``start`` is 0 (the segment's first frame) or the offset of a frame, as
    ``frame_starts`` gives them: a reader never searches for a frame, so a body that happens to
    hold frame-like bytes can never be taken for one."""

    segment: Segment
    start: int = 0
    stop: int | None = None


def frame_starts(segment: Path, offsets: Sequence[int]) -> list[int] | None:
    """For each of ``offsets`` (ascending), the offset of the first frame of the local segment file
    that starts there or later (the file's size when none does), found by walking the frame headers
    from the start (lengths only: no payload is read or checked). None when the walk meets anything
    but whole frames (a torn tail or damage before the last offset): such a segment is read whole,
    by one reader, which reports the damage as always."""
    found: list[int] = []
    try:
        size = segment.stat().st_size
        with open(segment, "rb", buffering=_CHUNK_BYTES) as f:
            if not MAGIC.startswith(f.read(len(MAGIC))):
                return None
            pos = SEGMENT_HEADER_SIZE
            for offset in offsets:
                while pos < offset and pos < size:
                    f.seek(pos)
                    head = f.read(FRAME_HEADER_SIZE)
                    if len(head) < FRAME_HEADER_SIZE:
                        return None
                    sync, _kind, length, _crc = _unpack_header(head)
                    if sync != FRAME_SYNC or length > MAX_FRAME_BYTES or pos + FRAME_HEADER_SIZE + length > size:
                        return None
                    pos += FRAME_HEADER_SIZE + length
                found.append(min(pos, size))
    except OSError:
        return None
    return found


def tape_segments(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Segment]:
    """The segments of a tape, in reading order.

    Each path is a segment file, a directory (its ``*.stape`` files sorted by name, which sorts them
    by start time), a glob pattern (matches sorted, directories expanded) or an ``s3://bucket/prefix``
    URL (its segment objects, sorted by source, then name).
    """
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    out: list[Segment] = []
    for item in items:
        if is_object_url(item):
            out.extend(list_object_segments(os.fspath(item)))
            continue
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            try:
                names = sorted(p for p in path.iterdir() if p.name.endswith(SEGMENT_SUFFIX) and p.is_file())
            except OSError as exc:
                raise InputFormatError(f"cannot list tape directory: {exc.strerror or exc}", path=text) from exc
            out.extend(names)
        elif path.is_file():
            out.append(path)
        elif _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise InputFormatError("no files match this pattern", path=text)
            out.extend(tape_segments(matches))
        else:
            raise InputFormatError("no such tape file or directory", path=text)
    return out


class TapeReader:
    """Iterates the exchanges of a tape in order; ``report`` describes the last (or current) pass."""

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        filter: TapeFilter | None = None,
        salvage: bool = False,
        chunk_bytes: int = _CHUNK_BYTES,
        *,
        keep: Callable[[str, str], bool] | None = None,
    ) -> None:
        """``chunk_bytes`` is how much one file read asks for: large is fastest; a caller reading on
        an event loop asks for less, so that one read holds the loop for less time.

        ``keep(method, target)`` chooses exchanges by their request line before the rest of their
        record is decoded: the others are counted (``report.exchanges``) but never decoded or
        returned, so a process that wants a share of a tape pays little for the rest. It is asked
        about each exchange once, with the record's own method and target."""
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be positive, not {chunk_bytes}")
        self.segments = tape_segments(paths)
        self.filter = filter
        self.salvage = salvage
        self.chunk_bytes = chunk_bytes
        self.keep = keep
        self.report = TapeReadReport()
        self._ranges: list[SegmentRange] | None = None

    @classmethod
    def of_ranges(cls, ranges: Sequence[SegmentRange], salvage: bool = False) -> TapeReader:
        """A reader of the frames of ``ranges``, read one after the other in the order given (never
        merged by time, even over several sources: a caller that splits a tape in ranges has no use
        for the order); ``segments`` and ``segment_sizes`` describe the ranges."""
        reader = cls([], salvage=salvage)
        reader.segments = [r.segment for r in ranges]
        reader._ranges = list(ranges)
        return reader

    def segment_sizes(self) -> list[int]:
        """Each segment's size in bytes, in reading order (0 for a file that cannot be looked at)."""
        sizes = []
        for segment in self.segments:
            if isinstance(segment, ObjectSegment):
                sizes.append(segment.size)
                continue
            try:
                sizes.append(segment.stat().st_size)
            except OSError:
                sizes.append(0)
        if self._ranges is not None:
            ends = [size if r.stop is None else min(size, r.stop) for size, r in zip(sizes, self._ranges, strict=True)]
            sizes = [max(0, end - r.start) for end, r in zip(ends, self._ranges, strict=True)]
        return sizes

    def __iter__(self) -> Iterator[Exchange]:
        self.report = TapeReadReport()
        if self._ranges is not None:
            return self._read_ranges(self._ranges)
        runs = _source_runs(self.segments)
        if len(runs) == 1:
            return self._read(runs[0])
        # Several sidecars' segments under one object prefix: one stream per source, merged by
        # start time (stable: equal times keep the sources' order). Memory: one window per source.
        return heapq.merge(*(self._read(run) for run in runs), key=operator.attrgetter("started_at_ns"))

    def _read(self, segments: list[Segment]) -> Iterator[Exchange]:
        # "yield from", not itertools.chain over the segments' readers: closing this generator (or
        # dropping it half read) closes the segment being read, which a chain would leave open.
        matches = None if self.filter is None else self.filter.matches
        for path in segments:
            segment = SegmentReport(path=str(path))
            self.report.segments.append(segment)
            chunk_bytes = self.chunk_bytes
            if isinstance(path, ObjectSegment):
                chunk_bytes = min(chunk_bytes, _OBJECT_CHUNK_BYTES)
            yield from SegmentReader(path, segment, self.salvage, matches, chunk_bytes, keep=self.keep).exchanges()

    def _read_ranges(self, ranges: list[SegmentRange]) -> Iterator[Exchange]:
        matches = None if self.filter is None else self.filter.matches
        for part in ranges:
            segment = SegmentReport(path=str(part.segment))
            self.report.segments.append(segment)
            chunk_bytes = self.chunk_bytes
            if isinstance(part.segment, ObjectSegment):
                chunk_bytes = min(chunk_bytes, _OBJECT_CHUNK_BYTES)
            reader = SegmentReader(
                part.segment, segment, self.salvage, matches, chunk_bytes, part.start, part.stop, keep=self.keep
            )
            yield from reader.exchanges()


def _source_runs(segments: list[Segment]) -> list[list[Segment]]:
    """The segments split into what is read one after the other: files in the order given, and the
    objects of each source (a folder under an ``s3://`` prefix) apart, to be merged by time."""
    runs: list[list[Segment]] = []
    by_source: dict[tuple[str, str], list[Segment]] = {}
    files: list[Segment] = []
    for segment in segments:
        if isinstance(segment, ObjectSegment):
            run = by_source.get((segment.bucket, segment.source))
            if run is None:
                run = by_source[(segment.bucket, segment.source)] = []
                runs.append(run)
            run.append(segment)
        else:
            if not files:
                runs.append(files)
            files.append(segment)
    return runs or [[]]
