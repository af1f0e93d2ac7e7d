"""Joining each exchange record with its shadows' outcomes, all in wire form.

The proxy's record stage sends a part for each exchange when its primary exchange ends (no shadows
yet) and one part per mirrored copy when that copy ends; both are flat lists (``primary_part``,
``shadow_part``), from which ``primary_from_part`` builds the exchange's record
(``shadowtap.recorder.model.exchange_record``) and ``shadow_from_part`` the outcome. ``RecordJoiner`` puts
them together. It hands an exchange on once every shadow it was
mirrored to has answered, or failed, and the exchange is counted in ``joined``. It also hands one
on early:
- when ``timeout_s`` has passed since its primary part came; each missing shadow becomes a timeout
  failure, counted in ``shadow_join_timeouts``;
- when more than ``max_pending`` exchanges wait; the oldest goes at once, counted in
  ``evicted_at_capacity``;
- when the exchanges waiting hold more than ``max_pending_bytes`` (each part's size, as its caller
  measured it: ``part_bytes``, or its packed length in the tape writer's child); the oldest go at
  once, counted in ``evicted_at_byte_capacity``. The newest is never evicted for its own size: one
  exchange bigger than the bound waits alone;
- at ``close``.

A shadow can answer before the client has the primary's last byte, so a shadow part may come before
its primary part. Such a part says so (``early``) and waits, without a deadline, for its primary.
A part that is not early, for an exchange no longer waiting, came after its exchange was handed on;
it is counted in ``unjoined_shadow_outcomes``, as are duplicates and early parts whose primary never
came.

The joiner runs where the joined records are needed: in the tape writer's child process, so the
proxy keeps no state per exchange, or in the proxy itself when the wide-event log needs the joined
exchange. It knows nothing of the proxy: records, outcomes and timings are the arrays of
docs/tape-format.md. It is not thread-safe and never reads a clock: callers pass ``now_s``.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, fields
from typing import Any, Final

from shadowtap.recorder.model import (
    PRIMARY,
    Failure,
    FailureKind,
    Headers,
    exchange_record,
    failure_record,
    outcome_to_wire,
    request_record,
    response_record,
)

__all__ = [
    "PRIMARY_PART",
    "SHADOW_PART",
    "SHUTDOWN_REASON",
    "JoinSettings",
    "JoinStats",
    "Joined",
    "RecordJoiner",
    "primary_from_part",
    "part_bytes",
    "primary_part",
    "record_bytes",
    "shadow_from_part",
    "shadow_part",
]

#: The missing shadows' failure message for exchanges completed because the proxy stopped.
SHUTDOWN_REASON: Final = "proxy shut down before the shadow answered"

# Positions in an exchange record (docs/tape-format.md, "Exchange record").
_ID: Final = 0
_REQUEST: Final = 3
_PRIMARY: Final = 4
_SHADOWS: Final = 5
_TIMINGS: Final = 6
_TAGS: Final = 11
_DELTAS: Final = 12

#: What a record or part costs beyond its bodies and header bytes (ids, timings, the lists and small
#: objects that hold them), roughly: byte bounds count bodies and headers exactly and this per item.
RECORD_OVERHEAD_BYTES: Final = 512


# --- parts: what the joiner is fed, flat ---------------------------------------------------------
#
# The proxy builds one part per exchange when its primary ends and one per shadow outcome, on its
# event loop, where every list and dict it makes costs: so a part is one flat list of the fields,
# and the side that joins (the tape writer's child, most of the time) builds the nested record
# from it. The first element tells the kind (a record's first element is its id, a string).

PRIMARY_PART: Final = 1
SHADOW_PART: Final = 2


def primary_part(
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
    status: int | None,
    reason: str,
    response_headers: Headers,
    response_body: bytes,
    response_version: str,
    response_truncated_from: int | None,
    failure: Failure | None,
    sent_ns: int | None,
    first_byte_ns: int | None,
    done_ns: int | None,
    session: str,
    connection_id: str,
    client_addr: str,
    decisions: dict[str, str],
    tags: dict[str, str],
    mirrored: list[str],
    unrecorded: Collection[str],
) -> list[Any]:
    """An exchange as its primary ends, flat, with the shadows to wait for (``mirrored``) and those
    whose outcomes stay off the tape (``unrecorded``). ``status`` is None when no response came
    (then ``failure`` says why, or the exchange has no primary outcome at all); a response is
    taken over a failure. Bodies are as they go on the tape (capped, truncation marked)."""
    return [
        PRIMARY_PART, exchange_id, started_at_ns, started_mono_ns, method, target, request_headers,
        request_body, scheme, authority, http_version, request_truncated_from, status, reason,
        response_headers, response_body, response_version, response_truncated_from,
        None if failure is None else failure.kind, None if failure is None else failure.message,
        sent_ns, first_byte_ns, done_ns, session, connection_id, client_addr, decisions, tags, mirrored,
        list(unrecorded) if unrecorded else None,
    ]  # fmt: skip


def primary_from_part(part: list[Any]) -> tuple[list[Any], list[str], Collection[str]]:
    """The exchange record (no shadows yet), the shadows to wait for and the unrecorded ones."""
    (
        _, exchange_id, started_at_ns, started_mono_ns, method, target, request_headers, request_body,
        scheme, authority, http_version, request_truncated_from, status, reason, response_headers,
        response_body, response_version, response_truncated_from, failure_kind, failure_message,
        sent_ns, first_byte_ns, done_ns, session, connection_id, client_addr, decisions, tags, mirrored,
        unrecorded,
    ) = part  # fmt: skip
    if status is not None:
        primary = response_record(
            status, reason, response_headers, response_body, response_version, response_truncated_from
        )
    elif failure_kind is not None:
        primary = failure_record(failure_kind, failure_message)
    else:
        primary = None
    request = request_record(
        method, target, request_headers, request_body, scheme, authority, http_version, request_truncated_from
    )
    record = exchange_record(
        exchange_id,
        started_at_ns,
        started_mono_ns,
        request,
        primary,
        {},
        {PRIMARY: [sent_ns, first_byte_ns, done_ns]},
        session,
        connection_id,
        client_addr,
        decisions,
        tags,
        None,
    )
    return record, mirrored, unrecorded or ()


def shadow_part(
    exchange_id: str,
    name: str,
    status: int | None,
    reason: str,
    headers: Headers,
    body: bytes,
    http_version: str,
    truncated_from: int | None,
    failure: Failure | None,
    sent_ns: int | None,
    first_byte_ns: int | None,
    done_ns: int | None,
    early: bool,
    recorded: bool,
    delta: list[Any] | None = None,
) -> list[Any]:
    """One shadow's outcome, flat: a response when ``status`` is set, else ``failure``; with
    ``recorded`` false only its arrival counts (the outcome fields are not sent). ``delta`` is what
    the proxy changed in the copy's request (``shadowtap.recorder.model.delta_to_wire``), None when no copy
    was sent."""
    if not recorded:
        return [SHADOW_PART, exchange_id, name, None, "", (), b"", "", None, None, None, sent_ns, first_byte_ns,
                done_ns, early, False, None]  # fmt: skip
    return [
        SHADOW_PART, exchange_id, name, status, reason, headers, body, http_version, truncated_from,
        None if failure is None else failure.kind, None if failure is None else failure.message, sent_ns,
        first_byte_ns, done_ns, early, True, delta,
    ]  # fmt: skip


def shadow_from_part(part: list[Any]) -> tuple[str, str, list[Any] | None, list[Any], bool, bool, list[Any] | None]:
    """``RecordJoiner.shadow``'s arguments: exchange id, shadow name, outcome array (None when not
    recorded), timing array, early, recorded, request delta (None when none)."""
    (
        _, exchange_id, name, status, reason, headers, body, http_version, truncated_from, failure_kind,
        failure_message, sent_ns, first_byte_ns, done_ns, early, recorded, delta,
    ) = part  # fmt: skip
    outcome: list[Any] | None
    if not recorded:
        outcome = None
    elif status is not None:
        outcome = response_record(status, reason, headers, body, http_version, truncated_from)
    else:
        outcome = failure_record(failure_kind, failure_message)
    return exchange_id, name, outcome, [sent_ns, first_byte_ns, done_ns], early, recorded, delta


def headers_bytes(headers: Any) -> int:
    """The bytes of a header list's names and values."""
    total = 0
    for name, value in headers:
        total += len(name) + len(value)
    return total


def part_bytes(part: list[Any]) -> int:
    """About what ``part`` (a primary or shadow part) holds: its bodies and headers, exactly, and
    ``RECORD_OVERHEAD_BYTES``. For byte bounds, where the part was not packed (its packed length is
    the measure where it was)."""
    if part[0] == PRIMARY_PART:
        return (RECORD_OVERHEAD_BYTES + len(part[7]) + len(part[15]) + headers_bytes(part[6])
                + headers_bytes(part[14]))  # fmt: skip
    return RECORD_OVERHEAD_BYTES + len(part[6]) + headers_bytes(part[5])


def _outcome_bytes(outcome: Any) -> int:
    # A response record: [tag, status, reason, headers, body, ...]; a failure: [tag, kind, message].
    if outcome is None or len(outcome) < 5:
        return 0
    return len(outcome[4]) + headers_bytes(outcome[3])


def record_bytes(record: list[Any]) -> int:
    """About what an exchange record (``shadowtap.recorder.model.exchange_record``) holds, measured like
    ``part_bytes``: for byte bounds on records that are not packed (the thread writer's queue)."""
    request = record[_REQUEST]
    total = RECORD_OVERHEAD_BYTES + len(request[3]) + headers_bytes(request[2]) + _outcome_bytes(record[_PRIMARY])
    shadows = record[_SHADOWS]
    if shadows:
        for outcome in shadows.values():
            total += _outcome_bytes(outcome)
    return total


#: Stale deadline entries tolerated beyond twice the exchanges waiting before the deque is compacted:
#: compacting then costs about one step per append, and small joiners never bother.
_COMPACT_SLACK: Final = 1024

#: The default bound on the bytes held by exchanges waiting for their shadows (``JoinSettings``).
DEFAULT_MAX_PENDING_BYTES: Final = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class JoinSettings:
    """How long a finished primary waits for its shadows, and how many exchanges, and how many
    bytes of them, may wait at once."""

    timeout_s: float = 10.0
    max_pending: int = 10_000
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES


@dataclass(slots=True)
class JoinStats:
    joined: int = 0
    shadow_join_timeouts: int = 0
    evicted_at_capacity: int = 0
    unjoined_shadow_outcomes: int = 0
    evicted_at_byte_capacity: int = 0

    def plus(self, other: JoinStats) -> JoinStats:
        """Both counts summed (a writer's children, one after another)."""
        return JoinStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


class Joined:
    """One exchange being joined: its record once the primary part came, and its shadows so far.

    ``shadows`` and ``timings`` keep the order the parts came in. An outcome is None when only
    its arrival was sent: the shadow's recording was off, so only its name is needed. ``deltas``
    holds the request delta of each shadow whose copy was sent, when its part carried one.
    """

    __slots__ = ("context", "deltas", "record", "shadows", "size", "timings", "unrecorded", "waiting")

    def __init__(self) -> None:
        self.record: list[Any] | None = None
        #: The bytes its parts hold, as counted against ``JoinSettings.max_pending_bytes``.
        self.size = 0
        self.waiting: set[str] = set()
        self.shadows: dict[str, list[Any] | None] = {}
        self.timings: dict[str, list[Any]] = {}
        self.unrecorded: set[str] = set()
        self.deltas: dict[str, list[Any]] = {}
        #: Whatever the caller passed with the primary part (the proxy: its exchange, for events).
        self.context: Any = None

    def tape_record(self) -> list[Any]:
        """The record for the tape. It leaves out the outcomes and timings of the shadows whose
        recording was off, and names those shadows in the tag ``not_recorded``."""
        record = self.record
        assert record is not None
        shadows, timings, unrecorded, deltas = self.shadows, self.timings, self.unrecorded, self.deltas
        if not shadows:
            return record
        if not unrecorded:
            record[_SHADOWS] = shadows
            record[_TIMINGS].update(timings)
            if deltas:
                record[_DELTAS] = deltas
            return record
        left_out = [name for name in shadows if name in unrecorded]
        if left_out:
            record[_TAGS]["not_recorded"] = ",".join(left_out)
        record[_SHADOWS] = {name: o for name, o in shadows.items() if name not in unrecorded}
        record[_TIMINGS].update((name, t) for name, t in timings.items() if name not in unrecorded)
        kept = {name: d for name, d in deltas.items() if name not in unrecorded}
        if kept:
            record[_DELTAS] = kept
        return record

    def full_record(self) -> list[Any]:
        """The record with every shadow's outcome, recorded or not (for the wide-event log). A
        new outer array: ``tape_record`` may still be taken after it."""
        record = self.record
        assert record is not None
        out = list(record)
        out[_SHADOWS] = {name: o for name, o in self.shadows.items() if o is not None}
        out[_TIMINGS] = {**record[_TIMINGS], **self.timings}
        if self.deltas:
            out[_DELTAS] = dict(self.deltas)
        return out


class RecordJoiner:
    """Joins primary parts with shadow parts (module docstring); ``on_joined`` gets each exchange
    once, complete or given up on."""

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
            self._complete(oldest, "too many exchanges waiting for shadows")

    def primary(
        self,
        record: list[Any],
        mirrored: Iterable[str],
        unrecorded: Collection[str],
        context: Any,
        now_s: float,
        size_bytes: int | None = None,
    ) -> None:
        """An exchange's record, with no shadows yet; ``mirrored`` names the shadows to wait for,
        ``unrecorded`` those whose outcomes stay off the tape. ``size_bytes`` is what it holds, for
        ``max_pending_bytes`` (``record_bytes(record)`` when not given)."""
        exchange_id: str = record[_ID]
        entry = self._pending.get(exchange_id)
        new = entry is None
        if entry is None:
            entry = Joined()
        entry.record = record
        entry.context = context
        if unrecorded:
            entry.unrecorded.update(unrecorded)
        shadows = entry.shadows
        waiting = {name for name in mirrored if name not in shadows}
        if not waiting:
            if not new:
                self._pop(exchange_id)
            self._complete(entry, "")
            return
        entry.waiting = waiting
        size = record_bytes(record) if size_bytes is None else size_bytes
        entry.size += size
        self.pending_bytes += size
        deadlines = self._deadlines
        deadlines.append((now_s + self.settings.timeout_s, exchange_id))
        if new:
            self._pending[exchange_id] = entry
        if len(deadlines) > 2 * len(self._pending) + _COMPACT_SLACK:
            self._compact()
        self._trim()

    def shadow(
        self,
        exchange_id: str,
        name: str,
        outcome: list[Any] | None,
        timing: list[Any],
        early: bool,
        recorded: bool = True,
        delta: list[Any] | None = None,
        size_bytes: int | None = None,
    ) -> None:
        """One shadow's outcome (None when ``recorded`` is false and only its arrival matters)
        and timing, and what the proxy changed in its copy's request (``delta``, None when no copy
        was sent). ``early`` if the primary part had not been sent when this was. ``size_bytes``
        is what it holds (``RECORD_OVERHEAD_BYTES`` and the outcome's body and headers when not
        given)."""
        entry = self._pending.get(exchange_id)
        if entry is None:
            if not early:
                self.stats.unjoined_shadow_outcomes += 1
                return
            entry = Joined()
            self._pending[exchange_id] = entry
        elif name in entry.shadows or (entry.record is not None and name not in entry.waiting):
            self.stats.unjoined_shadow_outcomes += 1
            return
        entry.shadows[name] = outcome
        entry.timings[name] = timing
        if delta is not None:
            entry.deltas[name] = delta
        if not recorded:
            entry.unrecorded.add(name)
        if entry.record is not None:
            waiting = entry.waiting
            waiting.discard(name)
            if not waiting:
                self._pop(exchange_id)
                self._complete(entry, "")
                return
        size = RECORD_OVERHEAD_BYTES + _outcome_bytes(outcome) if size_bytes is None else size_bytes
        entry.size += size
        self.pending_bytes += size
        self._trim()

    def _complete(self, entry: Joined, missing_reason: str) -> None:
        if entry.record is None:
            # Given up on before its primary part came: nothing the tape could hold.
            self.stats.unjoined_shadow_outcomes += len(entry.shadows)
            return
        if entry.waiting:
            self.stats.shadow_join_timeouts += len(entry.waiting)
            timeout = outcome_to_wire(Failure(FailureKind.TIMEOUT, missing_reason))
            for name in entry.waiting:
                entry.shadows[name] = list(timeout)
            entry.waiting = set()
        self.stats.joined += 1
        self._on_joined(entry)

    def _compact(self) -> None:
        pending = self._pending
        self._deadlines = deque(
            item for item in self._deadlines if (entry := pending.get(item[1])) is not None and entry.record is not None
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
            if entry is not None and entry.record is not None:
                self._pop(exchange_id)
                self._complete(entry, "no shadow outcome within the join timeout")
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
