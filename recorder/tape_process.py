"""The tape writer in a child process, so the disk work never holds the proxy's GIL.

``ProcessTapeWriter`` has ``TapeWriter``'s interface. The event loop packs each record (ormsgpack,
a microsecond or two) and writes a batch to a pipe in one call; a child process running this module
(``python -m shadowtap.recorder.tape_process DIR``) unpacks, redacts, encodes, compresses, writes and syncs
with the same ``BlockWriter`` and ``SegmentSink`` as the thread, so the tape is the same bytes.
With the thread, that work takes the GIL from the proxy's loop about a quarter of the time it runs;
here it runs on another core.

The contract is the thread writer's: ``submit_record`` never blocks or raises, and every record
ends in exactly one counter of ``TapeWriterStats``.

Given an ``Intake`` (``shadowtap.recorder.writer.Intake``), the child runs it: the parent sends it
pickled before anything else, so its class must be importable by name in the child. ``submit_entry``
and ``submit_extra`` pack an item's ``wire()`` array; the child reads it back with the intake's
``load`` and hands it to ``take``, and writes the records the intake finishes. Its counters and what
it holds come back with the child's other counters (``intake_stats``). An entry is a record for every
counter above. An extra is not: a dropped one is only refused (the caller counts it).

- Bound: at most ``queue_size`` records and parts, and ``queue_bytes`` of them packed, are in
  flight (packed, not yet reported read off the pipe by the child: what waits to be sent, the
  transport's buffer, the pipe, the child's unread input); beyond either, they are dropped and
  counted (``dropped_queue_full``, ``dropped_queue_bytes_full``), so a stopped child or a hung disk
  costs bounded memory. What an intake holds is bounded by the intake (each item is measured by
  its packed length).
- The child reports its cumulative counters on stdout after every batch it writes (and at least
  every second): the parent's stats lag by one batch.
- The child ignores SIGINT and SIGTERM: the parent owns its life. ``close()`` closes the pipe; the
  child writes what it was sent, syncs, closes the segment and exits. If the parent dies, the child
  sees the pipe close and does the same, so a crash of the proxy loses nothing it had sent.
- If the child dies, the records it had not reported done are counted in ``write_errors`` (not
  known to be written: the frames that reached the disk are still readable). That includes the
  entries its intake held. A new child starts after ``_RESTART_AFTER_S``; records
  submitted meanwhile are counted as write errors too.

Given a ``tap_fd`` (the write end of a pipe), the child also writes a copy of every batch it writes
to the tape there (``PipeTap``): the exchange frames as they go into the segment, before
compression, whole frames only. The pipe is non-blocking: a batch that finds it full is dropped and
counted (``tap_stats``), so a slow or dead reader never delays the tape. The parent keeps the pipe
open across restarts of the child (and of the reader), so a reader sees one stream of frames; after
a reader restarts it may start inside a frame, and finds the next by its sync bytes and checksum.

Given no directory (``ProcessTapeWriter(None, ..., tap_fd=...)``), the child redacts, encodes and
taps exactly as for a tape and writes nothing (``DiscardSink``): the tap is then its only output.
Its counters are the same (``written`` counts the exchanges it took to their end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import select
import signal
import struct
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgpack

from shadowtap.recorder._frames import FrameEncoder
from shadowtap.recorder.errors import TapeWriteError
from shadowtap.recorder.model import Exchange, exchange_to_wire
from shadowtap.recorder.writer import (
    ITEM_ENTRY,
    ITEM_EXTRA,
    ITEM_RECORD,
    AsyncWriterBase,
    BlockWriter,
    DiscardSink,
    ErrorNotes,
    Intake,
    IntakeStats,
    SegmentSink,
    TapeOptions,
    TapeWriterStats,
    intake_item,
)

__all__ = ["PipeTap", "ProcessTapeWriter", "TapStats"]

log = logging.getLogger(__name__)

#: A dead child is replaced after this long: soon enough that a one-off crash loses about a second
#: of recording, late enough that a child that cannot start does not spin.
_RESTART_AFTER_S: Final = 1.0
#: How long start() waits for the child's first report (interpreter start and imports: ~0.2 s).
_START_TIMEOUT_S: Final = 30.0
#: The child reads the pipe in chunks this big: one chunk is one or a few blocks on disk.
_READ_BYTES: Final = 1 << 20
#: Packed records wait at most this long (or until _SEND_BYTES of them) before one write to the
#: pipe: one system call per batch, not per exchange.
_SEND_DELAY_S: Final = 0.005
_SEND_BYTES: Final = 256 * 1024
#: The options message before the item stream: its length, then the pickled (TapeOptions, Intake
#: or None).
_OPTIONS_LENGTH = struct.Struct("!I")
#: The parent reads the child's reports (~50 bytes each) this many bytes at a time, into an unpacker
#: whose buffer starts at _REPORT_BUFFER_BYTES. msgpack's default buffer is 1 MiB, filled from the
#: front and wrapped only at its end: the reports touched a new page of it every ~80 reports, which
#: showed as the proxy's RSS creeping ~0.5 byte per recorded request for its first ~2M requests.
_REPORT_READ_BYTES: Final = 4096
_REPORT_BUFFER_BYTES: Final = 16 * 1024
#: The upload counters of a writer that does not upload (zeros), and the base ``report`` fills in.
_NO_UPLOAD: Final = TapeWriterStats()
#: At close, how long the child waits for the tap's reader to take the rest of a batch it had begun.
_TAP_CLOSE_WAIT_S: Final = 1.0
#: The child's argument in place of a directory when it writes no tape.
_NO_TAPE_ARG: Final = "--no-tape"


@dataclass(frozen=True, slots=True)
class TapStats:
    """The tap's counters: exchanges copied to the pipe, and exchanges dropped because it was full
    (or its reader gone). Every exchange written to the tape ends in one of them."""

    frames: int = 0
    dropped: int = 0


class PipeTap:
    """A copy of each batch the writer writes, to a non-blocking pipe: whole frames, or dropped.

    ``BlockWriter.tap``. A batch is written whole or not at all: when a write takes only part of it
    (the pipe had less room than the batch), the rest is kept and written before anything else, and
    later batches are dropped until it is through; so the reader never sees a frame cut short.
    Holds at most one batch (one tape block, ``TapeOptions.block_bytes``).
    """

    __slots__ = ("_broken", "_pending", "dropped", "fd", "frames")

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.frames = 0
        self.dropped = 0
        self._pending = memoryview(b"")
        self._broken = False

    @property
    def pending(self) -> bool:
        """Whether part of a batch waits for room in the pipe."""
        return bool(self._pending)

    def __call__(self, parts: list[bytes], count: int) -> None:
        if self._broken or not self.flush():
            self.dropped += count
            return
        data = b"".join(parts)
        try:
            written = os.write(self.fd, data)
        except BlockingIOError:
            self.dropped += count
            return
        except OSError:  # the reader's end is gone for good (the parent holds it open: not expected)
            self._broken = True
            self.dropped += count
            return
        self.frames += count
        if written < len(data):
            self._pending = memoryview(data)[written:]

    def flush(self) -> bool:
        """Write what is left of a batch begun; True when nothing is left."""
        while self._pending:
            try:
                written = os.write(self.fd, self._pending)
            except BlockingIOError:
                return False
            except OSError:
                self._broken = True
                self._pending = memoryview(b"")
                return False
            self._pending = self._pending[written:]
        return True

    def close(self, wait_s: float = _TAP_CLOSE_WAIT_S) -> None:
        """Give the rest of a batch begun up to ``wait_s`` to go through, then close the pipe."""
        deadline = time.monotonic() + wait_s
        while not self.flush() and not self._broken and (left := deadline - time.monotonic()) > 0:
            select.select([], [self.fd], [], left)
        with contextlib.suppress(OSError):
            os.close(self.fd)


@dataclass(slots=True)
class _Report:
    """One child's cumulative counters; ``consumed`` = written + encode_errors + write_errors.

    ``records_taken`` and ``extras_taken`` count what it has read off the pipe (records and
    entries; extras), ``bytes_taken`` their packed bytes; then its intake's counters and what the
    intake holds.
    """

    consumed: int = 0
    written: int = 0
    encode_errors: int = 0
    write_errors: int = 0
    bytes_written: int = 0
    segments: int = 0
    last_error: str = ""
    records_taken: int = 0
    extras_taken: int = 0
    bytes_taken: int = 0
    #: The intake's counter values, in the order of its ``stats().counters`` (names are not sent).
    intake_counters: list[int] = field(default_factory=list)
    intake_held: int = 0
    intake_held_bytes: int = 0
    #: With upload (``TapeOptions.upload``): the uploader's counters, as in ``TapeWriterStats``.
    uploaded_segments: int = 0
    upload_failures: int = 0
    upload_pending_bytes: int = 0
    spool_full: int = 0
    #: With a tap: exchanges copied to it, and dropped because it was full.
    tap_frames: int = 0
    tap_dropped: int = 0


def _summed(a: Sequence[int], b: Sequence[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)] if a and b else list(a or b)


class _Child:
    """One writer process and what the parent has sent it."""

    __slots__ = ("bytes_sent", "exited", "extras_sent", "process", "ready", "report", "sent")

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        #: Records (and entries) sent; extras sent; the packed bytes of both.
        self.sent = 0
        self.extras_sent = 0
        self.bytes_sent = 0
        self.report = _Report()
        self.ready = asyncio.get_running_loop().create_future()
        self.exited = asyncio.get_running_loop().create_future()


class ProcessTapeWriter(AsyncWriterBase):
    """The asyncio tape writer whose disk work runs in a child process (module docstring).

    ``await start()`` creates the directory and key (raising ``TapeWriteError`` for an unusable
    path) and starts the child; ``await close()`` (or leaving ``async with``) has it write
    everything sent, sync and exit. With an ``intake``, the child runs it; with ``directory`` None,
    it writes no tape, only to its tap (module docstring).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None,
        options: TapeOptions | None = None,
        intake: Intake | None = None,
        *,
        tap_fd: int | None = None,
    ) -> None:
        self._directory = None if directory is None else Path(directory)
        #: Where its errors say it writes.
        self._where = "(no tape)" if directory is None else str(directory)
        #: The write end of the tap's pipe (module docstring); the caller owns it and keeps it open.
        self._tap_fd = tap_fd
        self._options = options or TapeOptions()
        self._intake = intake
        #: The intake's counter names, in the order the child reports their values.
        self._counter_names = () if intake is None else tuple(intake.stats().counters)
        self._pack = FrameEncoder().pack
        self._child: _Child | None = None
        # Records packed for the child, not yet written to the pipe (counted in child.sent).
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._send_timer: asyncio.TimerHandle | None = None
        self._started = False
        self._closing = False
        self._restart: asyncio.Task[None] | None = None
        # Counters of children that have exited, plus what the parent counted itself.
        self._done = _Report()
        self._dropped_queue_full = 0
        self._dropped_queue_bytes_full = 0
        self._dropped_closed = 0
        self._errors = ErrorNotes(log)

    async def start(self) -> None:
        """Create the directory and key, then start the child. Raises ``TapeWriteError``."""
        if self._started:
            return
        # The parent resolves the key first, so an unusable path fails here, in the caller's
        # terms, and the child only reads the key file (or the environment) it finds.
        sink = DiscardSink(self._options) if self._directory is None else SegmentSink(self._directory, self._options)
        await asyncio.to_thread(sink.prepare)
        await self._spawn()
        self._started = True

    def submit(self, exchange: Exchange) -> bool:
        """Queue ``exchange`` for writing; False when it was dropped (queue full or closed)."""
        return self.submit_record(exchange_to_wire(exchange))

    def submit_record(self, record: list[Any]) -> bool:
        """Pack one record in wire form (``shadowtap.recorder.model.exchange_record``) for the child; False
        when it was dropped and counted (``TapeWriter.submit_record``). Packed now, while the
        record is fresh in the cache; written to the pipe with others within ``_SEND_DELAY_S``."""
        return self._submit(record, ITEM_RECORD)

    @property
    def hosts_intake(self) -> bool:
        """Whether the child runs an intake (``submit_entry`` and ``submit_extra``)."""
        return self._intake is not None

    def submit_entry(self, item: Any) -> bool:
        """An item for the child's intake that ends as one record (its ``wire()`` array is sent). A
        record for every counter: False when it was dropped and counted, like ``submit_record``."""
        assert self._intake is not None, "submit_entry needs a writer given an intake"
        return self._submit(item.wire(), ITEM_ENTRY)

    def submit_extra(self, item: Any) -> bool:
        """An item for the child's intake that only adds to an entry. Not a record: False when it
        was refused, and the caller counts it."""
        assert self._intake is not None, "submit_extra needs a writer given an intake"
        return self._submit(item.wire(), ITEM_EXTRA)

    def _submit(self, item: Any, kind: int) -> bool:
        is_record = kind != ITEM_EXTRA
        if self._closing:
            if is_record:
                self._dropped_closed += 1
            return False
        child = self._child
        if child is None or not child.ready.done() or child.exited.done():
            if is_record:
                self._done.write_errors += 1
                self._errors.note("down", "not written: the tape writer process is not running (restarting)")
            return False
        report = child.report
        options = self._options
        if (child.sent - report.records_taken) + (child.extras_sent - report.extras_taken) >= options.queue_size:
            if is_record:
                self._dropped_queue_full += 1
            return False
        held = child.bytes_sent - report.bytes_taken
        if held >= options.queue_bytes:  # full already: not worth packing
            if is_record:
                self._dropped_queue_bytes_full += 1
            return False
        try:
            data = self._pack(item)
        except Exception as exc:  # a record msgpack cannot hold must not reach the pipe
            if not is_record:
                return False
            self._done.encode_errors += 1
            self._errors.encode_failed(item, exc)
            return True
        size = len(data)
        if held and held + size > options.queue_bytes:
            if is_record:
                self._dropped_queue_bytes_full += 1
            return False
        child.bytes_sent += size
        self._out.append(data)
        self._out_bytes += size
        if is_record:
            child.sent += 1
        else:
            child.extras_sent += 1
        if self._out_bytes >= _SEND_BYTES:
            self._send()
        elif self._send_timer is None:
            self._send_timer = asyncio.get_running_loop().call_later(_SEND_DELAY_S, self._send)
        return True

    def submit_records(self, records: Sequence[list[Any]]) -> int:
        """``submit_record`` for each, sent at once; how many were taken."""
        taken = sum(self.submit_record(record) for record in records)
        self._send()
        return taken

    def _send(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        out, self._out, self._out_bytes = self._out, [], 0
        child = self._child
        if out and child is not None:
            stdin = child.process.stdin
            if stdin is not None and not stdin.is_closing():
                # Buffered by the transport if the pipe is full; a pipe that broke under it (the child
                # died) costs these records, counted as write errors when the child is retired.
                with contextlib.suppress(Exception):
                    stdin.write(b"".join(out))

    async def close(self) -> None:
        """Stop accepting; the child writes everything sent, syncs, closes the segment and exits."""
        self._closing = True
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        self._send()
        child = self._child
        if child is None:
            return
        stdin = child.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        await asyncio.shield(child.exited)

    @property
    def stats(self) -> TapeWriterStats:
        done = self._done
        child = self._child
        now = child.report if child is not None else _Report()
        return TapeWriterStats(
            written=done.written + now.written,
            dropped_queue_full=self._dropped_queue_full,
            dropped_closed=self._dropped_closed,
            encode_errors=done.encode_errors + now.encode_errors,
            write_errors=done.write_errors + now.write_errors,
            queue_depth=(child.sent - now.records_taken) + (child.extras_sent - now.extras_taken) if child else 0,
            bytes_written=done.bytes_written + now.bytes_written,
            segments=done.segments + now.segments,
            last_error=now.last_error or self._errors.last,
            dropped_queue_bytes_full=self._dropped_queue_bytes_full,
            queue_bytes=child.bytes_sent - now.bytes_taken if child else 0,
            uploaded_segments=done.uploaded_segments + now.uploaded_segments,
            upload_failures=done.upload_failures + now.upload_failures,
            upload_pending_bytes=now.upload_pending_bytes,
            spool_full=done.spool_full + now.spool_full,
        )

    @property
    def intake_stats(self) -> IntakeStats:
        """The intake's counters, over every child this writer ran (they lag a batch), and what the
        running child's intake holds."""
        names = self._counter_names
        child = self._child
        if child is None:
            return IntakeStats(dict(zip(names, self._done.intake_counters, strict=False)))
        now = child.report
        counters = _summed(self._done.intake_counters, now.intake_counters)
        return IntakeStats(dict(zip(names, counters, strict=False)), now.intake_held, now.intake_held_bytes)

    @property
    def tap_stats(self) -> TapStats:
        """The tap's counters over every child this writer ran (they lag a batch)."""
        now = self._child.report if self._child is not None else _Report()
        return TapStats(self._done.tap_frames + now.tap_frames, self._done.tap_dropped + now.tap_dropped)

    @property
    def pid(self) -> int | None:
        """The running child's pid (for operators and tests), or None."""
        child = self._child
        if child is None or not child.ready.done() or child.exited.done():
            return None
        return child.process.pid

    # --- the child's life ------------------------------------------------------------------------

    async def _spawn(self) -> None:
        env = dict(os.environ)
        # The child imports this package from where the parent did (a source tree or a worktree
        # runs without being installed).
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        tap = () if self._tap_fd is None else ("--tap-fd", str(self._tap_fd))
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                # -P: not the working directory first on sys.path, so a "recorder" there cannot
                # shadow the package this process runs.
                "-P",
                "-m",
                "shadowtap.recorder.tape_process",
                _NO_TAPE_ARG if self._directory is None else str(self._directory),
                *tap,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
                pass_fds=() if self._tap_fd is None else (self._tap_fd,),
            )
        except OSError as exc:
            raise TapeWriteError(
                f"cannot start the tape writer process: {exc.strerror or exc}", path=self._where
            ) from exc
        child = _Child(process)
        assert process.stdin is not None
        options = pickle.dumps((self._options, self._intake))
        process.stdin.write(_OPTIONS_LENGTH.pack(len(options)) + options)
        self._child = child
        watcher = asyncio.create_task(self._watch(child), name=f"tape-writer:{self._where}")
        try:
            await asyncio.wait_for(asyncio.shield(child.ready), _START_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await watcher
            raise TapeWriteError(
                f"the tape writer process did not start within {_START_TIMEOUT_S:g} s", path=self._where
            ) from None
        except asyncio.CancelledError:
            process.kill()
            raise
        if not child.ready.result():
            await watcher
            raise TapeWriteError(
                f"the tape writer process exited with code {process.returncode} as it started "
                "(its error is above, on stderr)",
                path=self._where,
            )

    async def _watch(self, child: _Child) -> None:
        """Read the child's reports until it exits, then settle its accounts."""
        stdout = child.process.stdout
        assert stdout is not None
        unpacker = msgpack.Unpacker(raw=False, read_size=_REPORT_BUFFER_BYTES)
        try:
            while data := await stdout.read(_REPORT_READ_BYTES):
                unpacker.feed(data)
                for fields in unpacker:
                    child.report = _Report(*fields)
                    if not child.ready.done():
                        child.ready.set_result(True)
        except Exception:  # a garbled report is a bug; the child is stopped and replaced
            log.exception("bad report from the tape writer process %d; stopping it", child.process.pid)
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
        code = await child.process.wait()
        if not child.ready.done():
            child.ready.set_result(False)
        self._retire(child, code)

    def _retire(self, child: _Child, code: int) -> None:
        if self._child is child:  # what was packed for it is lost with it (counted below)
            self._out, self._out_bytes = [], 0
        stdin = child.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()  # the transport is done with once every pipe is closed
        report, done = child.report, self._done
        done.written += report.written
        done.encode_errors += report.encode_errors
        done.write_errors += report.write_errors
        done.bytes_written += report.bytes_written
        done.segments += report.segments
        done.intake_counters = _summed(done.intake_counters, report.intake_counters)
        done.uploaded_segments += report.uploaded_segments
        done.upload_failures += report.upload_failures
        done.spool_full += report.spool_full
        done.tap_frames += report.tap_frames
        done.tap_dropped += report.tap_dropped
        self._errors.last = report.last_error or self._errors.last
        lost = child.sent - report.consumed
        if code != 0 or lost:
            done.write_errors += lost
            self._errors.note(
                "exit",
                f"the tape writer process {child.process.pid} exited with code {code}; "
                f"{lost} exchanges it was sent are not known to be written",
            )
        if self._child is child:
            self._child = None
        if not child.exited.done():
            child.exited.set_result(None)
        if not self._closing and self._started and child.ready.result():
            # (A child that never became ready is _spawn's to report, and _restart_later's to retry.)
            self._restart = asyncio.get_running_loop().create_task(self._restart_later())

    async def _restart_later(self) -> None:
        await asyncio.sleep(_RESTART_AFTER_S)
        if self._closing:
            return
        try:
            await self._spawn()
        except TapeWriteError as exc:
            self._errors.note("spawn", str(exc))
            if not self._closing and self._child is None:
                self._restart = asyncio.get_running_loop().create_task(self._restart_later())
        else:
            log.warning("tape writer process restarted (pid %s)", self.pid)


# --- the child ---------------------------------------------------------------------------------


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError(f"the tape writer's input ended after {len(data)} of {size} option bytes")
        data += chunk
    return data


class _ChildInput:
    """What the child reads off the pipe: records to write, and items for its intake."""

    def __init__(self, blocks: BlockWriter, intake: Intake | None, tap: PipeTap | None = None) -> None:
        self.blocks = blocks
        self.tap = tap
        # max_buffer_size=0: no limit of msgpack's own; records are as big as max_body_bytes allows.
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=0)
        self.records_taken = 0
        self.extras_taken = 0
        #: Where the last whole item read off the pipe ended (msgpack's position can stand inside
        #: an item that has not fully arrived): the packed bytes taken, and each item's size.
        self.position = 0
        # Records the intake finished, written before anything else is read.
        self.ready: deque[list[Any]] = deque()
        self.intake = intake
        if intake is not None:
            intake.start(self.ready.append)

    def take(self) -> list[Any] | None:
        """The next record to write: one the intake finished, else the next off the pipe; None when neither."""
        ready = self.ready
        unpacker = self.unpacker
        while not ready:
            item = next(unpacker, None)
            if item is None:
                return None
            start, self.position = self.position, unpacker.tell()
            # An intake's item is its wire() array, which starts with its kind; a record starts with its id.
            kind = item[0] if type(item) is list and item and type(item[0]) is int else ITEM_RECORD
            if kind == ITEM_EXTRA:
                self.extras_taken += 1
            else:
                self.records_taken += 1
            if kind == ITEM_RECORD:
                record: list[Any] = item
                return record
            intake_item(self.intake, self.blocks, item, self.position - start, kind == ITEM_ENTRY, packed=True)
        return ready.popleft()

    def sweep(self) -> None:
        if self.intake is not None:
            self.intake.sweep(time.monotonic())

    def close(self) -> None:
        if self.intake is not None:
            self.intake.close()

    def report(self, sink: SegmentSink) -> list[Any]:
        blocks = self.blocks
        intake = IntakeStats({}) if self.intake is None else self.intake.stats()
        upload = sink.with_upload_counters(_NO_UPLOAD)
        return [
            blocks.written + blocks.encode_errors + blocks.write_errors,
            blocks.written,
            blocks.encode_errors,
            blocks.write_errors,
            sink.bytes_written,
            sink.segments,
            blocks.errors.last,
            self.records_taken,
            self.extras_taken,
            self.position,
            list(intake.counters.values()),
            intake.held,
            intake.held_bytes,
            upload.uploaded_segments,
            upload.upload_failures,
            upload.upload_pending_bytes,
            upload.spool_full,
            0 if self.tap is None else self.tap.frames,
            0 if self.tap is None else self.tap.dropped,
        ]


def child_main(directory: str | None, stdin: int = 0, stdout: int = 1, tap_fd: int | None = None) -> int:
    """Write the records piped to ``stdin`` into the tape at ``directory`` (None: nowhere,
    ``DiscardSink``); report on ``stdout``; with ``tap_fd``, copy each batch written there
    (``PipeTap``)."""
    # The parent owns this process's life: Ctrl-C or a TERM to the process group must not cut the
    # tape short. The parent closes the pipe (or dies) and this writes what it was sent, then exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(stream=sys.stderr, format="shadowtap tape writer [%(process)d]: %(message)s")
    (length,) = _OPTIONS_LENGTH.unpack(_read_exactly(stdin, _OPTIONS_LENGTH.size))
    loaded = pickle.loads(_read_exactly(stdin, length))
    options, intake = loaded if type(loaded) is tuple and len(loaded) == 2 else (loaded, None)
    if not isinstance(options, TapeOptions):
        raise TypeError(f"expected TapeOptions and an intake on the tape writer's input, got {loaded!r:.200}")
    sink = DiscardSink(options) if directory is None else SegmentSink(Path(directory), options)
    sink.prepare()
    blocks = BlockWriter(sink)
    tap = None if tap_fd is None else PipeTap(tap_fd)
    blocks.tap = tap
    source = _ChildInput(blocks, intake, tap)

    def report() -> None:
        data = msgpack.packb(source.report(sink))
        view = memoryview(data)
        while view:
            view = view[os.write(stdout, view) :]

    interval = options.fsync == "interval"
    wait_s = min(options.fsync_interval_s, 1.0) if interval else 1.0
    if intake is not None:
        wait_s = min(wait_s, intake.sweep_every_s)
    report()  # ready
    while True:
        readable, _, _ = select.select([stdin], [tap.fd] if tap is not None and tap.pending else [], [], wait_s)
        if tap is not None:
            tap.flush()
        if readable:
            data = os.read(stdin, _READ_BYTES)
            if not data:
                break
            source.unpacker.feed(data)
        source.sweep()
        blocks.write_from(source.take)
        if interval:
            blocks.guard(sink.sync_if_due, time.monotonic(), lost=0)
        report()
    source.close()
    blocks.write_from(source.take)
    blocks.guard(sink.close_segment, lost=0)
    if tap is not None:
        tap.close()
    report()
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (2, 4) or (len(sys.argv) == 4 and sys.argv[2] != "--tap-fd"):
        print(
            f"usage: python -m shadowtap.recorder.tape_process (TAPE_DIRECTORY | {_NO_TAPE_ARG}) [--tap-fd FD] "
            "(run by ProcessTapeWriter)",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        where = None if sys.argv[1] == _NO_TAPE_ARG else sys.argv[1]
        sys.exit(child_main(where, tap_fd=int(sys.argv[3]) if len(sys.argv) == 4 else None))
    except (TapeWriteError, EOFError) as exc:
        print(f"shadowtap tape writer: {exc}", file=sys.stderr)
        sys.exit(1)
