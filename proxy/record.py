"""The record stage: hands each primary exchange and each shadow outcome to the join, as typed records.

When the primary exchange ends, the stage decides whether the exchange goes to the tape (recording
flag and sample percent, hashed on the exchange id) and builds one ``PrimaryRecord`` straight from
what the data path holds, bodies capped at ``max_body_bytes`` with truncation marked. Each mirrored
copy's outcome becomes one ``ShadowRecord``. ``shadowtap.proxy.join`` joins them: it waits for every
shadow the exchange was mirrored to, up to ``join_timeout_s`` after the primary finished, and at
most ``max_pending`` exchanges, holding at most ``max_pending_bytes``, wait (beyond either the oldest
is completed at once without its missing shadows, and counted).

The join runs in one piece of code (``shadowtap.proxy.join.JoinIntake``), hosted where its output goes:
- by the tape writer (its thread, or its child process), when only the tape needs the joined
  exchanges: the stage submits the records and keeps nothing per exchange;
- here, on the loop, when the wide-event log is on: it needs every joined exchange, taped or not,
  and takes the joined records as objects; the taped ones go to the writer as finished records.

A record's ``wire()`` is its msgpack array (for the pipe to the writer process); nothing else
flattens it. This stage must never block, never wait on the data path, and never keep an exchange
longer than its join deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, final

from shadowtap.proxy.config import RecordSettings
from shadowtap.proxy.flags import RuntimeFlags
from shadowtap.proxy.metrics import ProxyMetrics
from shadowtap.proxy.mirror import MIRRORED
from shadowtap.proxy.sampling import SampleKey, key_in_sample
from shadowtap.proxy.stages import NOT_TIMED, ProxiedExchange
from shadowtap.recorder.model import (
    Failure,
    Headers,
    Outcome,
    Response,
    StreamMessage,
    Timing,
    new_response,
    stream_message_to_wire,
)

__all__ = [
    "PRIMARY_KIND",
    "RECORD_OVERHEAD_BYTES",
    "SHADOW_KIND",
    "PrimaryRecord",
    "RecordStage",
    "RecordStats",
    "ShadowRecord",
    "primary_record",
    "shadow_record",
]

#: Join deadlines are checked this often, and at most _MAX_LATE_PER_SWEEP exchanges past theirs are
#: completed per check: a shadow that stops answering leaves a deadline per mirrored request, and
#: completing a quarter second's worth at once (hundreds of builds) stalls the primary path.
_SWEEP_PERIOD_S: Final = 0.01
_MAX_LATE_PER_SWEEP: Final = 32

#: The first element of a record's ``wire()`` array: which record it is (for the tape writer process,
#: an entry or an extra: ``shadowtap.recorder.writer.ITEM_ENTRY``, ``ITEM_EXTRA``).
PRIMARY_KIND: Final = 1
SHADOW_KIND: Final = 2

#: What a record costs beyond its bodies and header bytes (ids, timings, the objects that hold
#: them), roughly: byte bounds count bodies and headers exactly and this per record.
RECORD_OVERHEAD_BYTES: Final = 512

log = logging.getLogger(__name__)

_NONE: Final[frozenset[str]] = frozenset()


def headers_bytes(headers: Sequence[Sequence[bytes]]) -> int:
    """The bytes of a header list's names and values."""
    total = 0
    for pair in headers:
        total += len(pair[0]) + len(pair[1])
    return total


def _outcome_bytes(outcome: Outcome | None) -> int:
    if isinstance(outcome, Response):
        return len(outcome.body) + headers_bytes(outcome.headers)
    return 0


@final
class PrimaryRecord:
    """An exchange as its primary ended: the request, the primary's outcome (a ``Response``, a
    ``Failure``, or None when it has none) and timing, bodies as they go on the tape (capped,
    truncation marked); ``mirrored`` names the shadows to wait for, ``unrecorded`` those whose
    outcomes stay off the tape. ``taped`` is false for an exchange only the event log sees.
    ``request_trailers`` and ``request_messages`` are an HTTP/2 request's (empty for HTTP/1).
    Read-only once built."""

    def __init__(
        self,
        exchange_id: str,
        started_at_ns: int,
        started_mono_ns: int,
        method: str,
        target: str,
        request_headers: Headers,
        request_body: bytes,
        scheme: str,
        authority: str,
        http_version: str,
        request_truncated_from: int | None,
        primary: Response | Failure | None,
        timing: Timing,
        session: str,
        connection_id: str,
        client_addr: str,
        decisions: dict[str, str],
        tags: dict[str, str],
        mirrored: Sequence[str],
        unrecorded: Collection[str],
        taped: bool = True,
    ) -> None:
        self.exchange_id = exchange_id
        self.started_at_ns = started_at_ns
        self.started_mono_ns = started_mono_ns
        self.method = method
        self.target = target
        self.request_headers = request_headers
        self.request_body = request_body
        self.scheme = scheme
        self.authority = authority
        self.http_version = http_version
        self.request_truncated_from = request_truncated_from
        self.primary = primary
        self.timing = timing
        self.session = session
        self.connection_id = connection_id
        self.client_addr = client_addr
        self.decisions = decisions
        self.tags = tags
        self.mirrored = mirrored
        self.unrecorded = unrecorded
        self.taped = taped
        self.request_trailers: Headers = ()
        self.request_messages: tuple[StreamMessage, ...] = ()

    def size_bytes(self) -> int:
        """Its bodies and headers, exactly, and ``RECORD_OVERHEAD_BYTES`` (for byte bounds)."""
        return (
            RECORD_OVERHEAD_BYTES
            + len(self.request_body)
            + headers_bytes(self.request_headers)
            + _outcome_bytes(self.primary)
        )

    def wire(self) -> list[Any]:
        """The record as one flat msgpack array (``shadowtap.proxy.join.load_wired`` reads it back);
        an HTTP/2 exchange's gets four more fields: the request's trailers and messages, the
        response's trailers and messages (messages in wire form)."""
        primary = self.primary
        timing = self.timing
        status: int | None = None
        headers: Headers = ()
        reason, body, version = "", b"", ""
        truncated_from: int | None = None
        failure_kind: str | None = None
        failure_message: str | None = None
        if isinstance(primary, Response):
            status, reason, headers, body = primary.status, primary.reason, primary.headers, primary.body
            version, truncated_from = primary.http_version, primary.truncated_from
        elif primary is not None:
            failure_kind, failure_message = primary.kind, primary.message
        out = [
            PRIMARY_KIND, self.exchange_id, self.started_at_ns, self.started_mono_ns, self.method, self.target,
            self.request_headers, self.request_body, self.scheme, self.authority, self.http_version,
            self.request_truncated_from, status, reason, headers, body, version, truncated_from, failure_kind,
            failure_message, timing.sent_ns, timing.first_byte_ns, timing.done_ns, self.session,
            self.connection_id, self.client_addr, self.decisions, self.tags, self.mirrored,
            list(self.unrecorded) if self.unrecorded else None,
        ]  # fmt: skip
        if self.http_version == "2" or version == "2":
            # HTTP/2 on either side (an HTTP/1.1 client's request to an HTTP/2 primary answers with trailers).
            out += [self.request_trailers, messages_to_wire(self.request_messages)]
            if isinstance(primary, Response):
                out += [primary.trailers, messages_to_wire(primary.messages)]
            else:
                out += [(), ()]
        return out


@final
class ShadowRecord:
    """One shadow's outcome for an exchange: a ``Response`` or a ``Failure``, or None when its
    recording was off (``recorded`` false: only its arrival counts), its timing, ``early`` when it
    came before its primary ended, and what the proxy changed in the copy's request (``delta``, in
    wire form, ``shadowtap.recorder.model.delta_to_wire``; None when no copy was sent). Read-only once
    built."""

    def __init__(
        self,
        exchange_id: str,
        shadow: str,
        outcome: Response | Failure | None,
        timing: Timing,
        early: bool,
        recorded: bool,
        delta: Sequence[Any] | None,
    ) -> None:
        self.exchange_id = exchange_id
        self.shadow = shadow
        self.outcome = outcome
        self.timing = timing
        self.early = early
        self.recorded = recorded
        self.delta = delta

    def size_bytes(self) -> int:
        """Its body and headers, exactly, and ``RECORD_OVERHEAD_BYTES`` (for byte bounds)."""
        return RECORD_OVERHEAD_BYTES + _outcome_bytes(self.outcome)

    def wire(self) -> list[Any]:
        """The record as one flat msgpack array (``shadowtap.proxy.join.load_wired`` reads it back)."""
        outcome = self.outcome
        timing = self.timing
        if isinstance(outcome, Response):
            out = [
                SHADOW_KIND, self.exchange_id, self.shadow, outcome.status, outcome.reason, outcome.headers,
                outcome.body, outcome.http_version, outcome.truncated_from, None, None, timing.sent_ns,
                timing.first_byte_ns, timing.done_ns, self.early, self.recorded, self.delta,
            ]  # fmt: skip
            if outcome.http_version == "2":
                # An HTTP/2 answer: its trailers and messages follow.
                out += [outcome.trailers, messages_to_wire(outcome.messages)]
            return out
        kind: str | None = None
        message: str | None = None
        if outcome is not None:
            kind, message = outcome.kind, outcome.message
        return [
            SHADOW_KIND, self.exchange_id, self.shadow, None, "", (), b"", "", None, kind, message, timing.sent_ns,
            timing.first_byte_ns, timing.done_ns, self.early, self.recorded, self.delta,
        ]  # fmt: skip


def messages_to_wire(messages: tuple[StreamMessage, ...]) -> list[list[Any]] | tuple[()]:
    """gRPC message entries in wire form (``shadowtap.recorder.model.stream_message_to_wire``)."""
    return [stream_message_to_wire(m) for m in messages] if messages else ()


def _capped(response: Response, cap: int) -> Response:
    """``response`` with its body cut to ``cap`` bytes, marked with the size it had (unless it was
    cut before); its trailers and messages stay (a message's length is kept past the cut)."""
    body = response.body
    truncated_from = len(body) if response.truncated_from is None else response.truncated_from
    if response.trailers or response.messages:
        return Response(response.status, response.reason, response.headers, body[:cap], response.http_version,
                        truncated_from, response.trailers, response.messages)  # fmt: skip
    return new_response(response.status, response.reason, response.headers, body[:cap], response.http_version,
                        truncated_from)  # fmt: skip


def primary_record(
    ex: ProxiedExchange,
    max_body_bytes: int,
    session: str,
    mirrored: Sequence[str],
    unrecorded: Collection[str],
    taped: bool = True,
) -> PrimaryRecord:
    """The exchange as its primary ends, straight from what the data path holds: bodies capped at
    ``max_body_bytes`` with truncation marked, no shadows yet."""
    body = ex.request_body
    request_truncated_from: int | None = None
    if body is None:
        body, request_truncated_from = b"", ex.request_body_size
    elif len(body) > max_body_bytes:
        body, request_truncated_from = body[:max_body_bytes], len(body)
    response = ex.response
    primary: Response | Failure | None = ex.failure
    if response is not None:
        primary = _capped(response, max_body_bytes) if len(response.body) > max_body_bytes else response
    tags = {"source": "proxy", "correlation_id": ex.id}
    if ex.upgraded:
        tags["upgraded"] = "1"
    record = PrimaryRecord(
        ex.id, ex.started_at_ns, ex.started_mono_ns, ex.method, ex.target, ex.request_headers, body, ex.scheme,
        ex.authority, ex.http_version, request_truncated_from, primary, ex.timing, session, ex.connection_id,
        ex.client_addr, dict(ex.decisions), tags, mirrored, unrecorded, taped,
    )  # fmt: skip
    if ex.http_version == "2":
        record.request_trailers = ex.request_trailers
        record.request_messages = ex.request_messages
    return record


def shadow_record(
    exchange_id: str,
    shadow: str,
    outcome: Outcome,
    timing: Timing,
    early: bool,
    recorded: bool,
    max_body_bytes: int,
    delta: Sequence[Any] | None = None,
) -> ShadowRecord:
    """A shadow's outcome, its body capped at ``max_body_bytes`` with the truncation marked; with
    ``recorded`` false, only its arrival (the outcome is left out)."""
    kept: Response | Failure | None = outcome
    if not recorded:
        kept, delta = None, None
    elif isinstance(outcome, Response) and len(outcome.body) > max_body_bytes:
        kept = _capped(outcome, max_body_bytes)
    return ShadowRecord(exchange_id, shadow, kept, timing, early, recorded, delta)


class TapeSink(Protocol):
    """Where the stage's records go: ``recorder.TapeWriter`` or ``ProcessTapeWriter``. Every submit
    never blocks and says whether it was taken (if not, it was dropped, and the writer counts it,
    except ``submit_extra``'s, which the stage counts). ``submit_entry`` and ``submit_extra`` are for
    a writer that hosts the join (``hosts_intake``): a ``PrimaryRecord`` is an entry (it ends as one
    exchange on the tape), a ``ShadowRecord`` an extra. ``submit_record`` takes a finished record in
    wire form (``shadowtap.recorder.model.exchange_record``).

    Told apart by ``hosts_intake`` rather than ``isinstance``: mypyc compiles this module, and a
    compiled protocol class is neither runtime-checkable nor extendable."""

    def submit_record(self, record: list[Any]) -> bool: ...

    def submit_entry(self, item: Any) -> bool: ...

    def submit_extra(self, item: Any) -> bool: ...

    @property
    def hosts_intake(self) -> bool: ...

    @property
    def intake_stats(self) -> Any: ...


class Join(Protocol):
    """``shadowtap.proxy.join.JoinIntake`` as the stage drives it when it hosts the join itself."""

    def take(self, item: Any, size_bytes: int, now_s: float) -> None: ...

    def sweep(self, now_s: float, limit: int | None = None) -> bool: ...

    def close(self) -> None: ...

    def stats(self) -> Any: ...


#: Called with every joined exchange (``shadowtap.proxy.join.Joined``) and whether it was taped (the
#: wide-event log). Typed ``Any`` here: the join module imports this one.
JoinedListener = Callable[[Any, bool], None]


@dataclass(slots=True)
class RecordStats:
    joined: int = 0
    submitted: int = 0
    dropped_by_writer: int = 0
    sampled_out: int = 0
    shadow_join_timeouts: int = 0
    evicted_at_capacity: int = 0
    #: Exchanges completed early because those waiting held ``max_pending_bytes``.
    evicted_at_byte_capacity: int = 0
    #: Shadow outcomes not joined: past their join timeout, duplicates, or for exchanges neither
    #: taped nor sent to the event log.
    unjoined_shadow_outcomes: int = 0
    #: Shadow outcomes the joining tape writer refused (its queue was full).
    shadow_outcomes_dropped: int = 0


class RecordStage:
    """Decides what is taped, builds each exchange's ``PrimaryRecord`` and its shadows'
    ``ShadowRecord``s, and has them joined: by the tape writer when it hosts the join and no event
    log needs the joined exchanges, else here, on the loop (module docstring)."""

    name = "record"
    #: Nothing to do when a request ends: a shadow that answers before the primary says so (``early``).
    watches_requests = False

    def __init__(
        self,
        settings: RecordSettings,
        flags: RuntimeFlags,
        metrics: ProxyMetrics,
        tape: TapeSink | None,
        on_joined: JoinedListener | None = None,
        sample_key: SampleKey | None = None,
    ) -> None:
        self._settings = settings
        self._flags = flags
        self._tape = tape
        self._on_joined = on_joined
        self._sample_key = sample_key
        self._counts = RecordStats()
        #: The writer that hosts the join, when it does and nothing here needs the joined
        #: exchanges; else the join hosted here.
        self._remote: TapeSink | None = None
        self._join: Join | None = None
        if on_joined is None and tape is not None and tape.hosts_intake:
            self._remote = tape
        else:
            from shadowtap.proxy.join import JoinIntake, JoinSettings  # the join module imports this one

            join = JoinSettings(settings.join_timeout_s, settings.max_pending, settings.max_pending_bytes)
            self._join = JoinIntake(join, self._joined)
        self._sweeper: asyncio.Task[None] | None = None
        #: Whether anybody wants joined exchanges (a tape or the event log): else every hook returns.
        self.active = tape is not None or on_joined is not None
        # Cached: asyncio.get_running_loop() costs a getpid() system call on every call.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        for key in (
            "joined", "submitted", "dropped_by_writer", "evicted_at_capacity", "evicted_at_byte_capacity",
            "shadow_join_timeouts",
        ):  # fmt: skip
            metrics.add_source(
                "counter",
                f"shadowtap_record_{key}",
                f"Record stage: exchanges {key.replace('_', ' ')}",
                "",
                lambda key=key: {"": float(getattr(self.stats, key))},  # type: ignore[misc]
            )
        metrics.add_source(
            "gauge", "shadowtap_record_pending", "Exchanges waiting for their shadows", "",
            lambda: {"": float(self.pending)},
        )  # fmt: skip
        metrics.add_source(
            "gauge", "shadowtap_record_pending_bytes", "Bytes of the exchanges waiting for their shadows", "",
            lambda: {"": float(self.pending_bytes)},
        )  # fmt: skip

    @property
    def joins_in_writer(self) -> bool:
        """Whether the tape writer hosts the join (nothing is kept here per exchange)."""
        return self._remote is not None

    def _join_stats(self) -> Any:
        """The join's ``recorder.IntakeStats``, from wherever it runs (the writer process's lag a batch)."""
        if self._remote is not None:
            return self._remote.intake_stats
        assert self._join is not None
        return self._join.stats()

    @property
    def stats(self) -> RecordStats:
        """The stage's counters, with the join's."""
        counts = dataclasses.replace(self._counts)
        join: dict[str, int] = self._join_stats().counters
        counts.joined = join.get("joined", 0)
        counts.shadow_join_timeouts = join.get("shadow_join_timeouts", 0)
        counts.evicted_at_capacity = join.get("evicted_at_capacity", 0)
        counts.evicted_at_byte_capacity = join.get("evicted_at_byte_capacity", 0)
        counts.unjoined_shadow_outcomes += join.get("unjoined_shadow_outcomes", 0)
        return counts

    @property
    def pending(self) -> int:
        """Exchanges waiting for their shadows."""
        held: int = self._join_stats().held
        return held

    @property
    def pending_bytes(self) -> int:
        """The bytes of the exchanges waiting for their shadows."""
        held_bytes: int = self._join_stats().held_bytes
        return held_bytes

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._join is not None:
            self._sweeper = asyncio.create_task(self._sweep(), name="record-join-sweeper")

    def _taped(self, exchange_id: str) -> bool:
        # Keyed on the exchange id, so the primary and its shadows reach the same answer.
        if self._tape is None or not self._flags.recording:
            return False
        percent = self._flags.record_percent
        return percent >= 100.0 or key_in_sample(exchange_id.encode(), percent)

    def _count_untaped(self) -> None:
        if self._tape is not None and self._flags.recording:
            self._counts.sampled_out += 1

    def request_complete(self, exchange: ProxiedExchange) -> None:
        return None

    def exchange_complete(self, exchange: ProxiedExchange) -> None:
        if not self.active or self._closed:
            return
        taped = self._taped(exchange.id)
        if not taped and self._on_joined is None:
            self._count_untaped()
            return
        session = ""
        if self._sample_key is not None:
            key = self._sample_key.extract(exchange.target, exchange.request_headers)
            session = "" if key is None else key.decode("utf-8", "replace")
        mirrored = [name for name, decision in exchange.decisions.items() if decision == MIRRORED]
        unrecorded = self._flags.unrecorded_shadows() if mirrored else _NONE
        record = primary_record(exchange, self._settings.max_body_bytes, session, mirrored, unrecorded, taped)
        remote = self._remote
        if remote is not None:
            if remote.submit_entry(record):
                self._counts.submitted += 1
            else:
                self._counts.dropped_by_writer += 1
            return
        assert self._join is not None
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._join.take(record, record.size_bytes(), loop.time())

    def on_shadow_outcome(
        self,
        exchange: ProxiedExchange,
        shadow: str,
        outcome: Outcome,
        timing: Timing,
        delta: list[Any] | None = None,
    ) -> None:
        """The mirror stage's listener: one call per mirrored copy, with what the proxy changed in
        the copy's request (``delta``, None when the copy was never sent)."""
        if not self.active:
            return
        # The data path sets the exchange's timing as it ends, just before exchange_complete.
        early = exchange.timing is NOT_TIMED
        remote = self._remote
        if remote is None:
            assert self._join is not None
            if self._closed:
                self._counts.unjoined_shadow_outcomes += 1
                return
            # Kept whole here: the event log shows every outcome (the tape view leaves the
            # unrecorded ones out).
            record = shadow_record(exchange.id, shadow, outcome, timing, early, True, self._settings.max_body_bytes,
                                   delta)  # fmt: skip
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            self._join.take(record, record.size_bytes(), loop.time())
            return
        if not self._taped(exchange.id):
            self._counts.unjoined_shadow_outcomes += 1
            return
        recorded = shadow not in self._flags.unrecorded_shadows()
        record = shadow_record(exchange.id, shadow, outcome, timing, early, recorded, self._settings.max_body_bytes,
                               delta)  # fmt: skip
        if not remote.submit_extra(record):
            self._counts.shadow_outcomes_dropped += 1

    def _joined(self, joined: Any, taped: bool) -> None:
        """The join's output here (a ``shadowtap.proxy.join.Joined``): to the event log (every
        exchange) and the tape (if taped)."""
        if self._on_joined is not None:
            try:
                self._on_joined(joined, taped)
            except Exception:
                log.exception("joined-exchange listener failed on %s", joined.exchange_id)
        if not taped:
            self._count_untaped()
            return
        assert self._tape is not None
        if self._tape.submit_record(joined.tape_record()):
            self._counts.submitted += 1
        else:
            self._counts.dropped_by_writer += 1

    async def _sweep(self) -> None:
        interval_s = min(_SWEEP_PERIOD_S, self._settings.join_timeout_s / 4)
        loop = asyncio.get_running_loop()
        more = False
        while True:
            # More late ones left: carry on after one loop turn (primary I/O first), not a period.
            await asyncio.sleep(0 if more else interval_s)
            more = self.sweep(loop.time())

    def sweep(self, now_s: float) -> bool:
        """Complete exchanges joined here whose join deadline has passed, at most
        _MAX_LATE_PER_SWEEP of them; True when more are already late."""
        return self._join is not None and self._join.sweep(now_s, _MAX_LATE_PER_SWEEP)

    async def aclose(self, timeout_s: float) -> None:
        """Complete everything still waiting here (call after the mirror stage has closed). A writer
        that hosts the join completes what it holds when it closes, with the same reason."""
        if self._closed:
            return
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._join is not None:
            self._join.close()

    def snapshot(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "pending_bytes": self.pending_bytes,
            "joins_in_writer": self.joins_in_writer,
            **dataclasses.asdict(self.stats),
        }
