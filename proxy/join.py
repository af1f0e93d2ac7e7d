"""The record join: each exchange's ``PrimaryRecord`` with its shadows' ``ShadowRecord``s.

``RecordJoiner`` hands an exchange on once every shadow it was mirrored to has answered, or failed,
and counts it in ``joined``. It also hands one on early:
- when ``timeout_s`` has passed since its primary record came; each missing shadow becomes a
  timeout failure, counted in ``shadow_join_timeouts``;
- when more than ``max_pending`` exchanges wait; the oldest goes at once, counted in
  ``evicted_at_capacity``;
- when the exchanges waiting hold more than ``max_pending_bytes`` (each record's size as its host
  measured it: ``size_bytes()``, or its packed length in the tape writer's child); the oldest go at
  once, counted in ``evicted_at_byte_capacity``. The newest is never evicted for its own size: one
  exchange bigger than the bound waits alone;
- at ``close``.

A shadow can answer before the client has the primary's last byte, so a shadow record may come
before its primary record. Such a record says so (``early``) and waits, without a deadline, for its
primary. A record that is not early, for an exchange no longer waiting, came after its exchange was
handed on; it is counted in ``unjoined_shadow_outcomes``, as are duplicates and early records whose
primary never came.

``JoinIntake`` is the one way the join runs: the tape writer hosts it (its thread, or its child
process, which gets it pickled and reads the records back with ``load``) when only the tape needs
the joined exchanges, and the record stage hosts it on the loop when the wide-event log needs them
too. It is not thread-safe and never reads a clock: hosts pass ``now_s``.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Final, cast

from shadowtap.proxy.record import PRIMARY_KIND, SHADOW_KIND, PrimaryRecord, ShadowRecord, messages_to_wire
from shadowtap.recorder.model import PRIMARY as PRIMARY_NAME
from shadowtap.recorder.model import (
    Exchange,
    Failure,
    FailureKind,
    Outcome,
    Request,
    Timing,
    exchange_record,
    failure_record,
    outcome_to_wire,
    request_record,
    response_record,
    timing_to_wire,
)
from shadowtap.recorder.writer import ITEM_ENTRY, ITEM_EXTRA, IntakeStats

__all__ = [
    "SHUTDOWN_REASON",
    "JoinIntake",
    "JoinSettings",
    "JoinStats",
    "Joined",
    "RecordJoiner",
    "WiredPrimary",
    "WiredShadow",
    "load_wired",
]

# A record's wire() array starts with its kind, which the tape writer process reads as the item's.
assert (PRIMARY_KIND, SHADOW_KIND) == (ITEM_ENTRY, ITEM_EXTRA)

#: The missing shadows' failure message for exchanges completed because the proxy stopped.
SHUTDOWN_REASON: Final = "proxy shut down before the shadow answered"
_TIMED_OUT: Final = "no shadow outcome within the join timeout"
_AT_CAPACITY: Final = "too many exchanges waiting for shadows"

#: Stale deadline entries tolerated beyond twice the exchanges waiting before the deque is compacted:
#: compacting then costs about one step per append, and small joiners never bother.
_COMPACT_SLACK: Final = 1024
#: A host checks deadlines at least this often while nothing else happens.
_MAX_SWEEP_WAIT_S: Final = 0.1

#: The fields of a ``PrimaryRecord.wire()`` and a ``ShadowRecord.wire()`` array before the HTTP/2
#: ones (trailers and gRPC messages) an HTTP/2 exchange's carries after them.
_PRIMARY_FIELDS: Final = 30
_SHADOW_FIELDS: Final = 17

#: The default bound on the bytes held by exchanges waiting for their shadows (``JoinSettings``).
DEFAULT_MAX_PENDING_BYTES: Final = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class JoinSettings:
    """How long a finished primary waits for its shadows, and how many exchanges, and how many
    bytes of them, may wait at once."""

    timeout_s: float = 10.0
    max_pending: int = 10_000
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES

    def __reduce__(self) -> tuple[type[JoinSettings], tuple[float, int, int]]:
        # Pickled by its constructor: compiled, a frozen dataclass cannot be restored field by field.
        return JoinSettings, (self.timeout_s, self.max_pending, self.max_pending_bytes)


@dataclass(slots=True)
class JoinStats:
    joined: int = 0
    shadow_join_timeouts: int = 0
    evicted_at_capacity: int = 0
    unjoined_shadow_outcomes: int = 0
    evicted_at_byte_capacity: int = 0


class WiredPrimary:
    """A primary record as the writer process joins it: the tape's own arrays (request, outcome,
    timing), made once from the ``wire()`` array msgpack gave back, with no object rebuilt between
    the pipe and the tape. The loop's side keeps the typed ``PrimaryRecord``."""

    __slots__ = ("exchange_id", "head", "mirrored", "outcome", "request", "timing", "unrecorded")

    taped = True  # only exchanges for the tape reach a writer

    def __init__(self, raw: list[Any]) -> None:
        request_trailers: Any = ()
        request_messages: Any = ()
        response_trailers: Any = ()
        response_messages: Any = ()
        if len(raw) > _PRIMARY_FIELDS:
            # An HTTP/2 exchange (PrimaryRecord.wire): trailers and gRPC messages both ways.
            request_trailers, request_messages, response_trailers, response_messages = raw[_PRIMARY_FIELDS:]
            raw = raw[:_PRIMARY_FIELDS]
        (
            _, exchange_id, started_at_ns, started_mono_ns, method, target, request_headers, request_body,
            scheme, authority, http_version, request_truncated_from, status, reason, response_headers,
            response_body, response_version, response_truncated_from, failure_kind, failure_message,
            sent_ns, first_byte_ns, done_ns, session, connection_id, client_addr, decisions, tags, mirrored,
            unrecorded,
        ) = raw  # fmt: skip
        self.exchange_id: str = exchange_id
        self.request = request_record(method, target, request_headers, request_body, scheme, authority,
                                      http_version, request_truncated_from, request_trailers,
                                      request_messages)  # fmt: skip
        self.outcome: list[Any] | None = None
        if status is not None:
            self.outcome = response_record(status, reason, response_headers, response_body, response_version,
                                           response_truncated_from, response_trailers,
                                           response_messages)  # fmt: skip
        elif failure_kind is not None:
            self.outcome = failure_record(failure_kind, failure_message)
        self.timing = [sent_ns, first_byte_ns, done_ns]
        self.head = (started_at_ns, started_mono_ns, session, connection_id, client_addr, decisions, tags)
        self.mirrored: list[str] = mirrored
        self.unrecorded: list[str] = unrecorded or []


class WiredShadow:
    """A shadow record as the writer process joins it: its outcome and timing as the tape's arrays."""

    __slots__ = ("delta", "early", "exchange_id", "outcome", "recorded", "shadow", "timing")

    def __init__(self, raw: list[Any]) -> None:
        trailers: Any = ()
        messages: Any = ()
        if len(raw) > _SHADOW_FIELDS:
            # An HTTP/2 answer (ShadowRecord.wire): its trailers and gRPC messages.
            trailers, messages = raw[_SHADOW_FIELDS:]
            raw = raw[:_SHADOW_FIELDS]
        (
            _, exchange_id, name, status, reason, headers, body, http_version, truncated_from, failure_kind,
            failure_message, sent_ns, first_byte_ns, done_ns, early, recorded, delta,
        ) = raw  # fmt: skip
        self.exchange_id: str = exchange_id
        self.shadow: str = name
        self.outcome: list[Any] | None = None
        if not recorded:
            pass
        elif status is not None:
            self.outcome = response_record(status, reason, headers, body, http_version, truncated_from, trailers,
                                           messages)  # fmt: skip
        elif failure_kind is not None:
            self.outcome = failure_record(failure_kind, failure_message)
        self.timing = [sent_ns, first_byte_ns, done_ns]
        self.early: bool = early
        self.recorded: bool = recorded
        self.delta: Any = delta


def load_wired(raw: Any) -> WiredPrimary | WiredShadow:
    """A record back from its ``wire()`` array, in the tape's arrays (``Intake.load`` in the writer
    process)."""
    kind = raw[0]
    if kind == PRIMARY_KIND:
        return WiredPrimary(raw)
    if kind == SHADOW_KIND:
        return WiredShadow(raw)
    raise ValueError(f"not a record: kind {kind!r}")


class Joined:
    """One exchange being joined: its primary record once it came, and its shadows so far.

    ``shadows`` and ``timings`` keep the order the records came in. An outcome is None when only
    its arrival was sent: the shadow's recording was off, so only its name is needed. ``deltas``
    holds the request delta of each shadow whose copy was sent, when its record carried one.
    Once handed on it is never changed again, so another thread may read it.
    """

    __slots__ = ("deltas", "exchange_id", "primary", "shadows", "size", "timings", "unrecorded", "waiting")

    def __init__(self, exchange_id: str) -> None:
        self.exchange_id = exchange_id
        self.primary: PrimaryRecord | WiredPrimary | None = None
        #: The bytes its records hold, as counted against ``JoinSettings.max_pending_bytes``.
        self.size = 0
        self.waiting: set[str] = set()
        #: Outcomes as objects (``ShadowRecord``) or already as the tape's arrays (``WiredShadow``).
        self.shadows: dict[str, Outcome | list[Any] | None] = {}
        self.timings: dict[str, Timing | list[Any]] = {}
        self.unrecorded: set[str] = set()
        self.deltas: dict[str, Any] = {}

    @property
    def taped(self) -> bool:
        return self.primary is not None and self.primary.taped

    def tape_record(self) -> list[Any]:
        """The exchange's record array for the tape (``shadowtap.recorder.model.exchange_record``),
        fresh lists the writer owns. It leaves out the outcomes and timings of the shadows whose
        recording was off, and names those shadows in the tag ``not_recorded``."""
        p = self.primary
        assert p is not None
        unrecorded = self.unrecorded
        shadows: dict[str, list[Any]] = {}
        deltas: dict[str, Any] | None = None
        left_out: list[str] = []
        if type(p) is WiredPrimary:
            started_at_ns, started_mono_ns, session, connection_id, client_addr, decisions, tags = p.head
            request, primary, timings = p.request, p.outcome, {PRIMARY_NAME: p.timing}
        else:
            assert isinstance(p, PrimaryRecord)
            started_at_ns, started_mono_ns, session = p.started_at_ns, p.started_mono_ns, p.session
            connection_id, client_addr, decisions, tags = p.connection_id, p.client_addr, p.decisions, p.tags
            request = request_record(p.method, p.target, p.request_headers, p.request_body, p.scheme,
                                     p.authority, p.http_version, p.request_truncated_from, p.request_trailers,
                                     messages_to_wire(p.request_messages))  # fmt: skip
            primary = None if p.primary is None else outcome_to_wire(p.primary)
            timings = {PRIMARY_NAME: timing_to_wire(p.timing)}
        for name, outcome in self.shadows.items():
            if name in unrecorded:
                left_out.append(name)
                continue
            if outcome is not None:
                shadows[name] = outcome if type(outcome) is list else outcome_to_wire(outcome)  # type: ignore[arg-type]
            timing = self.timings.get(name)
            if timing is not None:
                timings[name] = timing if type(timing) is list else timing_to_wire(timing)  # type: ignore[arg-type]
            delta = self.deltas.get(name)
            if delta is not None:
                if deltas is None:
                    deltas = {}
                deltas[name] = delta
        if left_out:
            tags = {**tags, "not_recorded": ",".join(left_out)}
        return exchange_record(
            p.exchange_id, started_at_ns, started_mono_ns, request, primary, shadows, timings, session,
            connection_id, client_addr, decisions, tags, deltas,
        )  # fmt: skip

    def exchange(self) -> Exchange:
        """The exchange with every shadow's outcome, recorded or not (for the wide-event log), built
        from the records as they are (the loop's typed records: the event log is fed on the loop);
        request deltas are left out (no event shows them)."""
        p = self.primary
        assert isinstance(p, PrimaryRecord)
        shadows = cast(dict[str, Outcome | None], self.shadows)
        timings = cast(dict[str, Timing], self.timings)
        return Exchange(
            id=p.exchange_id,
            started_at_ns=p.started_at_ns,
            request=Request(
                p.method,
                p.target,
                p.request_headers,
                p.request_body,
                p.scheme,
                p.authority,
                p.http_version,
                p.request_truncated_from,
                p.request_trailers,
                p.request_messages,
            ),  # fmt: skip
            primary=p.primary,
            shadows={name: o for name, o in shadows.items() if o is not None},
            timings={PRIMARY_NAME: p.timing, **timings},
            started_mono_ns=p.started_mono_ns,
            session=p.session,
            connection_id=p.connection_id,
            client_addr=p.client_addr,
            decisions=p.decisions,
            tags=p.tags,
        )


class RecordJoiner:
    """Joins primary records with shadow records (module docstring); ``on_joined`` gets each
    exchange once, complete or given up on."""

    def __init__(self, settings: JoinSettings, on_joined: Callable[[Joined], None]) -> None:
        self.settings = settings
        self.stats = JoinStats()
        self._on_joined = on_joined
        # Insertion-ordered so the oldest is evicted first at capacity. An OrderedDict, not a dict:
        # finding a plain dict's first item walks over the slots its earlier deletions left, so
        # evicting at capacity (a stuck shadow) would slow with each one.
        self._pending: OrderedDict[str, Joined] = OrderedDict()
        #: The bytes the entries in _pending hold (the sum of their ``size``).
        self.pending_bytes = 0
        # (deadline, id) in deadline order: the timeout is constant, so appends stay sorted. An
        # exchange joined before its deadline leaves its entry behind, skipped on pop; once stale
        # entries outnumber live ones the deque is compacted (_compact), so it stays within twice
        # _pending (plus _COMPACT_SLACK) rather than growing with the request rate times the timeout.
        self._deadlines: deque[tuple[float, str]] = deque()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _pop(self, exchange_id: str) -> Joined:
        entry = self._pending.pop(exchange_id)
        self.pending_bytes -= entry.size
        return entry

    def _trim(self) -> None:
        """Hand on the oldest exchanges while too many wait, or they hold too many bytes (never the
        last one for its bytes alone)."""
        pending, settings = self._pending, self.settings
        while len(pending) > settings.max_pending or (
            self.pending_bytes > settings.max_pending_bytes and len(pending) > 1
        ):
            if len(pending) > settings.max_pending:
                self.stats.evicted_at_capacity += 1
            else:
                self.stats.evicted_at_byte_capacity += 1
            _, oldest = pending.popitem(last=False)
            self.pending_bytes -= oldest.size
            self._complete(oldest, _AT_CAPACITY)

    def primary(self, record: PrimaryRecord | WiredPrimary, now_s: float, size_bytes: int) -> None:
        """An exchange's primary record; its ``mirrored`` shadows are waited for."""
        exchange_id = record.exchange_id
        entry = self._pending.get(exchange_id)
        new = entry is None
        if entry is None:
            entry = Joined(exchange_id)
        entry.primary = record
        if record.unrecorded:
            entry.unrecorded.update(record.unrecorded)
        shadows = entry.shadows
        waiting = {name for name in record.mirrored if name not in shadows}
        if not waiting:
            if not new:
                self._pop(exchange_id)
            self._complete(entry, "")
            return
        entry.waiting = waiting
        entry.size += size_bytes
        self.pending_bytes += size_bytes
        deadlines = self._deadlines
        deadlines.append((now_s + self.settings.timeout_s, exchange_id))
        if new:
            self._pending[exchange_id] = entry
        if len(deadlines) > 2 * len(self._pending) + _COMPACT_SLACK:
            self._compact()
        self._trim()

    def shadow(self, record: ShadowRecord | WiredShadow, size_bytes: int) -> None:
        """One shadow's outcome and timing, and what the proxy changed in its copy's request."""
        exchange_id, name = record.exchange_id, record.shadow
        entry = self._pending.get(exchange_id)
        if entry is None:
            if not record.early:
                self.stats.unjoined_shadow_outcomes += 1
                return
            entry = Joined(exchange_id)
            self._pending[exchange_id] = entry
        elif name in entry.shadows or (entry.primary is not None and name not in entry.waiting):
            self.stats.unjoined_shadow_outcomes += 1
            return
        entry.shadows[name] = record.outcome
        entry.timings[name] = record.timing
        if record.delta is not None:
            entry.deltas[name] = record.delta
        if not record.recorded:
            entry.unrecorded.add(name)
        if entry.primary is not None:
            waiting = entry.waiting
            waiting.discard(name)
            if not waiting:
                self._pop(exchange_id)
                self._complete(entry, "")
                return
        entry.size += size_bytes
        self.pending_bytes += size_bytes
        self._trim()

    def _complete(self, entry: Joined, missing_reason: str) -> None:
        if entry.primary is None:
            # Given up on before its primary record came: nothing the tape could hold.
            self.stats.unjoined_shadow_outcomes += len(entry.shadows)
            return
        if entry.waiting:
            self.stats.shadow_join_timeouts += len(entry.waiting)
            timeout = Failure(FailureKind.TIMEOUT, missing_reason)
            for name in entry.waiting:  # (no timing: nothing is known of the copy's exchange)
                entry.shadows[name] = timeout
            entry.waiting = set()
        self.stats.joined += 1
        self._on_joined(entry)

    def _compact(self) -> None:
        pending = self._pending
        self._deadlines = deque(
            item
            for item in self._deadlines
            if (entry := pending.get(item[1])) is not None and entry.primary is not None
        )

    def sweep(self, now_s: float, limit: int | None = None) -> bool:
        """Hand on the exchanges whose deadline has passed, at most ``limit`` of them; True when
        more are already late."""
        deadlines = self._deadlines
        done = 0
        while deadlines and deadlines[0][0] <= now_s:
            if limit is not None and done >= limit:
                return True
            _, exchange_id = deadlines.popleft()
            entry = self._pending.get(exchange_id)
            if entry is not None and entry.primary is not None:
                self._pop(exchange_id)
                self._complete(entry, _TIMED_OUT)
                done += 1
        return False

    def close(self, reason: str) -> None:
        """Hand on everything still waiting, oldest first, with ``reason`` for the missing shadows."""
        pending = self._pending
        while pending:
            _, entry = pending.popitem(last=False)
            self._complete(entry, reason)
        self.pending_bytes = 0
        self._deadlines.clear()


class JoinIntake:
    """The proxy's intake for a tape writer (``shadowtap.recorder.writer.Intake``): it joins
    ``PrimaryRecord``s (entries: each ends as one exchange) with ``ShadowRecord``s (extras) and
    hands each joined exchange on, as a finished tape record to the writer that hosts it (``start``),
    or as a ``Joined`` to ``on_joined`` with whether it is taped (the record stage, hosting it on the
    loop). Pickled with its settings only, for the writer process."""

    def __init__(self, settings: JoinSettings, on_joined: Callable[[Joined, bool], None] | None = None) -> None:
        self.settings = settings
        self._on_joined = on_joined
        self._emit: Callable[[list[Any]], None] | None = None
        self.joiner = RecordJoiner(settings, self._joined)

    def __reduce__(self) -> tuple[type[JoinIntake], tuple[JoinSettings]]:
        # Rebuilt from its settings alone (a compiled class has no instance dict to restore).
        return JoinIntake, (self.settings,)

    @property
    def sweep_every_s(self) -> float:
        """How often its host should call ``sweep`` at least."""
        return min(self.settings.timeout_s / 4, _MAX_SWEEP_WAIT_S)

    def start(self, emit: Callable[[list[Any]], None]) -> None:
        """Hosted by a tape writer: each joined, taped exchange goes to ``emit`` as its tape record."""
        self._emit = emit

    def _joined(self, entry: Joined) -> None:
        if self._on_joined is not None:
            self._on_joined(entry, entry.taped)
        elif self._emit is not None and entry.taped:
            self._emit(entry.tape_record())

    def load(self, raw: Any) -> WiredPrimary | WiredShadow:
        """A record back from the msgpack array its ``wire()`` made, in the tape's arrays."""
        return load_wired(raw)

    def take(self, item: Any, size_bytes: int, now_s: float) -> None:
        """One record, ``size_bytes`` big for the join's byte bound."""
        kind = type(item)  # (not isinstance with a union: that builds the union on every call)
        if kind is WiredPrimary or kind is PrimaryRecord:
            self.joiner.primary(item, now_s, size_bytes)
        elif kind is WiredShadow or kind is ShadowRecord:
            self.joiner.shadow(item, size_bytes)
        else:
            raise TypeError(f"not a record: {type(item).__name__}")

    def discard(self) -> None:
        """An extra (a shadow record) that could not be taken: counted as unjoined."""
        self.joiner.stats.unjoined_shadow_outcomes += 1

    def sweep(self, now_s: float, limit: int | None = None) -> bool:
        return self.joiner.sweep(now_s, limit)

    def close(self) -> None:
        """Hand on everything still waiting: the proxy is shutting down."""
        self.joiner.close(SHUTDOWN_REASON)

    def stats(self) -> IntakeStats:
        joiner = self.joiner
        return IntakeStats(asdict(joiner.stats), joiner.pending, joiner.pending_bytes)
