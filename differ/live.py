"""The live differ: exchanges read off a tape writer's tap, diffed as they come into a results store.

A process of its own (``python -m shadowtap.differ.live``), started and restarted by the proxy
(``shadowtap.proxy.live``). It reads the streams of exchange frames tape writers copy to pipes
(``shadowtap.recorder.tape_process.PipeTap``): one pipe per tape writer (with ``--workers N``, one
per worker, so the batches of different writers never meet inside a pipe), each decoded by a
``FrameStream`` of its own, and feeds every exchange to one ``DiffSession`` per candidate shadow,
the same engine, templates, signatures and store as ``shadowtap diff``, committing about once a
second so ``shadowtap report --db`` and the admin server's ``GET /diff`` read results a second old.
The store is in WAL mode, so readers never wait for the writer. When the taps end (every writer of
every pipe closed it) it finishes the sessions as ``shadowtap diff`` does (prunes examples, learns
endpoint templates over every path) and exits: the stopped proxy's store then reports what
``shadowtap diff`` reports on its tape.

Protocol with the parent: stdin carries the pickled ``LiveOptions`` (length-prefixed), then control
bytes (``b"p"`` pause: frames are read and dropped, counted in ``paused``; ``b"r"`` resume). Its
counters go to stdout as msgpack arrays (``LiveReport`` fields in order) after every batch and at
least every second. It ignores SIGINT and SIGTERM (the parent owns its life; the tap's end is its
end), and by default runs only on CPU time nothing else wants (``LiveOptions.priority``).
It must never write to a tap's pipe, hold more than one read chunk plus one frame of input per pipe,
or block a writer: each pipe is a bounded channel, and its writer drops what does not fit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import sqlite3
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Final

import msgpack

from shadowtap.differ.config import DifferConfig
from shadowtap.differ.pipeline import DiffSession
from shadowtap.differ.store import DiffStore, RunMeta
from shadowtap.recorder._frames import (
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    FRAME_SYNC,
    KIND_EXCHANGE,
    MAX_FRAME_BYTES,
    frame_crc,
)
from shadowtap.recorder.model import Exchange, exchange_from_wire

__all__ = [
    "LIVE_PRIORITIES",
    "FrameStream",
    "LiveDiffer",
    "LiveOptions",
    "LiveReport",
    "child_main",
    "live_db_paths",
    "open_live_store",
]

log = logging.getLogger(__name__)

#: The tap is read this much at a time: a few tape blocks.
_READ_BYTES: Final = 1 << 20
#: The options message before the control bytes: its length, then the pickled LiveOptions.
_OPTIONS_LENGTH: Final = struct.Struct("!I")
#: The bytes every frame starts with (docs/tape-format.md).
_SYNC_BYTES: Final = FRAME_SYNC.to_bytes(2, "little")
_PAUSE: Final = ord("p")
#: How the live differ runs beside the proxy, once started: ``idle`` only on CPU time nothing else
#: wants (it falls behind, and the tap drops, as soon as the machine is busy), ``low`` at nice 10,
#: ``normal`` as the proxy does.
LIVE_PRIORITIES: Final = ("idle", "low", "normal")
#: The niceness increments of ``idle`` where SCHED_IDLE is not available, and of ``low``.
_NICE_IDLE: Final = 19
_NICE_LOW: Final = 10
_RESUME: Final = ord("r")


@dataclass(frozen=True, slots=True)
class LiveOptions:
    """What the live differ runs with: one store per candidate shadow (``databases``, by name)."""

    databases: tuple[tuple[str, str], ...]
    config: DifferConfig = field(default_factory=DifferConfig)
    baseline: str = "primary"
    secondary: str | None = None
    #: Named as the store's source (``meta.sources``).
    source: str = "live"
    commit_every_s: float = 1.0
    report_every_s: float = 0.5
    paused: bool = False
    #: ``idle`` (Linux SCHED_IDLE, elsewhere nice 19), ``low`` (nice 10) or ``normal``: see ``LIVE_PRIORITIES``.
    priority: str = "idle"


@dataclass(slots=True)
class LiveReport:
    """The live differ's cumulative counters, as the parent reads them (``shadowtap.proxy.live``).

    ``exchanges`` decoded off the taps; ``compared``, ``errors``, ``skipped`` summed over the
    candidates; ``paused`` read while paused and not diffed; ``bad_bytes`` skipped to find a frame
    (after a restart mid-frame, or damage); ``undecodable`` frames whose record did not decode;
    ``secondary_pairs`` exchanges the secondary answered (what noise is learned from);
    ``last_started_ns`` the start time of the last exchange diffed; ``commits``.
    """

    exchanges: int = 0
    compared: int = 0
    errors: int = 0
    skipped: int = 0
    duplicates: int = 0
    paused: int = 0
    bad_bytes: int = 0
    undecodable: int = 0
    secondary_pairs: int = 0
    last_started_ns: int = 0
    commits: int = 0
    is_paused: bool = False


def live_db_paths(db: str, candidates: list[str]) -> tuple[tuple[str, str], ...]:
    """The store of each candidate: ``db`` itself for one, ``<stem>-<name><suffix>`` beside it for several
    (a store holds one comparison)."""
    if len(candidates) == 1:
        return ((candidates[0], db),)
    path = Path(db)
    return tuple((name, str(path.with_name(f"{path.stem}-{name}{path.suffix}"))) for name in candidates)


def open_live_store(path: str) -> DiffStore:
    """A store for the live differ: WAL mode (kept in the file), so readers never wait for a commit."""
    store = DiffStore(path)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode = WAL")
    db.close()
    return store


class FrameStream:
    """Exchange frames out of a byte stream (sans-IO): ``feed`` bytes, iterate ``exchanges()``.

    Holds at most one read chunk plus one frame. Bytes that do not start a frame with a good
    checksum are skipped to the next sync marker and counted (``bad_bytes``): a reader that starts
    inside a frame finds the next one.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.bad_bytes = 0
        self.undecodable = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    def exchanges(self) -> Iterator[Exchange]:
        buf = self._buf
        pos = 0
        try:
            while len(buf) - pos >= FRAME_HEADER_SIZE:
                sync, kind, length, crc = FRAME_HEADER.unpack_from(buf, pos)
                if sync != FRAME_SYNC or kind != KIND_EXCHANGE or length > MAX_FRAME_BYTES:
                    pos = self._skip(buf, pos)
                    continue
                end = pos + FRAME_HEADER_SIZE + length
                if end > len(buf):
                    break  # the rest of the frame has not come yet
                payload = bytes(buf[pos + FRAME_HEADER_SIZE : end])
                if frame_crc(kind, payload) != crc:
                    pos = self._skip(buf, pos)
                    continue
                pos = end
                try:
                    exchange = exchange_from_wire(msgpack.unpackb(payload, raw=False, use_list=False))
                except Exception:  # a record this version cannot read: counted, never fatal
                    self.undecodable += 1
                    continue
                yield exchange
        finally:
            del buf[:pos]

    def _skip(self, buf: bytearray, pos: int) -> int:
        found = buf.find(_SYNC_BYTES, pos + 1)
        new = len(buf) - 1 if found < 0 else found  # keep a last byte: it may start a marker
        self.bad_bytes += new - pos
        return new


def with_live_schema(config: DifferConfig) -> DifferConfig:
    """``config`` with the protobuf schema its ``proto_descriptor`` or ``proto_reflection`` names
    loaded into ``compare.proto``, in this process (a descriptor pool does not pickle, so each live
    process loads its own); schema-less, said once, when the schema cannot be had (a reflection
    target that does not answer must not stop live diff)."""
    if config.compare.proto is not None or (config.proto_descriptor is None and config.proto_reflection is None):
        return config
    from dataclasses import replace

    from shadowtap.differ.protobuf import ProtobufDecodeError, load_schema  # not for the proxy to import

    try:
        schema = load_schema(config.proto_descriptor, config.proto_reflection)
    except ProtobufDecodeError as exc:
        log.warning("live diff decodes gRPC bodies without a schema: %s", exc)
        return config
    return config if schema is None else replace(config, compare=replace(config.compare, proto=schema))


class LiveDiffer:
    """The sessions and counters of one live differ process: ``take`` bytes read off tap ``tap`` (of
    ``taps``), ``commit``, and ``finish`` at the taps' end (sans-IO: the process loop reads and
    reports). Each tap has its own ``FrameStream``: a frame never spans two taps."""

    def __init__(self, options: LiveOptions, taps: int = 1) -> None:
        self.options = options
        self.report = LiveReport(is_paused=options.paused)
        self.streams = [FrameStream() for _ in range(taps)]
        self.stores: list[DiffStore] = []
        self.sessions: list[DiffSession] = []
        config = with_live_schema(options.config)
        for name, path in options.databases:
            store = open_live_store(path)
            self.stores.append(store)
            meta = RunMeta(options.baseline, name, options.secondary, (options.source,))
            self.sessions.append(DiffSession(store, config, meta))
        self._warm = options.secondary is None

    def take(self, data: bytes, tap: int = 0) -> None:
        stream = self.streams[tap]
        stream.feed(data)
        report = self.report
        secondary = self.options.secondary
        for exchange in stream.exchanges():
            report.exchanges += 1
            if report.is_paused:
                report.paused += 1
                continue
            for session in self.sessions:
                session.add(exchange)
            if secondary is not None and secondary in exchange.shadows:
                report.secondary_pairs += 1
                if not self._warm and report.secondary_pairs >= max(1, self.options.config.min_samples):
                    self._warm = True
                    log.warning("noise model warm: %d exchanges answered by %r", report.secondary_pairs, secondary)
            report.last_started_ns = exchange.started_at_ns
        report.bad_bytes = sum(s.bad_bytes for s in self.streams)
        report.undecodable = sum(s.undecodable for s in self.streams)
        self._sum()

    def _sum(self) -> None:
        report = self.report
        report.compared = sum(s.stats.compared for s in self.sessions)
        report.errors = sum(s.stats.errors for s in self.sessions)
        report.skipped = sum(s.stats.skipped for s in self.sessions)
        report.duplicates = sum(s.stats.duplicates for s in self.sessions)

    def commit(self) -> None:
        for store in self.stores:
            store.commit()
        self.report.commits += 1

    def finish(self) -> None:
        for session in self.sessions:
            session.finish()
        for store in self.stores:
            store.close()
        self._sum()


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError(f"the live differ's input ended after {len(data)} of {size} option bytes")
        data += chunk
    return data


def _set_priority(priority: str) -> None:
    """``LIVE_PRIORITIES``: ``idle`` is Linux SCHED_IDLE (elsewhere nice 19), ``low`` nice 10;
    ``normal`` leaves SCHED_IDLE (a niceness is never raised back)."""
    if priority == "low":
        with contextlib.suppress(OSError):
            os.nice(_NICE_LOW)
        return
    try:
        policy = os.SCHED_IDLE if priority == "idle" else os.SCHED_OTHER
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or not allowed back
        if priority == "idle":
            with contextlib.suppress(OSError):
                os.nice(_NICE_IDLE)


def child_main(tap_fds: Sequence[int], stdin: int = 0, stdout: int = 1) -> int:
    """Diff the exchanges read off ``tap_fds`` until every one has ended; options and control on
    ``stdin``, counters on ``stdout``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(stream=sys.stderr, format="shadowtap live differ [%(process)d]: %(message)s")
    (length,) = _OPTIONS_LENGTH.unpack(_read_exactly(stdin, _OPTIONS_LENGTH.size))
    options = pickle.loads(_read_exactly(stdin, length))
    if not isinstance(options, LiveOptions):
        raise TypeError(f"expected LiveOptions on the live differ's input, got {options!r:.200}")
    live = LiveDiffer(options, len(tap_fds))
    if options.secondary is not None:
        log.warning(
            "noise model warming up: learned from %r once it has answered %d exchanges",
            options.secondary,
            max(1, options.config.min_samples),
        )

    def report() -> None:
        data = msgpack.packb(list(astuple(live.report)))
        view = memoryview(data)
        while view:
            view = view[os.write(stdout, view) :]

    taps = {fd: index for index, fd in enumerate(tap_fds)}
    watched = [*tap_fds, stdin]
    last_commit = last_report = time.monotonic()
    dirty = False
    report()  # ready
    # Started (imports, stores) at the normal priority; from now on (by default) below the proxy and
    # the tape writer: on a busy machine the differ falls behind and its tap drops (counted), rather
    # than take CPU time the data path wants.
    _set_priority(options.priority)
    while True:
        readable, _, _ = select.select(watched, [], [], options.report_every_s)
        if stdin in readable:
            control = os.read(stdin, 4096)
            if not control:
                watched.remove(stdin)  # the parent is gone: the tap ends when its writer sees that too
            for byte in control:
                if byte == _PAUSE:
                    live.report.is_paused = True
                elif byte == _RESUME:
                    live.report.is_paused = False
        tapped = False
        for fd in readable:
            index = taps.get(fd)
            if index is None:
                continue
            tapped = True
            data = os.read(fd, _READ_BYTES)
            if not data:  # every writer of this pipe is gone (a worker that ended): the others go on
                watched.remove(fd)
                continue
            live.take(data, index)
            dirty = True
        if not any(fd in taps for fd in watched):
            break
        now = time.monotonic()
        # Every commit_every_s while exchanges flow, and at once when the tap goes quiet.
        if dirty and (now - last_commit >= options.commit_every_s or not readable):
            live.commit()
            last_commit = now
            dirty = False
        if now - last_report >= options.report_every_s or tapped:
            report()
            last_report = now
    if options.priority == "idle":
        _set_priority("normal")  # the proxy is stopping: finish the stores while it waits
    live.finish()
    report()
    return 0


def _main(argv: list[str]) -> int:
    args = argv[1:]
    if not args or len(args) % 2 or any(flag != "--tap-fd" for flag in args[::2]):
        print("usage: python -m shadowtap.differ.live --tap-fd FD [--tap-fd FD ...] (run by shadowtap.proxy.live)",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        return child_main([int(fd) for fd in args[1::2]])
    except EOFError as exc:
        print(f"shadowtap live differ: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # Through the module's own name: the pickled options name their class there, not in __main__.
    from shadowtap.differ import live

    sys.exit(live._main(sys.argv))
