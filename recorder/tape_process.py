"""The tape writer in a child process, so the disk work never holds the proxy's GIL.

``ProcessTapeWriter`` has ``TapeWriter``'s interface. The event loop packs each record (ormsgpack,
a microsecond or two) and writes a batch to a pipe in one call; a child process running this module
(``python -m shadowtap.recorder.tape_process DIR``) unpacks, redacts, encodes, compresses, writes and syncs
with the same ``_BlockWriter`` and ``_SegmentSink`` as the thread, so the tape is the same bytes.
With the thread, that work takes the GIL from the proxy's loop about a quarter of the time it runs;
here it runs on another core.

The contract is the thread writer's: ``submit_record`` never blocks or raises, and every record
ends in exactly one counter of ``TapeWriterStats``.

Given ``JoinSettings``, the child also joins exchanges (``shadowtap.recorder.join.RecordJoiner``), so the
proxy's record stage keeps nothing per exchange: ``submit_primary`` sends an exchange as its primary
ends, with the names of the shadows to wait for; ``submit_shadow`` sends one shadow's outcome. Both
are flat parts (``shadowtap.recorder.join.primary_part``, ``shadow_part``): the child builds the record from
them, joins and writes it. Its join counters come back with its other counters (``join_stats``). A
primary part is a record for every counter above. A shadow part is not a record: a dropped one is
only refused (the caller counts it), and its exchange is written with a timeout for that shadow.

- Bound: at most ``queue_size`` records and parts, and ``queue_bytes`` of them packed, are in
  flight (packed, not yet reported read off the pipe by the child: what waits to be sent, the
  transport's buffer, the pipe, the child's unread input); beyond either, they are dropped and
  counted (``dropped_queue_full``, ``dropped_queue_bytes_full``), so a stopped child or a hung disk
  costs bounded memory. Exchanges the child holds for their shadows are bounded by
  ``JoinSettings.max_pending`` and ``max_pending_bytes`` (each part measured by its packed length).
- The child reports its cumulative counters on stdout after every batch it writes (and at least
  every second): the parent's stats lag by one batch.
- The child ignores SIGINT and SIGTERM: the parent owns its life. ``close()`` closes the pipe; the
  child writes what it was sent, syncs, closes the segment and exits. If the parent dies, the child
  sees the pipe close and does the same, so a crash of the proxy loses nothing it had sent.
- If the child dies, the records it had not reported done are counted in ``write_errors`` (not
  known to be written: the frames that reached the disk are still readable). That includes the
  exchanges it held for their shadows. A new child starts after ``_RESTART_AFTER_S``; records
  submitted meanwhile are counted as write errors too.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgpack

from shadowtap.recorder._frames import FrameEncoder
from shadowtap.recorder.errors import TapeWriteError
from shadowtap.recorder.join import (
    PRIMARY_PART,
    SHADOW_PART,
    SHUTDOWN_REASON,
    Joined,
    JoinSettings,
    JoinStats,
    RecordJoiner,
    primary_from_part,
    shadow_from_part,
)
from shadowtap.recorder.model import Exchange, exchange_to_wire
from shadowtap.recorder.writer import (
    TapeOptions,
    TapeWriterStats,
    _AsyncWriter,
    _BlockWriter,
    _ErrorNotes,
    _SegmentSink,
)

__all__ = ["ProcessTapeWriter"]

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
#: The options message before the record stream: its length, then the pickled (TapeOptions,
#: JoinSettings or None).
_OPTIONS_LENGTH = struct.Struct("!I")
#: With joins, the child checks deadlines at least this often while the pipe is quiet.
_MAX_SWEEP_WAIT_S: Final = 0.1
#: The parent reads the child's reports (~50 bytes each) this many bytes at a time, into an unpacker
#: whose buffer starts at _REPORT_BUFFER_BYTES. msgpack's default buffer is 1 MiB, filled from the
#: front and wrapped only at its end: the reports touched a new page of it every ~80 reports, which
#: showed as the proxy's RSS creeping ~0.5 byte per recorded request for its first ~2M requests.
_REPORT_READ_BYTES: Final = 4096
_REPORT_BUFFER_BYTES: Final = 16 * 1024


@dataclass(slots=True)
class _Report:
    """One child's cumulative counters; ``consumed`` = written + encode_errors + write_errors.

    ``records_taken`` and ``parts_taken`` count what it has read off the pipe (records and primary
    parts; shadow parts); the join's counters follow, then how many exchanges it holds; then the
    packed bytes it has read off the pipe, the bytes its join holds, and its byte evictions.
    """

    consumed: int = 0
    written: int = 0
    encode_errors: int = 0
    write_errors: int = 0
    bytes_written: int = 0
    segments: int = 0
    last_error: str = ""
    records_taken: int = 0
    parts_taken: int = 0
    joined: int = 0
    shadow_join_timeouts: int = 0
    evicted_at_capacity: int = 0
    unjoined_shadow_outcomes: int = 0
    join_pending: int = 0
    bytes_taken: int = 0
    join_pending_bytes: int = 0
    evicted_at_byte_capacity: int = 0

    def join_stats(self) -> JoinStats:
        return JoinStats(
            self.joined,
            self.shadow_join_timeouts,
            self.evicted_at_capacity,
            self.unjoined_shadow_outcomes,
            self.evicted_at_byte_capacity,
        )


class _Child:
    """One writer process and what the parent has sent it."""

    __slots__ = ("bytes_sent", "exited", "parts_sent", "process", "ready", "report", "sent")

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        #: Records (and primary parts) sent; shadow parts sent; the packed bytes of both.
        self.sent = 0
        self.parts_sent = 0
        self.bytes_sent = 0
        self.report = _Report()
        self.ready = asyncio.get_running_loop().create_future()
        self.exited = asyncio.get_running_loop().create_future()


class ProcessTapeWriter(_AsyncWriter):
    """The asyncio tape writer whose disk work runs in a child process (module docstring).

    ``await start()`` creates the directory and key (raising ``TapeWriteError`` for an unusable
    path) and starts the child; ``await close()`` (or leaving ``async with``) has it write
    everything sent, sync and exit. With ``join``, the child joins exchanges too (module docstring).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        options: TapeOptions | None = None,
        join: JoinSettings | None = None,
    ) -> None:
        self._directory = Path(directory)
        self._options = options or TapeOptions()
        self._join = join
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
        self._done_join = JoinStats()
        self._dropped_queue_full = 0
        self._dropped_queue_bytes_full = 0
        self._dropped_closed = 0
        self._errors = _ErrorNotes(log)

    async def start(self) -> None:
        """Create the directory and key, then start the child. Raises ``TapeWriteError``."""
        if self._started:
            return
        # The parent resolves the key first, so an unusable path fails here, in the caller's
        # terms, and the child only reads the key file (or the environment) it finds.
        await asyncio.to_thread(_SegmentSink(self._directory, self._options).prepare)
        await self._spawn()
        self._started = True

    def submit(self, exchange: Exchange) -> bool:
        """Queue ``exchange`` for writing; False when it was dropped (queue full or closed)."""
        return self.submit_record(exchange_to_wire(exchange))

    def submit_record(self, record: list[Any]) -> bool:
        """Pack one record in wire form (``shadowtap.recorder.model.exchange_record``) for the child; False
        when it was dropped and counted (``TapeWriter.submit_record``). Packed now, while the
        record is fresh in the cache; written to the pipe with others within ``_SEND_DELAY_S``."""
        return self._submit(record, True)

    @property
    def joins(self) -> bool:
        """Whether the child joins exchanges (``submit_primary`` and ``submit_shadow``)."""
        return self._join is not None

    def submit_primary(self, part: list[Any]) -> bool:
        """An exchange as its primary ended (``shadowtap.recorder.join.primary_part``), to be joined in the
        child with the shadows it names. A record for every counter: False when it was dropped and
        counted, like ``submit_record``."""
        assert self._join is not None, "submit_primary needs a writer made with JoinSettings"
        return self._submit(part, True)

    def submit_shadow(self, part: list[Any]) -> bool:
        """One shadow's outcome for the child's join (``shadowtap.recorder.join.shadow_part``). Not a record:
        False when it was refused, and the caller counts it."""
        assert self._join is not None, "submit_shadow needs a writer made with JoinSettings"
        return self._submit(part, False)

    def _submit(self, item: list[Any], is_record: bool) -> bool:
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
        if (child.sent - report.records_taken) + (child.parts_sent - report.parts_taken) >= options.queue_size:
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
            child.parts_sent += 1
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
            queue_depth=(child.sent - now.records_taken) + (child.parts_sent - now.parts_taken) if child else 0,
            bytes_written=done.bytes_written + now.bytes_written,
            segments=done.segments + now.segments,
            last_error=now.last_error or self._errors.last,
            dropped_queue_bytes_full=self._dropped_queue_bytes_full,
            queue_bytes=child.bytes_sent - now.bytes_taken if child else 0,
        )

    @property
    def join_stats(self) -> JoinStats:
        """The child's join counters, over every child this writer ran (they lag a batch)."""
        child = self._child
        return self._done_join.plus(JoinStats() if child is None else child.report.join_stats())

    @property
    def join_pending(self) -> int:
        """Exchanges the running child holds for their shadows."""
        child = self._child
        return 0 if child is None else child.report.join_pending

    @property
    def join_pending_bytes(self) -> int:
        """The bytes of the exchanges the running child holds for their shadows."""
        child = self._child
        return 0 if child is None else child.report.join_pending_bytes

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
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                # -P: not the working directory first on sys.path, so a "recorder" there cannot
                # shadow the package this process runs.
                "-P",
                "-m",
                "shadowtap.recorder.tape_process",
                str(self._directory),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            raise TapeWriteError(
                f"cannot start the tape writer process: {exc.strerror or exc}", path=str(self._directory)
            ) from exc
        child = _Child(process)
        assert process.stdin is not None
        options = pickle.dumps((self._options, self._join))
        process.stdin.write(_OPTIONS_LENGTH.pack(len(options)) + options)
        self._child = child
        watcher = asyncio.create_task(self._watch(child), name=f"tape-writer:{self._directory}")
        try:
            await asyncio.wait_for(asyncio.shield(child.ready), _START_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await watcher
            raise TapeWriteError(
                f"the tape writer process did not start within {_START_TIMEOUT_S:g} s", path=str(self._directory)
            ) from None
        except asyncio.CancelledError:
            process.kill()
            raise
        if not child.ready.result():
            await watcher
            raise TapeWriteError(
                f"the tape writer process exited with code {process.returncode} as it started "
                "(its error is above, on stderr)",
                path=str(self._directory),
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
        self._done_join = self._done_join.plus(report.join_stats())
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
    """What the child reads off the pipe: records to write, and parts to join when it joins."""

    def __init__(self, blocks: _BlockWriter, join: JoinSettings | None) -> None:
        self.blocks = blocks
        # max_buffer_size=0: no limit of msgpack's own; records are as big as max_body_bytes allows.
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=0)
        self.records_taken = 0
        self.parts_taken = 0
        #: Where the last whole item read off the pipe ended (msgpack's position can stand inside
        #: an item that has not fully arrived): the packed bytes taken, and each item's size.
        self.position = 0
        # Joined records, written before anything else is read.
        self.ready: deque[list[Any]] = deque()
        self.joiner = None if join is None else RecordJoiner(join, self._joined)

    def _joined(self, entry: Joined) -> None:
        self.ready.append(entry.tape_record())

    def take(self) -> list[Any] | None:
        """The next record to write: a joined one, else the next off the pipe; None when neither."""
        ready = self.ready
        unpacker = self.unpacker
        while not ready:
            item = next(unpacker, None)
            if item is None:
                return None
            start, self.position = self.position, unpacker.tell()
            kind = item[0] if type(item) is list and item else None
            if type(kind) is not int:
                self.records_taken += 1
                record: list[Any] = item  # a record (its first element is its id)
                return record
            self._part(item, kind, self.position - start)
        return ready.popleft()

    def _part(self, item: list[Any], kind: int, size: int) -> None:
        joiner = self.joiner
        if kind == PRIMARY_PART:
            self.records_taken += 1
            try:
                if joiner is None:
                    raise ValueError("a primary part, but this writer was not given JoinSettings")
                record, mirrored, unrecorded = primary_from_part(item)
                joiner.primary(record, mirrored, unrecorded, None, time.monotonic(), size)
            except Exception as exc:  # a malformed part costs its record, counted, never the writer
                self.blocks.encode_errors += 1
                self.blocks.errors.encode_failed(item, exc)
            return
        self.parts_taken += 1
        try:
            if joiner is None or kind != SHADOW_PART:
                raise ValueError(f"part kind {kind} (this writer joins: {joiner is not None})")
            joiner.shadow(*shadow_from_part(item), size)
        except Exception as exc:
            self.blocks.errors.note("part", f"a shadow part could not be joined: {exc}")
            if joiner is not None:
                joiner.stats.unjoined_shadow_outcomes += 1

    def sweep(self) -> None:
        if self.joiner is not None:
            self.joiner.sweep(time.monotonic())

    def close(self) -> None:
        if self.joiner is not None:
            self.joiner.close(SHUTDOWN_REASON)

    def report(self, sink: _SegmentSink) -> list[Any]:
        blocks = self.blocks
        join = JoinStats() if self.joiner is None else self.joiner.stats
        return [
            blocks.written + blocks.encode_errors + blocks.write_errors,
            blocks.written,
            blocks.encode_errors,
            blocks.write_errors,
            sink.bytes_written,
            sink.segments,
            blocks.errors.last,
            self.records_taken,
            self.parts_taken,
            join.joined,
            join.shadow_join_timeouts,
            join.evicted_at_capacity,
            join.unjoined_shadow_outcomes,
            0 if self.joiner is None else self.joiner.pending,
            self.position,
            0 if self.joiner is None else self.joiner.pending_bytes,
            join.evicted_at_byte_capacity,
        ]


def child_main(directory: str, stdin: int = 0, stdout: int = 1) -> int:
    """Write the records piped to ``stdin`` into the tape at ``directory``; report on ``stdout``."""
    # The parent owns this process's life: Ctrl-C or a TERM to the process group must not cut the
    # tape short. The parent closes the pipe (or dies) and this writes what it was sent, then exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(stream=sys.stderr, format="shadowtap tape writer [%(process)d]: %(message)s")
    (length,) = _OPTIONS_LENGTH.unpack(_read_exactly(stdin, _OPTIONS_LENGTH.size))
    loaded = pickle.loads(_read_exactly(stdin, length))
    options, join = loaded if type(loaded) is tuple and len(loaded) == 2 else (loaded, None)
    if not isinstance(options, TapeOptions) or not (join is None or isinstance(join, JoinSettings)):
        raise TypeError(f"expected TapeOptions and JoinSettings on the tape writer's input, got {loaded!r:.200}")
    sink = _SegmentSink(Path(directory), options)
    sink.prepare()
    blocks = _BlockWriter(sink)
    source = _ChildInput(blocks, join)

    def report() -> None:
        data = msgpack.packb(source.report(sink))
        view = memoryview(data)
        while view:
            view = view[os.write(stdout, view) :]

    interval = options.fsync == "interval"
    wait_s = min(options.fsync_interval_s, 1.0) if interval else 1.0
    if join is not None:
        wait_s = min(wait_s, join.timeout_s / 4, _MAX_SWEEP_WAIT_S)
    report()  # ready
    while True:
        readable, _, _ = select.select([stdin], [], [], wait_s)
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
    report()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(
            "usage: python -m shadowtap.recorder.tape_process TAPE_DIRECTORY (run by ProcessTapeWriter)",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        sys.exit(child_main(sys.argv[1]))
    except (TapeWriteError, EOFError) as exc:
        print(f"shadowtap tape writer: {exc}", file=sys.stderr)
        sys.exit(1)
