"""Writing tapes: segment files with rotation, zstd blocks, a fsync policy, and redaction.

``SyncTapeWriter`` is the blocking writer (importers, the CLI, tests); ``TapeWriter`` is the asyncio
front: ``submit`` puts an exchange on a bounded queue and returns at once, and one background thread
redacts, encodes, compresses, writes and syncs in batches. ``shadowtap.recorder.tape_process.ProcessTapeWriter``
is the same front with that work in a child process (the proxy's default). Either can host an
``Intake``: a producer's own step between what it submits and the exchange records written (it
takes entries, each of which ends as one record, and extras that only add to an entry; it is swept
on a period and closed last), run in the thread or the child. All share ``SegmentSink``
and ``BlockWriter``, so a tape is the same bytes whichever wrote it. This module must never block
the event loop, never raise from ``submit``, and never let a disk error (ENOSPC, EIO) reach the
caller's request path: it is counted in ``write_errors``, logged once per kind, and the disk is left
alone for ``retry_after_error_s``. The refused block is cut off the segment, so it never ends in a
torn frame; a full disk (ENOSPC, EDQUOT) keeps the segment open for the retry, any other error has the
next batch start a fresh one; and a segment nothing was written to is removed, not left empty.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Protocol, Self, cast

from shadowtap.recorder._frames import (
    FLAG_ZSTD,
    KIND_ZSTD_BLOCK,
    SEGMENT_HEADER_SIZE,
    SEGMENT_SUFFIX,
    FrameEncoder,
    encode_frame,
    encode_segment_header,
)
from shadowtap.recorder.errors import ConfigError, TapeWriteError
from shadowtap.recorder.model import Exchange, Response
from shadowtap.recorder.objectstore import (
    SegmentUploader,
    UploadOptions,
    default_spool_directory,
    is_object_url,
    segment_closed,
    segment_opened,
)
from shadowtap.recorder.private import warn_if_shared_directory
from shadowtap.recorder.redact import RedactionRules, Redactor, resolve_redaction_key

__all__ = [
    "AsyncWriterBase",
    "BlockWriter",
    "DiscardSink",
    "ErrorNotes",
    "Intake",
    "IntakeStats",
    "SegmentSink",
    "SyncTapeWriter",
    "TapeOptions",
    "TapeWriter",
    "TapeWriterStats",
    "tape_target",
]

log = logging.getLogger(__name__)

Compression = Literal["none", "zstd"]
FsyncPolicy = Literal["none", "interval", "every"]

#: Exchanges the background thread takes per batch: large enough to amortise a write() and a zstd
#: block, small enough that one batch is a few MiB at most.
_BATCH_EXCHANGES: Final = 1024
#: A refused write on these means the disk (or quota) is full: a new segment would not help, so the
#: open one is kept for the retry rather than one more file left behind per retry.
_DISK_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
#: ``submit_record`` wakes the thread at most this long after the first record it queued, so the
#: thread wakes (and takes the GIL) once per batch rather than once per exchange.
WAKE_DELAY_S: Final = 0.01


@dataclass(frozen=True, slots=True)
class TapeOptions:
    """How a tape is written. ``redaction=None`` turns redaction off (it is on by default)."""

    #: Rotate to a new segment once the current one would grow past this.
    max_segment_bytes: int = 128 * 1024 * 1024
    #: Rotate to a new segment once the current one is this old (checked when writing).
    max_segment_age_s: float = 3600.0
    #: zstd by default: the bench's 1 KiB JSON exchanges take 6% of their bytes, and writing and reading
    #: stay within the tape's budgets (bench/tape_bench.py; figures in docs/benchmarks.md).
    compression: Compression = "zstd"
    zstd_level: int = 3
    #: ``none``: leave it to the OS; ``interval``: fsync at most every ``fsync_interval_s``;
    #: ``every``: fsync after every write, before the exchanges count as written.
    fsync: FsyncPolicy = "interval"
    fsync_interval_s: float = 1.0
    #: Bound on exchanges waiting for the background writer. 10,000 is about 0.2 s of writing at
    #: the 50k/s budget and ~10 MiB of 1 KiB exchanges: enough to ride out a disk hiccup, small
    #: enough that a stuck disk costs bounded memory; beyond it exchanges are dropped and counted.
    queue_size: int = 10_000
    #: Bound on the bytes of those exchanges (bodies and headers; the packed records on their way
    #: to the writer process): with 1 MiB bodies the item bound alone allows ~20 GiB. One exchange
    #: bigger than this is taken when nothing else waits; beyond it they are dropped and counted.
    queue_bytes: int = 64 * 1024 * 1024
    #: Encoded bytes gathered before one write (and one zstd block): bigger compresses better,
    #: smaller loses less in a torn tail.
    block_bytes: int = 1024 * 1024
    #: After the disk refuses a write, batches in the next this-many seconds are counted as
    #: write errors without touching the disk, so a full disk is not hammered once per batch.
    retry_after_error_s: float = 1.0
    redaction: RedactionRules | None = RedactionRules()
    #: Upload each closed segment to object storage (the tape directory is then the local spool).
    upload: UploadOptions | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_segment_bytes, int) or self.max_segment_bytes < 4096:
            raise ConfigError("must be an integer of at least 4096", field="tape.max_segment_bytes")
        if not isinstance(self.max_segment_age_s, int | float) or self.max_segment_age_s <= 0:
            raise ConfigError("must be a positive number of seconds", field="tape.max_segment_age_s")
        if self.compression not in ("none", "zstd"):
            raise ConfigError(f"must be 'none' or 'zstd', not {self.compression!r}", field="tape.compression")
        if not isinstance(self.zstd_level, int) or not 1 <= self.zstd_level <= 22:
            raise ConfigError("must be an integer from 1 to 22", field="tape.zstd_level")
        if self.fsync not in ("none", "interval", "every"):
            raise ConfigError(f"must be 'none', 'interval' or 'every', not {self.fsync!r}", field="tape.fsync")
        if not isinstance(self.fsync_interval_s, int | float) or self.fsync_interval_s <= 0:
            raise ConfigError("must be a positive number of seconds", field="tape.fsync_interval_s")
        if not isinstance(self.queue_size, int) or self.queue_size < 1:
            raise ConfigError("must be a positive integer", field="tape.queue_size")
        if not isinstance(self.queue_bytes, int) or self.queue_bytes < 1024:
            raise ConfigError("must be an integer of at least 1024", field="tape.queue_bytes")
        if not isinstance(self.retry_after_error_s, int | float) or self.retry_after_error_s < 0:
            raise ConfigError("must be zero or a positive number of seconds", field="tape.retry_after_error_s")
        if not isinstance(self.block_bytes, int) or not 1024 <= self.block_bytes <= 64 * 1024 * 1024:
            raise ConfigError("must be an integer from 1024 to 67108864", field="tape.block_bytes")
        if self.redaction is not None and not isinstance(self.redaction, RedactionRules):
            raise ConfigError("must be redaction rules or None", field="tape.redaction")
        if self.upload is not None and not isinstance(self.upload, UploadOptions):
            raise ConfigError("must be upload options or None", field="tape.upload")


def tape_target(
    target: str | os.PathLike[str], options: TapeOptions | None = None, spool: str | os.PathLike[str] | None = None
) -> tuple[Path, TapeOptions]:
    """Where a writer writes ``target``, and with what options: a directory as it is, or for an
    ``s3://bucket/prefix`` URL a local spool directory (``spool``, else
    ``shadowtap.recorder.objectstore.default_spool_directory``) whose closed segments are uploaded."""
    options = options or TapeOptions()
    if not is_object_url(target):
        return Path(target), options
    url = os.fspath(target)
    upload = options.upload
    upload = UploadOptions(url=url) if upload is None else dataclasses.replace(upload, url=url)
    directory = Path(spool) if spool is not None else default_spool_directory(url)
    return directory, dataclasses.replace(options, upload=upload)


@dataclass(frozen=True, slots=True)
class TapeWriterStats:
    """A snapshot of a writer's counters.

    Every submitted exchange ends in exactly one of ``written``, ``dropped_queue_full`` (the queue
    held ``queue_size`` exchanges), ``dropped_queue_bytes_full`` (it held ``queue_bytes``),
    ``dropped_closed``, ``encode_errors`` (it could not be encoded) or ``write_errors`` (the disk
    refused the batch that held it, or it arrived while the writer was backing off after such a
    refusal); ``queue_depth`` are still waiting, holding ``queue_bytes``. ``write_errors`` is "not
    known to be written": the frames of a failed batch that reached the disk before the refusal
    are still readable.
    """

    written: int = 0
    dropped_queue_full: int = 0
    dropped_closed: int = 0
    encode_errors: int = 0
    write_errors: int = 0
    queue_depth: int = 0
    bytes_written: int = 0
    segments: int = 0
    last_error: str = ""
    dropped_queue_bytes_full: int = 0
    queue_bytes: int = 0
    #: With ``TapeOptions.upload``: segments uploaded, failed upload attempts (each retried), bytes
    #: of closed segments waiting in the spool, and batches refused because the spool was full
    #: (their exchanges are in ``write_errors``).
    uploaded_segments: int = 0
    upload_failures: int = 0
    upload_pending_bytes: int = 0
    spool_full: int = 0


@dataclass(frozen=True, slots=True)
class IntakeStats:
    """What an ``Intake`` reports: its own cumulative ``counters``, by name (a writer sums them
    over the children it ran), and what it holds now: ``held`` entries of ``held_bytes``."""

    counters: Mapping[str, int]
    held: int = 0
    held_bytes: int = 0


class Intake(Protocol):
    """A producer's step between what it submits to a tape writer and the records written.

    The writer calls ``start`` once in the thread or process that runs it, with where its finished
    exchange records (``shadowtap.recorder.model.exchange_record``) go; then ``take`` for each item
    submitted (``submit_entry``: each ends as one record, or is counted like one; ``submit_extra``:
    adds to an entry), with its size for the intake's own bounds and the monotonic time; ``sweep``
    at least every ``sweep_every_s``; and ``close`` after the last item. In the writer process items
    arrive as msgpack gave back their ``wire()`` array, which starts with their kind (``ITEM_ENTRY``
    or ``ITEM_EXTRA``), and ``load`` makes the item again. ``stats().counters`` has the same names,
    in the same order, in every state. A writer
    process gets the intake pickled: its class must be importable by its qualified name. ``take``
    and ``load`` may raise for a malformed item (counted as an encode error for an entry; for an
    extra, ``discard`` is called). Not thread-safe: one host at a time.
    """

    @property
    def sweep_every_s(self) -> float: ...

    def start(self, emit: Callable[[list[Any]], None]) -> None: ...

    def load(self, raw: Any) -> Any: ...

    def take(self, item: Any, size_bytes: int, now_s: float) -> None: ...

    def discard(self) -> None: ...

    def sweep(self, now_s: float, limit: int | None = None) -> bool: ...

    def close(self) -> None: ...

    def stats(self) -> IntakeStats: ...


#: What a record costs beyond its bodies and header bytes (ids, timings, the lists and small objects
#: that hold them), roughly: byte bounds count bodies and headers exactly and this per record.
RECORD_OVERHEAD_BYTES: Final = 512


def headers_bytes(headers: Any) -> int:
    """The bytes of a header list's names and values."""
    total = 0
    for name, value in headers:
        total += len(name) + len(value)
    return total


def _outcome_bytes(outcome: Any) -> int:
    # A response record: [tag, status, reason, headers, body, ...]; a failure: [tag, kind, message].
    if outcome is None or len(outcome) < 5:
        return 0
    return len(outcome[4]) + headers_bytes(outcome[3])


def record_bytes(record: list[Any]) -> int:
    """About what an exchange record (``shadowtap.recorder.model.exchange_record``) holds: its bodies
    and headers, exactly, and ``RECORD_OVERHEAD_BYTES``."""
    request = record[3]
    total = RECORD_OVERHEAD_BYTES + len(request[3]) + headers_bytes(request[2]) + _outcome_bytes(record[4])
    shadows = record[5]
    if shadows:
        for outcome in shadows.values():
            total += _outcome_bytes(outcome)
    return total


def _exchange_bytes(exchange: Exchange | list[Any]) -> int:
    """What an exchange or record waiting in the queue holds, as ``record_bytes``."""
    if type(exchange) is list:
        return record_bytes(exchange)
    ex: Exchange = exchange  # type: ignore[assignment]  # (no cast(): a call per submit)
    total = RECORD_OVERHEAD_BYTES + len(ex.request.body) + headers_bytes(ex.request.headers)
    for outcome in (ex.primary, *ex.shadows.values()):
        if isinstance(outcome, Response):
            total += len(outcome.body) + headers_bytes(outcome.headers)
    return total


def segment_name(now_ns: int, sequence: int) -> str:
    """``seg-<UTC start>-p<pid>-<sequence>.stape``: sorting names sorts segments by start time."""
    seconds, ns = divmod(now_ns, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC).strftime("%Y%m%dT%H%M%S")
    stamp = f"{stamp}.{ns // 1000:06d}Z"
    return f"seg-{stamp}-p{os.getpid()}-{sequence:06d}{SEGMENT_SUFFIX}"


class SegmentSink:
    """The open segment of one tape directory. Used by one thread at a time; raises TapeWriteError.

    With ``options.upload`` the directory is a spool: each segment it closes goes to a
    ``SegmentUploader`` (started with the first segment it opens, so only the process that writes
    uploads), and a batch that would take the spool past ``max_spool_bytes`` is refused.
    """

    def __init__(self, directory: Path, options: TapeOptions) -> None:
        self.directory = directory
        self.options = options
        self.encoder = FrameEncoder()
        self.rewrite: Callable[[list[Any]], None] | None = None
        self.fd: int | None = None
        self.segment_path: Path | None = None
        self.segment_bytes = 0
        self.segment_opened_s = 0.0
        self.last_sync_s = 0.0
        self.unsynced = False
        self.failed_at_s: float | None = None
        self.sequence = 0
        self.segments = 0
        self.bytes_written = 0
        self.compressor: Any = None
        self.uploader = None if options.upload is None else SegmentUploader(directory, options.upload)
        if options.compression == "zstd":
            import zstandard

            self.compressor = zstandard.ZstdCompressor(level=options.zstd_level, write_content_size=True)

    def prepare(self) -> None:
        """Create the directory and load the redaction key (blocking: call off the event loop)."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise TapeWriteError(
                f"cannot create tape directory: {exc.strerror or exc}", path=str(self.directory)
            ) from exc
        if not self.directory.is_dir():
            raise TapeWriteError("tape path is not a directory", path=str(self.directory))
        # mkdir's 0700 holds only for a directory it made; one that was there may let others in.
        warn_if_shared_directory(self.directory)
        rules = self.options.redaction
        if rules is not None and rules.enabled:
            self.rewrite = Redactor(rules, resolve_redaction_key(rules, self.directory)).redact_record

    def encode(self, exchange: Exchange | list[Any], out: list[bytes]) -> int:
        """Redact and append ``exchange``'s frame parts to ``out``; return the bytes added."""
        if type(exchange) is list:
            return self.encoder.record_parts(exchange, out, self.rewrite)
        return self.encoder.exchange_parts(cast(Exchange, exchange), out, self.rewrite)

    def write(self, parts: list[bytes]) -> None:
        """Write encoded frames (one zstd block when compressing), rotating and syncing by policy."""
        data = b"".join(parts)
        if self.compressor is not None:
            data = encode_frame(KIND_ZSTD_BLOCK, self.compressor.compress(data))
        now_s = time.monotonic()
        if self.failed_at_s is not None and now_s - self.failed_at_s < self.options.retry_after_error_s:
            raise TapeWriteError(
                f"not written: the disk refused a write {now_s - self.failed_at_s:.1f} s ago "
                f"(retrying {self.options.retry_after_error_s:g} s after it)",
                path=str(self.directory),
            )
        if self.fd is not None and (
            self.segment_bytes + len(data) > self.options.max_segment_bytes
            or now_s - self.segment_opened_s >= self.options.max_segment_age_s
        ):
            self.close_segment()
        uploader = self.uploader
        if uploader is not None and not uploader.admits(len(data) + (self.segment_bytes if self.fd is not None else 0)):
            raise TapeWriteError(
                f"not written: the spool holds {uploader.pending_bytes} bytes not yet uploaded to "
                f"{uploader.url} (max_spool_bytes {uploader.options.max_spool_bytes})",
                path=str(self.directory),
            )
        if self.fd is None:
            self._open_segment(now_s)
        assert self.fd is not None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            self._refused(exc)
            raise TapeWriteError(f"tape write failed: {exc.strerror or exc}", path=str(self.segment_path)) from exc
        self.segment_bytes += len(data)
        self.bytes_written += len(data)
        self.unsynced = True
        if self.options.fsync == "every":
            self.sync()
        elif self.options.fsync == "interval":
            self.sync_if_due(now_s)

    def sync_if_due(self, now_s: float) -> None:
        if self.unsynced and now_s - self.last_sync_s >= self.options.fsync_interval_s:
            self.sync()

    def sync(self) -> None:
        if self.fd is None or not self.unsynced:
            return
        try:
            os.fsync(self.fd)
        except OSError as exc:
            self._abandon_segment()
            raise TapeWriteError(f"tape fsync failed: {exc.strerror or exc}", path=str(self.segment_path)) from exc
        self.unsynced = False
        self.last_sync_s = time.monotonic()

    def close_segment(self) -> None:
        if self.fd is None:
            return
        try:
            if self.options.fsync != "none":
                self.sync()
        finally:
            if self.fd is not None:
                fd, self.fd = self.fd, None
                try:
                    os.close(fd)
                except OSError as exc:
                    raise TapeWriteError(
                        f"tape close failed: {exc.strerror or exc}", path=str(self.segment_path)
                    ) from exc
                finally:
                    self._remove_if_empty()
                    self._hand_over()

    def close(self) -> None:
        """Close the segment, then wait (up to ``upload.drain_timeout_s``) for the uploads left."""
        try:
            self.close_segment()
        finally:
            if self.uploader is not None:
                self.uploader.close()

    def with_upload_counters(self, stats: TapeWriterStats) -> TapeWriterStats:
        """``stats`` with the uploader's counters (as they are without upload)."""
        if self.uploader is None:
            return stats
        upload = self.uploader.stats
        return dataclasses.replace(
            stats,
            uploaded_segments=upload.uploaded,
            upload_failures=upload.failures,
            upload_pending_bytes=upload.pending_bytes,
            spool_full=upload.spool_full,
            last_error=stats.last_error or upload.last_error,
        )

    def _hand_over(self) -> None:
        """A closed segment with exchanges in it goes to the uploader."""
        if self.uploader is not None and self.segment_path is not None:
            segment_closed(self.segment_path)
            if self.segment_bytes > SEGMENT_HEADER_SIZE:
                self.uploader.submit(self.segment_path)

    def _open_segment(self, now_s: float) -> None:
        if self.uploader is not None:
            self.uploader.start()
        self.sequence += 1
        path = self.directory / segment_name(time.time_ns(), self.sequence)
        flags = FLAG_ZSTD if self.compressor is not None else 0
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self.failed_at_s = now_s
            raise TapeWriteError(f"cannot create tape segment: {exc.strerror or exc}", path=str(path)) from exc
        self.fd, self.segment_path = fd, path
        if self.uploader is not None:
            segment_opened(path)
        self.segment_bytes = 0
        header = encode_segment_header(flags)
        try:
            os.write(fd, header)
            if self.options.fsync != "none":
                # The new name must survive a crash too, not only the bytes in the file.
                os.fsync(fd)
                dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            self._abandon_segment()
            raise TapeWriteError(f"cannot start tape segment: {exc.strerror or exc}", path=str(path)) from exc
        self.segment_bytes = len(header)
        self.bytes_written += len(header)
        self.segment_opened_s = now_s
        self.last_sync_s = now_s
        self.unsynced = False
        self.segments += 1

    def _refused(self, exc: OSError) -> None:
        """After a refused write: cut the segment back to its last whole block, so it never ends in
        a torn frame, and keep it for the retry when the disk is full; else close it."""
        self.failed_at_s = time.monotonic()
        assert self.fd is not None
        try:
            os.ftruncate(self.fd, self.segment_bytes)
        except OSError:
            self._abandon_segment()  # the partial frame stays: readers report it as a torn tail
            return
        if exc.errno not in _DISK_FULL:
            self._abandon_segment()

    def _abandon_segment(self) -> None:
        # After a failed write or sync the next batch starts a fresh segment rather than appending
        # after possible damage.
        self.failed_at_s = time.monotonic()
        if self.fd is not None:
            fd, self.fd = self.fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
            self._remove_if_empty()
            self._hand_over()

    def _remove_if_empty(self) -> None:
        """Remove the closed segment if nothing but (part of) its header reached it: a file with no
        exchange in it is only something for readers to report as torn."""
        if self.segment_bytes > SEGMENT_HEADER_SIZE or self.segment_path is None:
            return
        with contextlib.suppress(OSError):
            self.segment_path.unlink()
            self.bytes_written -= self.segment_bytes
            if self.segment_bytes == SEGMENT_HEADER_SIZE:
                self.segments -= 1
        self.segment_bytes = 0


class DiscardSink(SegmentSink):
    """A ``SegmentSink`` with no directory: it redacts and encodes as for a tape and writes nothing,
    for a writer whose batches matter only to its tap (``BlockWriter.tap``). It touches no file."""

    def __init__(self, options: TapeOptions) -> None:
        # No compression (its blocks are never written) and no upload (no segment is ever closed).
        super().__init__(Path(os.devnull), dataclasses.replace(options, compression="none", upload=None))

    def prepare(self) -> None:
        """Load the redaction key (blocking: call off the event loop); no directory to create."""
        rules = self.options.redaction
        if rules is not None and rules.enabled:
            self.rewrite = Redactor(rules, resolve_redaction_key(rules)).redact_record

    def write(self, parts: list[bytes]) -> None:
        return None


class ErrorNotes:
    """The last error message, with each kind of error logged once (later ones are only counted)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.last = ""
        self._log = logger
        self._logged: set[str] = set()

    def note(self, kind: str, message: str) -> None:
        self.last = message
        if kind not in self._logged:
            self._logged.add(kind)
            self._log.error("%s (further %s errors are counted, not logged)", message, kind)

    def encode_failed(self, record: Any, exc: Exception) -> None:
        ident = record[0] if type(record) is list and record else getattr(record, "id", None)
        if ident is None:
            ident = getattr(record, "exchange_id", "?")
        self.note("encode", f"cannot encode exchange {ident!r}: {exc}")


class BlockWriter:
    """Encodes records into blocks and writes them through a sink, counting every record's fate.

    The loop the tape writer's thread runs and the tape writer process (``shadowtap.recorder.tape_process``)
    runs: one place decides what is written, what failed to encode and what the disk refused. Used by
    one thread at a time; never raises for a bad record or a disk error (both are counted, and logged
    once per kind).
    """

    def __init__(self, sink: SegmentSink) -> None:
        self.sink = sink
        self.written = 0
        self.encode_errors = 0
        self.write_errors = 0
        self.errors = ErrorNotes(log)
        #: Given each batch written (its frames' parts, before compression, and how many exchanges
        #: they are): a copy for a reader beside the tape (``shadowtap.recorder.tape_process.PipeTap``).
        #: It must never block or raise.
        self.tap: Callable[[list[bytes], int], None] | None = None

    def write_from(self, take: Callable[[], Exchange | list[Any] | None]) -> None:
        """Encode and write records from ``take`` until it returns None, one block at a time."""
        block_bytes = self.sink.options.block_bytes
        exchange = take()
        while exchange is not None:
            parts: list[bytes] = []
            size = count = 0
            while exchange is not None:
                try:
                    size += self.sink.encode(exchange, parts)
                except Exception as exc:  # a malformed exchange must not stop the writer
                    self.encode_errors += 1
                    self.errors.encode_failed(exchange, exc)
                else:
                    count += 1
                if count >= _BATCH_EXCHANGES or size >= block_bytes:
                    break
                exchange = take()
            if count and self.guard(self.sink.write, parts, lost=count):
                self.written += count
                if self.tap is not None:
                    self.tap(parts, count)
            if exchange is not None:
                exchange = take()

    def guard(self, action: Callable[..., None], *args: Any, lost: int) -> bool:
        """Run a disk action; on ``TapeWriteError`` count ``lost`` records as write errors."""
        try:
            action(*args)
        except TapeWriteError as exc:
            self.write_errors += lost
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno:
                kind = errno.errorcode.get(cause.errno, "OSError")
            else:
                kind = "not-written"
            self.errors.note(kind, str(exc))
            return False
        return True


class SyncTapeWriter:
    """A blocking tape writer for importers, the CLI and tests (same bytes as ``TapeWriter``).

    ``write`` buffers up to ``block_bytes`` before writing, except with ``fsync="every"``, where the
    exchange is written and synced before ``write`` returns. Disk errors raise ``TapeWriteError``.
    """

    def __init__(self, directory: str | os.PathLike[str], options: TapeOptions | None = None) -> None:
        self._sink = SegmentSink(*tape_target(directory, options))
        self._every = self._sink.options.fsync == "every"
        self._block_bytes = self._sink.options.block_bytes
        self._parts: list[bytes] = []
        self._buffered_bytes = 0
        self._buffered_count = 0
        self._written = 0
        self._encode_errors = 0
        self._closed = False
        self._sink.prepare()

    def __enter__(self) -> SyncTapeWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def write(self, exchange: Exchange) -> None:
        if self._closed:
            raise TapeWriteError("tape writer is closed", path=str(self._sink.directory))
        self._buffered_bytes += self._sink.encode(exchange, self._parts)
        self._buffered_count += 1
        if self._every:
            self.flush()
        elif self._buffered_bytes >= self._block_bytes:
            self._write_buffered()

    def write_many(self, exchanges: Iterable[Exchange]) -> int:
        count = 0
        for exchange in exchanges:
            self.write(exchange)
            count += 1
        return count

    def flush(self) -> None:
        """Write what is buffered and sync it (unless ``fsync="none"``): durable when this returns."""
        self._write_buffered()
        if self._sink.options.fsync != "none":
            self._sink.sync()

    def _write_buffered(self) -> None:
        # The sink applies the fsync policy ("interval" syncs here at most once per interval).
        if self._parts:
            parts, count = self._parts, self._buffered_count
            self._parts, self._buffered_bytes, self._buffered_count = [], 0, 0
            self._sink.write(parts)
            self._written += count

    def close(self) -> None:
        """Write what is buffered and close the segment; with upload, wait (up to
        ``drain_timeout_s``) for the uploads, and raise ``TapeWriteError`` if some are left (they
        stay in the spool, for the next writer over it)."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._sink.close()
        uploader = self._sink.uploader
        if uploader is not None and uploader.stats.pending:
            upload = uploader.stats
            raise TapeWriteError(
                f"{upload.pending} segment(s) not uploaded ({upload.last_error or 'still uploading'}); they stay in "
                f"{self._sink.directory} and the next writer over it uploads them",
                url=str(uploader.url),
            )

    @property
    def stats(self) -> TapeWriterStats:
        stats = TapeWriterStats(
            written=self._written,
            queue_depth=self._buffered_count,
            bytes_written=self._sink.bytes_written,
            segments=self._sink.segments,
        )
        return self._sink.with_upload_counters(stats)


class AsyncWriterBase:
    """``async with`` for the asyncio tape writers: ``start()`` on entry, ``close()`` on exit."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


#: What an item in a writer's queue is: a record or exchange to write, or an intake's entry or extra.
ITEM_RECORD: Final = 0
ITEM_ENTRY: Final = 1
ITEM_EXTRA: Final = 2


class TapeWriter(AsyncWriterBase):
    """The asyncio tape writer: ``submit`` never blocks or raises; a thread does the disk work.

    ``await start()`` creates the directory and key (raising ``TapeWriteError`` for an unusable
    path); ``await close()`` (or leaving ``async with``) writes everything queued and syncs. The
    thread is a daemon, so a process that exits without ``close()`` loses what was still queued,
    like a crash: the tape stays readable up to its last complete frame. Given an ``intake``, the
    thread runs it (``submit_entry``, ``submit_extra``); its entries count as records everywhere.
    """

    def __init__(
        self, directory: str | os.PathLike[str], options: TapeOptions | None = None, intake: Intake | None = None
    ) -> None:
        self._sink = SegmentSink(*tape_target(directory, options))
        self._options = self._sink.options
        self._intake = intake
        # Bounded by the checks in _admit() against options.queue_size and queue_bytes (see
        # TapeOptions). Each item waits with its size and kind (ITEM_*). deque.append/popleft are
        # atomic, so submit takes no lock.
        self._pending: collections.deque[tuple[Any, int, int]] = collections.deque()
        # Records the intake finished, written before the next item is taken (the thread's only).
        self._ready: collections.deque[list[Any]] = collections.deque()
        # The bytes queued (added to by the loop only) and taken (by the thread only): each has one
        # writer, so neither needs a lock; their difference is what the queue holds.
        self._bytes_in = 0
        self._bytes_out = 0
        self._dropped_queue_bytes_full = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._closing = False
        self._blocks = BlockWriter(self._sink)
        self._dropped_queue_full = 0
        self._dropped_closed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_scheduled = False

    async def start(self) -> None:
        """Create the directory and key, then start the background writer. Raises on a bad path."""
        if self._thread is not None:
            return
        loop = self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._sink.prepare)
        self._stopped = loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(loop, self._stopped), name=f"tape-writer:{self._sink.directory}", daemon=True
        )
        self._thread.start()

    def submit(self, exchange: Exchange) -> bool:
        """Queue ``exchange`` for writing; False when it was dropped (queue full or closed)."""
        return self.submit_records([exchange]) == 1

    def submit_record(self, record: list[Any]) -> bool:
        """Queue one record in wire form (``shadowtap.recorder.model.exchange_record``, which the writer then
        owns); False when it was dropped (queue full or closing) and counted. For a caller on the
        event loop that ``start``ed the writer: the thread is woken once per ``WAKE_DELAY_S``."""
        return self._submit(record, _exchange_bytes(record), ITEM_RECORD)

    @property
    def hosts_intake(self) -> bool:
        """Whether the thread runs an intake (``submit_entry``, ``submit_extra``)."""
        return self._intake is not None

    def submit_entry(self, item: Any) -> bool:
        """Queue an item for the intake that ends as one record (it has ``size_bytes()``); False when
        it was dropped and counted, like ``submit_record``."""
        assert self._intake is not None, "submit_entry needs a writer given an intake"
        return self._submit(item, item.size_bytes(), ITEM_ENTRY)

    def submit_extra(self, item: Any) -> bool:
        """Queue an item for the intake that only adds to an entry; False when it was refused (the
        caller counts it: it is not a record)."""
        assert self._intake is not None, "submit_extra needs a writer given an intake"
        return self._submit(item, item.size_bytes(), ITEM_EXTRA)

    @property
    def intake_stats(self) -> IntakeStats:
        """The intake's counters and what it holds (read while the thread runs it: a snapshot)."""
        return IntakeStats({}) if self._intake is None else self._intake.stats()

    def _submit(self, item: Any, size: int, kind: int) -> bool:
        counted = kind != ITEM_EXTRA
        if self._closing:
            if counted:
                self._dropped_closed += 1
            return False
        if not self._admit(item, size, kind):
            return False
        if not self._wake_scheduled:
            self._wake_scheduled = True
            if self._loop is None:
                self._wake_now()
            else:
                self._loop.call_later(WAKE_DELAY_S, self._wake_now)
        return True

    def _admit(self, item: Any, size: int, kind: int) -> bool:
        """Queue one item if the bounds allow; else count it dropped (a record or an entry), by the
        bound it hit."""
        pending = self._pending
        if len(pending) >= self._options.queue_size:
            if kind != ITEM_EXTRA:
                self._dropped_queue_full += 1
            return False
        held = self._bytes_in - self._bytes_out
        if held and held + size > self._options.queue_bytes:
            if kind != ITEM_EXTRA:
                self._dropped_queue_bytes_full += 1
            return False
        self._bytes_in += size
        pending.append((item, size, kind))
        return True

    def _wake_now(self) -> None:
        self._wake_scheduled = False
        self._wake.set()

    def submit_records(self, records: Sequence[Exchange | list[Any]]) -> int:
        """Queue exchanges, or records already in wire form (``shadowtap.recorder.model.exchange_record``,
        which the writer then owns), in order; return how many were taken. The rest were dropped and
        counted: the queue was full, or the writer is closing. One wake-up of the thread for all."""
        if self._closing:
            self._dropped_closed += len(records)
            return 0
        taken = 0
        for record in records:
            taken += self._admit(record, _exchange_bytes(record), ITEM_RECORD)
        if taken and not self._wake.is_set():
            self._wake.set()
        return taken

    async def close(self) -> None:
        """Stop accepting, write everything queued (and all the intake holds), sync and close the segment."""
        self._closing = True
        if self._thread is None or self._stopped is None:
            return
        self._wake.set()
        await asyncio.shield(self._stopped)

    @property
    def stats(self) -> TapeWriterStats:
        blocks = self._blocks
        stats = TapeWriterStats(
            written=blocks.written,
            dropped_queue_full=self._dropped_queue_full,
            dropped_closed=self._dropped_closed,
            encode_errors=blocks.encode_errors,
            write_errors=blocks.write_errors,
            queue_depth=len(self._pending),
            bytes_written=self._sink.bytes_written,
            segments=self._sink.segments,
            last_error=blocks.errors.last,
            dropped_queue_bytes_full=self._dropped_queue_bytes_full,
            queue_bytes=self._bytes_in - self._bytes_out,
        )
        return self._sink.with_upload_counters(stats)

    # --- background thread ---------------------------------------------------------------------

    def _run(self, loop: asyncio.AbstractEventLoop, stopped: asyncio.Future[None]) -> None:
        wait_s = min(self._options.fsync_interval_s, 1.0) if self._options.fsync == "interval" else 1.0
        intake = self._intake
        if intake is not None:
            intake.start(self._ready.append)
            wait_s = min(wait_s, intake.sweep_every_s)
        blocks = self._blocks
        try:
            while True:
                self._wake.wait(wait_s)
                self._wake.clear()
                if intake is not None:
                    intake.sweep(time.monotonic())
                blocks.write_from(self._take)
                if self._options.fsync == "interval":
                    blocks.guard(self._sink.sync_if_due, time.monotonic(), lost=0)
                if self._closing and not self._pending:
                    break
            if intake is not None:
                intake.close()
                blocks.write_from(self._take)
            blocks.guard(self._sink.close, lost=0)
        except Exception:
            # A bug, not a disk error: stop accepting, so the loss shows in dropped_closed, and say so.
            self._closing = True
            log.exception("tape writer for %s stopped; exchanges are no longer written", self._sink.directory)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody is waiting
                loop.call_soon_threadsafe(_resolve, stopped)

    def _take(self) -> Exchange | list[Any] | None:
        ready, pending = self._ready, self._pending
        while not ready:
            if not pending:
                return None
            item, size, kind = pending.popleft()
            self._bytes_out += size
            if kind == ITEM_RECORD:
                record: Exchange | list[Any] = item  # (no cast(): a call per record on this path)
                return record
            intake_item(self._intake, self._blocks, item, size, kind == ITEM_ENTRY)
        return ready.popleft()


def intake_item(
    intake: Intake | None, blocks: BlockWriter, item: Any, size: int, entry: bool, packed: bool = False
) -> None:
    """Hand one item to ``intake`` (``packed``: as msgpack gave back its ``wire()`` array, for
    ``Intake.load``): a malformed entry is an encode error (it was a record for every counter), a
    malformed extra is discarded."""
    try:
        if intake is None:
            raise ValueError("an item for an intake, but this writer has none")
        intake.take(intake.load(item) if packed else item, size, time.monotonic())
    except Exception as exc:  # a malformed item costs itself, counted, never the writer
        if entry:
            blocks.encode_errors += 1
            blocks.errors.encode_failed(item, exc)
        else:
            blocks.errors.note("extra", f"an item could not be taken: {exc}")
            if intake is not None:
                intake.discard()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
