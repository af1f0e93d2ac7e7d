"""GoReplay ``.gor`` files: stream them into Exchanges, and write Exchanges as files GoReplay replays.

Gzip files (GoReplay writes them for output names ending in ``.gz``) are read and written the same
way, decompressed or compressed as they stream; offsets then count decompressed bytes.

A record is a header line ``TYPE ID TIMESTAMP_NS [LATENCY_NS]``, the raw HTTP/1.x payload, then the
separator ``\\n🐵🙈🙉\\n``. Type 1 is a request, 2 the response the original server gave, 3 the
response of a replay target. This module must never load a whole file, never let a response land on
a request it does not answer, and never make a cut last record fatal (it is reported as a torn tail).

Pairing: responses are matched to requests by id, and within one id strictly in arrival order (HTTP/1.x
answers in request order on a connection, and GoReplay can reuse an id there). GoReplay 1.3 ids end in
a TCP number (a request's ack, a response's seq): requests pipelined on one connection share an id
while their responses do not, so a response whose id matches nothing is paired with the oldest waiting
request of its connection when it starts exactly where that connection's previous response ended.
Interim 1xx responses (``100 Continue``) never become the answer. Exchanges are emitted in request
order once complete; a bounded window of waiting requests (``max_pending``) keeps memory flat.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, NamedTuple, cast

from shadowtap.recorder.errors import ConfigError, InputFormatError
from shadowtap.recorder.formats._common import (
    ExportReport,
    GunzipStream,
    ImportReport,
    TornTail,
    open_input,
    text_to_wire,
    writing,
)
from shadowtap.recorder.formats._http1 import (
    HttpParseError,
    parse_request,
    parse_response,
    request_bytes,
    response_bytes,
)
from shadowtap.recorder.model import REPLAY, Exchange, Failure, Outcome, Request, Response, Timing
from shadowtap.recorder.private import open_private

__all__ = ["SEPARATOR", "GorReader", "GorRecord", "iter_gor_records", "write_gor"]

SEPARATOR: Final = "\n🐵🙈🙉\n".encode()
REQUEST: Final = b"1"
ORIGINAL_RESPONSE: Final = b"2"
REPLAYED_RESPONSE: Final = b"3"
# GoReplay writes 40-hex (1.0-1.2) or 24-hex (1.3+) ids; other writers use other tokens, so any
# short token without spaces is accepted and kept in the ``gor.id`` tag.
_ID_RE: Final = re.compile(rb"[0-9A-Za-z_.:-]{1,128}")
_HEX_ID_RE: Final = re.compile(r"(?:[0-9a-f]{24}|[0-9a-f]{40})")
#: A header line is about 80 bytes; a longer "header" means this is not a GoReplay record.
_HEADER_MAX_BYTES: Final = 512
#: Read size: large enough that syscalls are rare, small enough to stay cache-friendly.
_CHUNK_BYTES: Final = 1 << 20
#: One record may hold at most this much; GoReplay's own default payload cap is far below it.
DEFAULT_MAX_RECORD_BYTES: Final = 64 << 20
#: Requests waiting for their responses; past this the oldest is emitted as it is. GoReplay writes a
#: response within a few records of its request, so 1,000 is far more than pairing needs.
DEFAULT_MAX_PENDING: Final = 1_000
#: The same window in payload bytes, so a run of large bodies cannot hold much memory.
DEFAULT_MAX_PENDING_BYTES: Final = 64 << 20
_SEQ_MODULO: Final = 1 << 32


class GorRecord(NamedTuple):
    """One record: ``kind`` is ``b"1"``/``b"2"``/``b"3"``; ``offset`` is where its header starts.

    A NamedTuple rather than a frozen dataclass: one is built per record, and tuples build in C.
    """

    kind: bytes
    id: str
    timestamp_ns: int
    latency_ns: int | None
    payload: bytes
    offset: int
    payload_offset: int


def _parse_header(line: bytes, path: str, offset: int) -> tuple[bytes, str, int, int | None]:
    fields = line.split(b" ")
    if len(fields) not in (3, 4) or len(fields[0]) != 1 or not fields[0].isdigit():
        raise InputFormatError(
            f"not a GoReplay record header: {line[:80]!r} (want 'TYPE ID TIMESTAMP_NS [LATENCY_NS]')",
            path=path,
            offset=offset,
        )
    if not _ID_RE.fullmatch(fields[1]):
        raise InputFormatError(f"bad GoReplay record id {fields[1][:80]!r}", path=path, offset=offset)
    try:
        timestamp_ns = int(fields[2])
        latency_ns = int(fields[3]) if len(fields) == 4 else None
    except ValueError as exc:
        raise InputFormatError(f"bad GoReplay timestamp or latency in {line[:80]!r}", path=path, offset=offset) from exc
    if timestamp_ns < 0:
        raise InputFormatError("negative GoReplay timestamp", path=path, offset=offset)
    return fields[0], fields[1].decode("ascii"), timestamp_ns, latency_ns


def _read(stream: BinaryIO | GunzipStream, path: str, offset: int) -> bytes:
    """The next chunk, ``b""`` at the end; bad gzip data is an error at the decompressed offset."""
    try:
        return stream.read(_CHUNK_BYTES)
    except zlib.error as exc:
        raise InputFormatError(f"corrupt gzip data: {exc}", path=path, offset=offset) from exc
    except OSError as exc:
        raise InputFormatError(f"cannot read: {exc.strerror or exc}", path=path, offset=offset) from exc


def iter_gor_records(
    stream: BinaryIO | GunzipStream,
    path: str,
    report: ImportReport,
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[GorRecord]:
    """Every complete record in ``stream``, in file order; a cut last record goes to ``report.torn_tail``."""
    buffer = b""
    pos = 0  # start of the unconsumed part of ``buffer``
    base = 0  # file offset of ``buffer[0]``
    search_from = 0
    eof = False
    while True:
        end = buffer.find(SEPARATOR, search_from)
        if end < 0:
            if eof:
                break
            if len(buffer) - pos > max_record_bytes:
                raise InputFormatError(
                    f"GoReplay record longer than {max_record_bytes} bytes without a separator",
                    path=path,
                    offset=base + pos,
                )
            chunk = _read(stream, path, base + len(buffer))
            # Compact only when refilling, so consuming a record never copies the rest of the buffer.
            searched = len(buffer) - pos
            base += pos
            buffer = buffer[pos:] + chunk
            pos = 0
            search_from = max(0, searched - len(SEPARATOR) + 1)
            eof = not chunk
            continue
        record_offset = base + pos
        newline = buffer.find(b"\n", pos, min(end, pos + _HEADER_MAX_BYTES))
        if newline < 0:
            raise InputFormatError("GoReplay record has no header line", path=path, offset=record_offset)
        kind, record_id, timestamp_ns, latency_ns = _parse_header(buffer[pos:newline], path, record_offset)
        report.records += 1
        yield GorRecord(
            kind, record_id, timestamp_ns, latency_ns, buffer[newline + 1 : end], record_offset, base + newline + 1
        )
        pos = end + len(SEPARATOR)
        search_from = pos
    rest = buffer[pos:]
    if rest.strip(b"\r\n"):
        if report.records == 0:
            # Nothing complete at all: that is not a cut GoReplay file but something else.
            _parse_header(rest.split(b"\n", 1)[0][:_HEADER_MAX_BYTES], path, base + pos)
        report.torn_tail = TornTail(base + pos, len(rest), "last record ends before its separator")


@dataclass(slots=True, eq=False)  # identity equality: deque.remove must not compare bodies
class _Pending:
    sequence: int
    gor_id: str
    exchange_id: str
    request: Request
    record: GorRecord
    notes: list[str]
    original: GorRecord | None = None
    original_response: Outcome | None = None
    replay: GorRecord | None = None
    replay_response: Outcome | None = None
    size_bytes: int = 0
    tags: dict[str, str] = field(default_factory=dict)


class GorReader:
    """Streams the Exchanges of one ``.gor`` file; ``report`` is complete once iteration ends.

    Memory is bounded by the pairing window (``max_pending`` requests, ``max_pending_bytes`` of
    payload) plus one read buffer holding at most one record (``max_record_bytes``).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        if max_pending < 1:
            raise ConfigError("must be at least 1", field="gor.max_pending")
        if max_pending_bytes < 1:
            raise ConfigError("must be at least 1", field="gor.max_pending_bytes")
        self.path = str(path)
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.max_record_bytes = max_record_bytes
        self.report = ImportReport(self.path, "gor")

    def __iter__(self) -> Iterator[Exchange]:
        stream = open_input(self.path)
        try:
            yield from self._pair(
                iter_gor_records(stream, self.path, self.report, max_record_bytes=self.max_record_bytes)
            )
            if isinstance(stream, GunzipStream) and stream.cut:
                self.report.note("gzip stream cut before its end (everything before the cut was read)")
        finally:
            stream.close()

    def _pair(self, records: Iterable[GorRecord]) -> Iterator[Exchange]:
        pending: OrderedDict[int, _Pending] = OrderedDict()
        # Per id, requests still waiting for a type-2 (resp. type-3) record, oldest first.
        await_original: dict[str, deque[_Pending]] = {}
        await_replay: dict[str, deque[_Pending]] = {}
        # Per (record type, GoReplay 1.3 connection): the TCP sequence number where the next response
        # starts, the last response's plus its length. Only connections with requests in the window
        # need one, so it keeps the most recent ``max_pending`` connections.
        next_seq: OrderedDict[tuple[bytes, str], int] = OrderedDict()
        sequence = 0
        pending_bytes = 0
        for record in records:
            if record.kind == REQUEST:
                try:
                    request, note = parse_request(record.payload)
                except HttpParseError as exc:
                    raise self._error(record, exc) from exc
                reused = record.id in await_original or record.id in await_replay
                item = _Pending(
                    sequence=sequence,
                    gor_id=record.id,
                    exchange_id=f"{record.id}.{sequence}" if reused else record.id,
                    request=request,
                    record=record,
                    notes=[f"request:{note}"] if note else [],
                    size_bytes=len(record.payload),
                )
                if reused:
                    self.report.note("requests reusing the id of a waiting request (paired in order)")
                    item.tags["gor.id_reused"] = "1"
                pending[sequence] = item
                pending_bytes += item.size_bytes
                for waiting_by_id in (await_original, await_replay):
                    waiting = waiting_by_id.get(record.id)
                    if waiting is None:
                        waiting_by_id[record.id] = deque((item,))
                    else:
                        waiting.append(item)
                sequence += 1
            elif record.kind in (ORIGINAL_RESPONSE, REPLAYED_RESPONSE):
                is_original = record.kind == ORIGINAL_RESPONSE
                awaiting = await_original if is_original else await_replay
                position = _connection_seq(record.id)
                continues = False
                if position is not None:
                    key = (record.kind, position[0])
                    continues = next_seq.pop(key, None) == position[1]
                    next_seq[key] = (position[1] + len(record.payload)) % _SEQ_MODULO
                    if len(next_seq) > self.max_pending:
                        next_seq.popitem(last=False)
                if _is_interim(record.payload):
                    # 100 Continue and friends: the final response follows (GoReplay 1.3 even writes the
                    # interim one before its request, on the request's id before its shift).
                    self.report.note("interim 1xx responses (100 Continue: not kept, the final response is)")
                    continue
                rid = record.id
                waiting = awaiting.get(rid)
                if not waiting and continues and position is not None:
                    rid = _oldest_on_connection(awaiting, position[0]) or rid
                    waiting = awaiting.get(rid)
                    if waiting:
                        self.report.note(
                            "responses paired by connection and TCP sequence (pipelined requests sharing an id)"
                        )
                if not waiting:
                    self.report.skip(f"type {record.kind.decode()} responses with no waiting request")
                    continue
                item = waiting.popleft()
                if not waiting:
                    del awaiting[rid]
                try:
                    response, note = parse_response(record.payload, request_method=item.request.method)
                except HttpParseError as exc:
                    raise self._error(record, exc) from exc
                if note:
                    item.notes.append(f"{'response' if is_original else 'replay'}:{note}")
                item.size_bytes += len(record.payload)
                pending_bytes += len(record.payload)
                if is_original:
                    item.original, item.original_response = record, response
                else:
                    item.replay, item.replay_response = record, response
            else:
                self.report.skip(f"records of unknown type {record.kind.decode()}")
                continue
            while pending:
                head = next(iter(pending.values()))
                # A type-3 record may still come for a head that has its type 2, so only a head with
                # both is done early; the window bounds how long the rest wait.
                complete = head.original is not None and head.replay is not None
                within_window = len(pending) <= self.max_pending and pending_bytes <= self.max_pending_bytes
                if not complete and within_window:
                    break
                pending_bytes -= head.size_bytes
                yield self._finish(pending.pop(head.sequence), await_original, await_replay)
        while pending:
            yield self._finish(pending.popitem(last=False)[1], await_original, await_replay)

    def _error(self, record: GorRecord, exc: HttpParseError) -> InputFormatError:
        return InputFormatError(
            f"type {record.kind.decode()} record {record.id}: {exc}",
            path=self.path,
            offset=record.payload_offset + exc.offset,
        )

    def _finish(
        self,
        item: _Pending,
        await_original: dict[str, deque[_Pending]],
        await_replay: dict[str, deque[_Pending]],
    ) -> Exchange:
        for waiting_by_id in (await_original, await_replay):
            waiting = waiting_by_id.get(item.gor_id)
            if waiting is not None and item in waiting:
                waiting.remove(item)
                if not waiting:
                    del waiting_by_id[item.gor_id]
        tags = {"source": "gor", "gor.id": item.gor_id, **item.tags}
        if item.record.latency_ns is not None:
            tags["gor.request_latency_ns"] = str(item.record.latency_ns)
        if item.notes:
            tags["gor.framing"] = ",".join(item.notes)
            self.report.note("exchanges with a body framing issue (tag gor.framing)")
        timings: dict[str, Timing] = {}
        if item.original is None:
            self.report.note("requests without an original response (imported without one)")
        else:
            tags["gor.response_ts_ns"] = str(item.original.timestamp_ns)
            timings["primary"] = Timing(sent_ns=0, first_byte_ns=item.original.latency_ns)
        shadows: dict[str, Outcome] = {}
        if item.replay is not None and item.replay_response is not None:
            shadows[REPLAY] = item.replay_response
            tags["gor.replay_ts_ns"] = str(item.replay.timestamp_ns)
            timings[REPLAY] = Timing(sent_ns=0, first_byte_ns=item.replay.latency_ns)
        self.report.imported += 1
        started_ns = item.record.timestamp_ns
        return Exchange(
            id=item.exchange_id,
            started_at_ns=started_ns,
            started_mono_ns=started_ns,
            request=item.request,
            primary=item.original_response,
            shadows=shadows,
            timings=timings,
            connection_id=_connection_id(item.gor_id),
            tags=tags,
        )


def _connection_seq(gor_id: str) -> tuple[str, int] | None:
    """A GoReplay 1.3 id as (connection, TCP number); ``None`` for other ids."""
    if len(gor_id) == 24 and _HEX_ID_RE.fullmatch(gor_id):
        return gor_id[:16], int(gor_id[16:], 16)
    return None


def _oldest_on_connection(awaiting: dict[str, deque[_Pending]], connection: str) -> str | None:
    """The id of the oldest request waiting on ``connection`` (a scan, but only for unmatched responses)."""
    best: _Pending | None = None
    for rid, waiting in awaiting.items():
        on_connection = len(rid) == 24 and rid.startswith(connection)
        if waiting and on_connection and (best is None or waiting[0].sequence < best.sequence):
            best = waiting[0]
    return None if best is None else best.gor_id


def _is_interim(payload: bytes) -> bool:
    """Whether ``payload`` is a 1xx response other than 101 (which ends the HTTP exchange)."""
    status = payload[9:12] if payload.startswith(b"HTTP/1.") else b""
    return len(status) == 3 and status.startswith(b"1") and status.isdigit() and status != b"101"


def _connection_id(gor_id: str) -> str:
    """The client connection for a GoReplay 1.3+ id, ``""`` for other ids.

    A 24-hex id is client port, server port and client IP (16 hex digits), then the TCP
    acknowledgement number: the first part names the connection, so requests on one keep-alive
    connection share it. The 40-hex ids of older GoReplay are hashes and name nothing.
    """
    return f"gor:{gor_id[:16]}" if len(gor_id) == 24 and _HEX_ID_RE.fullmatch(gor_id) else ""


def _gor_id(exchange: Exchange) -> str:
    """The id GoReplay gave this exchange, else a 40-hex hash of its id.

    Only an id that came from GoReplay may have the 24-hex form, which names a connection; any
    other id becomes the hash form of GoReplay 1.2, which names nothing.
    """
    original = exchange.tags.get("gor.id", "")
    if _HEX_ID_RE.fullmatch(original):
        return original
    if len(exchange.id) == 40 and _HEX_ID_RE.fullmatch(exchange.id):
        return exchange.id
    return hashlib.sha1(text_to_wire(exchange.id)).hexdigest()


def _latency_ns(timing: Timing | None) -> int:
    if timing is None:
        return 0
    for value in (timing.first_byte_ns, timing.done_ns):
        if value is not None:
            return max(0, value - (timing.sent_ns or 0))
    return 0


def _int_tag(exchange: Exchange, key: str, default: int) -> int:
    try:
        return int(exchange.tags[key])
    except (KeyError, ValueError):
        return default


def write_gor(exchanges: Iterable[Exchange], path: str | Path) -> ExportReport:
    """Write ``exchanges`` as a ``.gor`` file GoReplay can replay (``--input-file``), streaming.

    The primary response becomes a type-2 record and a ``replay`` response a type-3 record. Failures
    and other shadows have no place in the format and are counted in the report.
    """
    report = ExportReport(str(path), "gor")
    with writing(path):
        out: BinaryIO
        raw = cast(BinaryIO, open_private(path, "wb", buffering=_CHUNK_BYTES))
        if str(path).endswith(".gz"):
            # GoReplay's --input-file reads gzip when the name ends in .gz, as its output does. Its
            # header names no file, as Go's gzip writer's does: ``path`` may be a temporary name.
            gz = gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=raw)
            out = cast(BinaryIO, gz)
        else:
            out = raw
        # A GzipFile leaves the file it wraps open: close both, the gzip trailer first.
        with raw, out:
            for exchange in exchanges:
                gor_id = _gor_id(exchange)
                started_ns = exchange.started_at_ns
                request_latency_ns = _int_tag(exchange, "gor.request_latency_ns", 0)
                out.write(b"1 %s %d %d\n" % (gor_id.encode("ascii"), started_ns, request_latency_ns))
                out.write(request_bytes(exchange.request))
                out.write(SEPARATOR)
                for name, kind in (("primary", ORIGINAL_RESPONSE), (REPLAY, REPLAYED_RESPONSE)):
                    outcome = exchange.outcome(name)
                    if isinstance(outcome, Failure):
                        report.skip(f"{name} failures (no error record in .gor)")
                        continue
                    if not isinstance(outcome, Response):
                        continue
                    latency_ns = _latency_ns(exchange.timings.get(name))
                    default_ts = started_ns + latency_ns
                    ts_key = "gor.response_ts_ns" if kind == ORIGINAL_RESPONSE else "gor.replay_ts_ns"
                    timestamp_ns = _int_tag(exchange, ts_key, default_ts)
                    out.write(b"%s %s %d %d\n" % (kind, gor_id.encode("ascii"), timestamp_ns, latency_ns))
                    out.write(response_bytes(outcome))
                    out.write(SEPARATOR)
                other_shadows = [name for name in exchange.shadows if name != REPLAY]
                if other_shadows:
                    report.skip("shadow responses (only 'replay' maps to type 3)", len(other_shadows))
                report.exported += 1
    return report
