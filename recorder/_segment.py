"""Reading one tape segment: the frame loop of ``shadowtap.recorder.reader``, kept apart to run compiled.

Every exchange a reader returns passes through here (``_SegmentReader``: framing, checksums, zstd
blocks, the request line a ``keep`` chooses by, torn tails and salvage), so this module runs compiled
with the data path when the build matches (``shadowtap.wire.native``). The report classes it fills
are ``shadowtap.recorder._report``'s, which the reader exports. The reader's promises are this
module's: it must never return a frame whose checksum failed or an Exchange whose values have the
wrong types, and never hang or crash on arbitrary bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any, Final

import msgpack

from shadowtap.recorder._frames import (
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
    Migration,
    find_sync,
    migration_chain,
    parse_segment_header,
    segment_header_checksum_ok,
)
from shadowtap.recorder._report import Segment, SegmentReport, SkippedRange, TornTail
from shadowtap.recorder.errors import InputFormatError, TapeFormatError
from shadowtap.recorder.model import Exchange, exchange_from_wire
from shadowtap.recorder.objectstore import ObjectSegment, open_object_segment

__all__ = ["SegmentReader", "request_line"]

_unpack_header = FRAME_HEADER.unpack_from
_PREFIX_BYTES: Final = 7  # the header bytes covered by the checksum (all but the checksum itself)
_SYNC_BYTES: Final = FRAME_SYNC.to_bytes(2, "little")
# What decoding a checksummed record can raise: msgpack's errors are ValueError subclasses, the model
# raises TapeFormatError (a ValueError) naming the field, and a migration may raise anything of these
# on a record of the wrong shape.
_RECORD_ERRORS: Final = (ValueError, TypeError, KeyError, IndexError, AttributeError)
_NO_STOP: Final = 2**63


class SegmentReader:
    """One pass over one segment file."""

    def __init__(
        self,
        path: Segment,
        report: SegmentReport,
        salvage: bool,
        matches: Callable[[Exchange], bool] | None,
        chunk_bytes: int,
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
        line = None if self.migrate is not None else request_line(payload)
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


def request_line(payload: memoryview) -> tuple[str, str] | None:
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

    def __init__(self, f: IO[bytes], base: int, name: str, chunk_bytes: int) -> None:
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
