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
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import msgpack

from shadowtap.recorder._frames import (
    FLAG_ZSTD,
    FORMAT_VERSION,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    FRAME_SYNC,
    KIND_EXCHANGE,
    KIND_ZSTD_BLOCK,
    MAGIC,
    MAX_BLOCK_DECOMPRESSED_BYTES,
    MAX_FRAME_BYTES,
    SEGMENT_HEADER_SIZE,
    SEGMENT_SUFFIX,
    Migration,
    find_sync,
    migration_chain,
    parse_segment_header,
    segment_header_checksum_ok,
)
from shadowtap.recorder.errors import ConfigError, InputFormatError, TapeFormatError
from shadowtap.recorder.model import Exchange, exchange_from_wire
from shadowtap.recorder.objectstore import ObjectSegment, is_object_url, list_object_segments, open_object_segment

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
_PREFIX_BYTES: Final = 7  # the header bytes covered by the checksum (all but the checksum itself)
_SYNC_BYTES: Final = FRAME_SYNC.to_bytes(2, "little")
# What decoding a checksummed record can raise: msgpack's errors are ValueError subclasses, the model
# raises TapeFormatError (a ValueError) naming the field, and a migration may raise anything of these
# on a record of the wrong shape.
_RECORD_ERRORS: Final = (ValueError, TypeError, KeyError, IndexError, AttributeError)
_NO_STOP: Final = 2**63


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


@dataclass(frozen=True, slots=True)
class TornTail:
    """An incomplete last frame (a crash mid-write): ``length`` bytes from ``offset`` were ignored."""

    offset: int
    length: int
    reason: str


@dataclass(frozen=True, slots=True)
class SkippedRange:
    """Bytes a salvaging reader skipped over: ``length`` bytes from ``offset``."""

    offset: int
    length: int
    reason: str


@dataclass(slots=True)
class SegmentReport:
    path: str
    version: int = 0
    flags: int = 0
    frames: int = 0
    exchanges: int = 0
    bytes: int = 0
    torn_tail: TornTail | None = None
    skipped: list[SkippedRange] = field(default_factory=list)

    @property
    def compression(self) -> str:
        """What the writer declared in the header: ``"zstd"`` or ``"none"``."""
        return "zstd" if self.flags & FLAG_ZSTD else "none"


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


#: A segment: a file, or an object in object storage.
Segment = Path | ObjectSegment


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
        matches = None if self.filter is None else self.filter.matches
        for path in segments:
            segment = SegmentReport(path=str(path))
            self.report.segments.append(segment)
            chunk_bytes = self.chunk_bytes
            if isinstance(path, ObjectSegment):
                chunk_bytes = min(chunk_bytes, _OBJECT_CHUNK_BYTES)
            yield from _SegmentReader(path, segment, self.salvage, matches, chunk_bytes, keep=self.keep).exchanges()

    def _read_ranges(self, ranges: list[SegmentRange]) -> Iterator[Exchange]:
        matches = None if self.filter is None else self.filter.matches
        for part in ranges:
            segment = SegmentReport(path=str(part.segment))
            self.report.segments.append(segment)
            chunk_bytes = self.chunk_bytes
            if isinstance(part.segment, ObjectSegment):
                chunk_bytes = min(chunk_bytes, _OBJECT_CHUNK_BYTES)
            reader = _SegmentReader(
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


class _SegmentReader:
    """One pass over one segment file."""

    def __init__(
        self,
        path: Segment,
        report: SegmentReport,
        salvage: bool,
        matches: Callable[[Exchange], bool] | None,
        chunk_bytes: int = _CHUNK_BYTES,
        start: int = 0,
        stop: int | None = None,
        *,
        keep: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.path = path
        self.keep = keep
        self.start = start
        #: Frames starting here or later are another reader's (``SegmentRange``).
        self.stop = _NO_STOP if stop is None else stop
        self.chunk_bytes = chunk_bytes
        self.matches = matches
        self.name = str(path)
        self.report = report
        self.salvage = salvage
        self.migrate: Migration | None = None
        self.decompressor: Any = None

    def exchanges(self) -> Iterator[Exchange]:
        f: Any
        if isinstance(self.path, ObjectSegment):
            f = open_object_segment(self.path)
        else:
            try:
                f = open(self.path, "rb")  # noqa: SIM115 (the with below closes it)
            except OSError as exc:
                raise InputFormatError(f"cannot open tape segment: {exc.strerror or exc}", path=self.name) from exc
        with f:
            try:
                head = f.read(SEGMENT_HEADER_SIZE)
            except OSError as exc:
                raise InputFormatError(f"cannot read tape segment: {exc.strerror or exc}", path=self.name) from exc
            report = self.report
            if len(head) < SEGMENT_HEADER_SIZE and MAGIC.startswith(head[: len(MAGIC)]):
                # Created, then the writer died before the header was complete: an empty segment.
                report.bytes = len(head)
                report.torn_tail = TornTail(0, len(head), "segment header incomplete")
                return
            if self.salvage and head[: len(MAGIC)] == MAGIC and not segment_header_checksum_ok(head):
                # Only the header is damaged: salvage reads the frames as the current version.
                report.version, report.flags = FORMAT_VERSION, 0
                reason = f"segment header checksum mismatch; read as format v{FORMAT_VERSION}"
                report.skipped.append(SkippedRange(0, SEGMENT_HEADER_SIZE, reason))
            else:
                report.version, report.flags = parse_segment_header(head, self.name)
            version = report.version
            self.migrate = migration_chain(version, self.name)
            base = SEGMENT_HEADER_SIZE
            if self.start > base:
                try:
                    f.seek(self.start)
                except OSError as exc:
                    raise InputFormatError(f"cannot read tape segment: {exc.strerror or exc}", path=self.name) from exc
                base = self.start
            w = _Window(f, base, self.name, self.chunk_bytes)
            stop = self.stop
            keep = self.keep
            matches = self.matches
            migrate = self.migrate
            unpackb = msgpack.unpackb
            from_wire = exchange_from_wire
            crc32 = zlib.crc32
            try:
                while True:
                    # Fast path: whole, valid frames already in the buffer. Kept inline and on locals:
                    # this loop runs once per exchange and sets the read speed.
                    buf, pos, base = w.buf, w.pos, w.base
                    view = memoryview(buf)
                    end_buf = len(buf)
                    while pos + FRAME_HEADER_SIZE <= end_buf:
                        if base + pos >= stop:
                            w.pos = pos
                            return
                        sync, kind, length, crc = _unpack_header(buf, pos)
                        end = pos + FRAME_HEADER_SIZE + length
                        if sync != FRAME_SYNC or end > end_buf:
                            break
                        payload = view[pos + FRAME_HEADER_SIZE : end]
                        if crc32(payload, crc32(view[pos : pos + _PREFIX_BYTES])) != crc:
                            break
                        report.frames += 1
                        if kind == KIND_EXCHANGE:
                            kept = True if keep is None else self._kept(payload)
                            if kept is False:
                                pos = end
                                continue
                            try:
                                record = unpackb(payload, raw=False, use_list=False)
                                ex = from_wire(record if migrate is None else migrate(record))
                            except _RECORD_ERRORS as exc:
                                self._bad_record(exc, base + pos, end - pos)
                            else:
                                report.exchanges += 1
                                if (kept or self._keeps(ex)) and (matches is None or matches(ex)):
                                    yield ex
                        elif kind == KIND_ZSTD_BLOCK:
                            yield from self._block(payload, base + pos)
                        elif kind < 0x80:
                            reason = f"unknown frame kind {kind} (written by a newer shadowtap?)"
                            self._problem(base + pos, end - pos, reason)
                        # Kinds 0x80 and above are optional extensions, skipped by readers that do not know them.
                        pos = end
                    w.pos = pos
                    if w.base + pos >= stop or not self._slow(w):
                        return
            finally:
                report.bytes = SEGMENT_HEADER_SIZE + w.consumed

    def _kept(self, payload: memoryview) -> bool | None:
        """What ``keep`` says of the exchange record ``payload`` by its request line alone (one it
        refuses is counted here, never decoded); None when the record must be decoded first (an
        older version, or an unusual opening): then ``_keeps`` asks. Either way each record gets
        the same answer whoever reads it."""
        assert self.keep is not None
        line = None if self.migrate is not None else _request_line(payload)
        if line is None:
            return None
        if self.keep(*line):
            return True
        self.report.exchanges += 1
        return False

    def _keeps(self, exchange: Exchange) -> bool:
        return self.keep is None or self.keep(exchange.request.method, exchange.request.target)

    def _slow(self, w: _Window) -> bool:
        """The frame at ``w.pos`` is not whole in the buffer, or not valid. True: carry on reading."""
        if not w.fill(FRAME_HEADER_SIZE):
            rest = w.available
            if rest == 0:
                return False
            if w.buf.count(0, w.pos) == rest:
                return self._torn(w, "zero-filled tail")
            if _SYNC_BYTES.startswith(w.buf[w.pos : w.pos + 2]):
                return self._torn(w, "frame header incomplete")
            return self._damage(w, "bad frame sync marker")
        sync, _kind, length, crc = _unpack_header(w.buf, w.pos)
        if sync != FRAME_SYNC:
            return self._damage(w, "bad frame sync marker")
        if length > MAX_FRAME_BYTES:
            return self._damage(w, f"frame length {length} exceeds the {MAX_FRAME_BYTES} byte limit")
        size = FRAME_HEADER_SIZE + length
        if not w.fill(size):
            if w.buf.count(0, w.pos) == w.available:
                return self._torn(w, "zero-filled tail")
            # The rest of the file is buffered now. A valid frame inside the claimed length means the
            # length was damaged; none means a frame cut short by a crash.
            offset, pos = w.base + w.pos, w.pos
            if w.resync(skip_current=True):
                reason = "frame length runs past the next valid frame"
                if not self.salvage:
                    raise TapeFormatError(
                        f"corrupt frame: {reason} (use --salvage to skip it)", path=self.name, offset=offset
                    )
                self.report.skipped.append(SkippedRange(offset, w.base + w.pos - offset, reason))
                return True
            w.pos = pos
            return self._torn(w, f"last frame incomplete ({w.available} of {size} bytes)")
        if _frame_ok(w.buf, w.pos, size, crc):
            return True
        if not w.fill(size + 1):
            return self._torn(w, "last frame checksum mismatch")
        return self._damage(w, "frame checksum mismatch")

    def _torn(self, w: _Window, reason: str) -> bool:
        self.report.torn_tail = TornTail(w.base + w.pos, w.available, reason)
        w.skip_rest()
        return False

    def _damage(self, w: _Window, reason: str) -> bool:
        """Damage at ``w.pos``: a zero-filled rest is a torn tail, anything else is corruption."""
        offset = w.base + w.pos
        if w.rest_is_zero():
            self.report.torn_tail = TornTail(offset, w.base + w.pos - offset, "zero-filled tail")
            return False
        if not self.salvage:
            raise TapeFormatError(f"corrupt frame: {reason} (use --salvage to skip it)", path=self.name, offset=offset)
        w.resync(skip_current=w.base + w.pos == offset)
        self.report.skipped.append(SkippedRange(offset, w.base + w.pos - offset, reason))
        return w.available > 0 or w.fill(1)

    def _problem(self, offset: int, length: int, reason: str, field: str | None = None, hint: str = "") -> None:
        """A frame that passed its checksum but cannot be used: an error, or skipped when salvaging."""
        if not self.salvage:
            raise TapeFormatError(reason + hint, path=self.name, offset=offset, field=field)
        self.report.skipped.append(SkippedRange(offset, length, reason if field is None else f"{field}: {reason}"))

    def _bad_record(self, exc: Exception, offset: int, length: int, where: str = "") -> None:
        """A checksummed record that does not decode, or decodes to the wrong shape (the error's
        ``field`` names where); ``where`` places a record inside a zstd block."""
        if isinstance(exc, TapeFormatError):
            reason, field = exc.message, exc.field
        else:
            reason, field = f"undecodable exchange record: {exc}", None
        self._problem(offset, length, reason + where, field, " (use --salvage to skip it)")

    def _block(self, payload: memoryview, offset: int) -> Iterator[Exchange]:
        """The exchanges of one zstd block; damage inside it (checksum passed) ends the block."""
        if self.decompressor is None:
            import zstandard

            self.decompressor = zstandard.ZstdDecompressor()
        frame_size = FRAME_HEADER_SIZE + len(payload)
        try:
            data = self.decompressor.decompress(payload, max_output_size=MAX_BLOCK_DECOMPRESSED_BYTES)
        except Exception as exc:  # zstandard.ZstdError and friends: the checksum passed, so a bad writer
            self._problem(offset, frame_size, f"undecodable zstd block: {exc}")
            return
        migrate = self.migrate
        report = self.report
        keep = self.keep
        view = memoryview(data)
        inner = 0
        while inner < len(data):
            if len(data) - inner < FRAME_HEADER_SIZE:
                self._problem(offset, frame_size, f"zstd block ends inside a frame at block byte {inner}")
                return
            sync, kind, length, crc = _unpack_header(data, inner)
            end = inner + FRAME_HEADER_SIZE + length
            inner_payload = view[inner + FRAME_HEADER_SIZE : end]
            if (
                sync != FRAME_SYNC
                or kind != KIND_EXCHANGE
                or end > len(data)
                or zlib.crc32(inner_payload, zlib.crc32(view[inner : inner + _PREFIX_BYTES])) != crc
            ):
                self._problem(offset, frame_size, f"bad frame inside zstd block at block byte {inner}")
                return
            kept = True if keep is None else self._kept(inner_payload)
            if kept is False:
                inner = end
                continue
            try:
                record = msgpack.unpackb(inner_payload, raw=False, use_list=False)
                ex = exchange_from_wire(record if migrate is None else migrate(record))
            except _RECORD_ERRORS as exc:
                self._bad_record(exc, offset, frame_size, f" (the record at block byte {inner})")
            else:
                report.exchanges += 1
                if (kept or self._keeps(ex)) and (self.matches is None or self.matches(ex)):
                    yield ex
            inner = end


# --- the request line of a record, without decoding the rest --------------------------------------
# An exchange record is a msgpack array that opens with its id (str), two ints and the request, an
# array that opens with the method and the target (docs/tape-format.md): a reader that only needs
# those (``TapeReader(keep=...)``) reads them off the payload and decodes nothing else.

_INT_SIZES: Final = {0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9}


def _array_start(b: memoryview, i: int) -> int:
    """The offset of the first element of the array at ``i``; -1 if there is none there."""
    tag = b[i]
    if 0x91 <= tag <= 0x9F:
        return i + 1
    if tag == 0xDC:
        return i + 3
    if tag == 0xDD:
        return i + 5
    return -1


def _str_at(b: memoryview, i: int) -> tuple[int, int]:
    """(start, end) of the str at ``i``; (-1, -1) if there is none there."""
    tag = b[i]
    if 0xA0 <= tag <= 0xBF:
        start, length = i + 1, tag & 0x1F
    elif tag == 0xD9:
        start, length = i + 2, b[i + 1]
    elif tag == 0xDA:
        start, length = i + 3, int.from_bytes(b[i + 1 : i + 3], "big")
    elif tag == 0xDB:
        start, length = i + 5, int.from_bytes(b[i + 1 : i + 5], "big")
    else:
        return -1, -1
    return start, start + length


def _request_line(payload: memoryview) -> tuple[str, str] | None:
    """(method, target) of an exchange record, or None when its opening is not the usual one (the
    record is then decoded whole, which also says what is wrong with it)."""
    try:
        i = _array_start(payload, 0)
        if i < 0:
            return None
        _, i = _str_at(payload, i)  # the exchange id
        for _ in range(2):  # started_at_ns, started_mono_ns
            if i < 0:
                return None
            tag = payload[i]
            i += 1 if tag < 0x80 or tag >= 0xE0 else _INT_SIZES.get(tag, -i - 1)
        if i < 0 or (i := _array_start(payload, i)) < 0:
            return None
        method_start, method_end = _str_at(payload, i)
        if method_start < 0:
            return None
        target_start, target_end = _str_at(payload, method_end)
        if target_start < 0 or target_end > len(payload):
            return None
        return str(payload[method_start:method_end], "utf-8"), str(payload[target_start:target_end], "utf-8")
    except (IndexError, UnicodeDecodeError):
        return None


def _frame_ok(buf: bytes, pos: int, size: int, crc: int) -> bool:
    view = memoryview(buf)
    return zlib.crc32(view[pos + FRAME_HEADER_SIZE : pos + size], zlib.crc32(view[pos : pos + _PREFIX_BYTES])) == crc


class _Window:
    """A sliding buffer over a segment file: ``buf[pos:]`` is unread, ``base`` is buf[0]'s file offset.

    Bounded: it holds at most one read chunk plus the frame being completed, and a frame longer
    than MAX_FRAME_BYTES is damage, never buffered; a zero-filled or skipped rest is dropped as read.
    """

    __slots__ = ("base", "buf", "chunk_bytes", "consumed", "eof", "f", "name", "pos")

    def __init__(self, f: IO[bytes], base: int, name: str, chunk_bytes: int = _CHUNK_BYTES) -> None:
        self.chunk_bytes = chunk_bytes
        self.f = f
        self.name = name
        self.buf = b""
        self.pos = 0
        self.base = base
        self.consumed = 0
        self.eof = False

    @property
    def available(self) -> int:
        return len(self.buf) - self.pos

    def fill(self, n: int) -> bool:
        """Make ``n`` bytes available from ``pos``; False when the file ends first."""
        while len(self.buf) - self.pos < n:
            if self.eof:
                return False
            try:
                chunk = self.f.read(max(self.chunk_bytes, n - (len(self.buf) - self.pos)))
            except OSError as exc:
                message = f"cannot read tape segment: {exc.strerror or exc}"
                raise InputFormatError(message, path=self.name, offset=self.base + len(self.buf)) from exc
            if not chunk:
                self.eof = True
                return False
            self.consumed += len(chunk)
            self.base += self.pos
            self.buf = self.buf[self.pos :] + chunk
            self.pos = 0
        return True

    def skip_rest(self) -> None:
        while self.fill(1):
            self.base += len(self.buf)
            self.buf, self.pos = b"", 0

    def rest_is_zero(self) -> bool:
        """True when everything from ``pos`` to the end of file is zero bytes (consumed on the way).

        Otherwise ``pos`` stops at the first chunk holding a non-zero byte, zero chunks dropped.
        """
        while self.available or self.fill(1):
            if self.buf.count(0, self.pos) != self.available:
                return False
            self.base += len(self.buf)
            self.buf, self.pos = b"", 0
        return True

    def resync(self, *, skip_current: bool) -> bool:
        """Move ``pos`` to the next whole frame with a valid checksum; True when there is one.

        False leaves ``pos`` at the end of the file (or of a header cut short by it).
        """
        search = self.pos + 1 if skip_current else self.pos
        while True:
            found = find_sync(self.buf, search)
            if found < 0:
                # Keep the last byte: a sync marker may straddle the chunk boundary.
                self.pos = max(self.pos, len(self.buf) - 1)
                if not self.fill(self.available + 1):
                    self.pos = len(self.buf)
                    return False
                search = self.pos
                continue
            self.pos = found
            if not self.fill(FRAME_HEADER_SIZE):
                return False
            _sync, _kind, length, crc = _unpack_header(self.buf, self.pos)
            if length <= MAX_FRAME_BYTES:
                size = FRAME_HEADER_SIZE + length
                # A candidate cut short by the end of the file is not proof of a frame: search on.
                if self.fill(size) and _frame_ok(self.buf, self.pos, size, crc):
                    return True
            search = self.pos + 1
