"""The record stage: joins each primary exchange with its shadows' outcomes and hands it on.

Per request it decides whether the exchange goes to the tape (recording flag and sample percent,
hashed on the exchange id), then waits for the primary to finish and for every shadow it was mirrored
to, up to ``join_timeout_s`` after the primary finished. The joined ``recorder.Exchange`` (bodies
capped at ``max_body_bytes`` with truncation marked) goes to the wide-event log, and its record to
the tape writer's ``submit_record`` as soon as it is joined (the writer batches: one pipe write or
thread wake-up per few milliseconds, while the record is packed fresh). Waiting exchanges are bounded
(``max_pending``): beyond it the oldest is completed at once without its missing shadows, and
counted. This stage must never block, never wait on the data
path, and never keep an exchange longer than its join deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Final, Protocol

from proxy.config import RecordSettings, RuntimeFlags
from proxy.metrics import ProxyMetrics
from proxy.mirror import MIRRORED
from proxy.sampling import SampleKey, key_in_sample
from proxy.stages import ProxiedExchange
from recorder.model import (
    PRIMARY,
    Exchange,
    Failure,
    FailureKind,
    Outcome,
    Response,
    Timing,
    exchange_from_wire,
    exchange_record,
    outcome_to_wire,
    request_record,
    timing_to_wire,
)

__all__ = ["ExchangeSink", "RecordStage", "build_exchange", "exchange_wire_record"]

#: Join deadlines are checked this often, and at most _MAX_LATE_PER_SWEEP exchanges past theirs are
#: completed per check: a shadow that stops answering leaves a deadline per mirrored request, and
#: completing a quarter second's worth at once (hundreds of builds) stalls the primary path.
_SWEEP_PERIOD_S: Final = 0.01
_MAX_LATE_PER_SWEEP: Final = 32

log = logging.getLogger(__name__)

_NONE: Final[frozenset[str]] = frozenset()


class ExchangeSink(Protocol):
    """Where joined exchanges go: ``recorder.TapeWriter`` or ``ProcessTapeWriter``. ``submit_record``
    takes a record array in wire form (``recorder.model.exchange_record``), never blocks, and says
    whether it took it (if not, it was dropped, and the sink counts it)."""

    def submit_record(self, record: list[Any]) -> bool: ...


#: Called with every joined exchange, whether or not it was taped (the wide-event log).
JoinedListener = Callable[[Exchange, ProxiedExchange, bool], None]


class _Pending:
    """One exchange being joined (a plain slotted class: one is made per recorded request)."""

    __slots__ = ("exchange", "record", "shadows", "timings", "waiting")

    def __init__(self, record: bool, waiting: set[str]) -> None:
        self.record = record
        self.waiting = waiting
        self.exchange: ProxiedExchange | None = None
        self.shadows: dict[str, Outcome] = {}
        self.timings: dict[str, Timing] = {}


@dataclass(slots=True)
class RecordStats:
    joined: int = 0
    submitted: int = 0
    dropped_by_writer: int = 0
    sampled_out: int = 0
    shadow_join_timeouts: int = 0
    evicted_at_capacity: int = 0
    #: Shadow outcomes for exchanges not being joined: past their join timeout, or neither taped nor
    #: sent to the event log.
    unjoined_shadow_outcomes: int = 0


def _cap(body: bytes, cap: int, truncated_from: int | None) -> tuple[bytes, int | None]:
    if len(body) <= cap:
        return body, truncated_from
    return body[:cap], truncated_from if truncated_from is not None else len(body)


def _outcome_record(outcome: Outcome, cap: int) -> list[Any]:
    """``outcome``'s wire array, its body capped at ``cap`` with the truncation marked."""
    if type(outcome) is Response and len(outcome.body) > cap:
        body, truncated_from = _cap(outcome.body, cap, outcome.truncated_from)
        outcome = Response(outcome.status, outcome.reason, outcome.headers, body, outcome.http_version, truncated_from)
    return outcome_to_wire(outcome)


def build_exchange(
    ex: ProxiedExchange,
    shadows: dict[str, Outcome],
    timings: dict[str, Timing],
    max_body_bytes: int,
    session: str = "",
) -> Exchange:
    """The tape's view of a proxied exchange, with bodies capped and truncation marked (for the
    wide-event log: read from the same record the tape gets, so the two cannot disagree)."""
    return exchange_from_wire(exchange_wire_record(ex, shadows, timings, max_body_bytes, session))


def exchange_wire_record(
    ex: ProxiedExchange,
    shadows: dict[str, Outcome],
    timings: dict[str, Timing],
    max_body_bytes: int,
    session: str = "",
    unrecorded: Collection[str] = frozenset(),
) -> list[Any]:
    """The tape record of a proxied exchange, built straight in wire form: the same record as
    ``exchange_to_wire(build_exchange(...))`` without the outcomes of ``unrecorded`` shadows (their
    decisions stay, and the tag ``not_recorded`` names them), and without building the frozen
    ``Exchange`` and ``Request`` first (the record stage's hot path; the writer owns the lists)."""
    truncated_from: int | None
    if ex.request_body is None:
        body, truncated_from = b"", ex.request_body_size
    else:
        body, truncated_from = _cap(ex.request_body, max_body_bytes, None)
    request = request_record(
        ex.method, ex.target, ex.request_headers, body, ex.scheme, ex.authority, ex.http_version, truncated_from
    )
    primary: Outcome | None = ex.response if ex.response is not None else ex.failure
    tags = {"source": "proxy", "correlation_id": ex.id}
    if ex.upgraded:
        tags["upgraded"] = "1"
    wire_timings = {PRIMARY: timing_to_wire(ex.timing)}
    wire_shadows: dict[str, list[Any]] = {}
    if shadows:
        if unrecorded:
            left_out = [name for name in shadows if name in unrecorded]
            if left_out:
                tags["not_recorded"] = ",".join(left_out)
        for name, outcome in shadows.items():
            if name not in unrecorded:
                wire_shadows[name] = _outcome_record(outcome, max_body_bytes)
        # Timings in the order they came, as build_exchange keeps them.
        for name, timing in timings.items():
            if name not in unrecorded:
                wire_timings[name] = timing_to_wire(timing)
    return exchange_record(
        ex.id,
        ex.started_at_ns,
        ex.started_mono_ns,
        request,
        None if primary is None else _outcome_record(primary, max_body_bytes),
        wire_shadows,
        wire_timings,
        session,
        ex.connection_id,
        ex.client_addr,
        dict(ex.decisions),
        tags,
    )


class RecordStage:
    """Joins primary and shadow outcomes; feeds the tape (sampled) and the joined-exchange listener."""

    name = "record"

    def __init__(
        self,
        settings: RecordSettings,
        flags: RuntimeFlags,
        metrics: ProxyMetrics,
        tape: ExchangeSink | None,
        on_joined: JoinedListener | None = None,
        sample_key: SampleKey | None = None,
    ) -> None:
        self._settings = settings
        self._flags = flags
        self._tape = tape
        self._on_joined = on_joined
        self._sample_key = sample_key
        self.stats = RecordStats()
        # Insertion-ordered so the oldest is evicted first at capacity (see RecordSettings.max_pending).
        # An OrderedDict, not a dict: finding a plain dict's first item walks over the slots its
        # earlier deletions left, so evicting at capacity (a stuck shadow) would slow with each one.
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        # (deadline, id) in deadline order: the join timeout is constant, so appends stay sorted.
        # Bounded by _pending: each entry is appended once, and stale ids are skipped on pop.
        self._deadlines: deque[tuple[float, str]] = deque()
        self._sweeper: asyncio.Task[None] | None = None
        #: Whether anybody wants joined exchanges (a tape or the event log): else every hook returns.
        self.active = tape is not None or on_joined is not None
        # Cached: asyncio.get_running_loop() costs a getpid() system call on every call.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        for key in ("joined", "submitted", "dropped_by_writer", "evicted_at_capacity", "shadow_join_timeouts"):
            metrics.add_source(
                "counter",
                f"shadowtap_record_{key}",
                f"Record stage: exchanges {key.replace('_', ' ')}",
                "",
                lambda key=key: {"": float(getattr(self.stats, key))},  # type: ignore[misc]
            )
        metrics.add_source(
            "gauge", "shadowtap_record_pending", "Exchanges waiting for their shadows", "",
            lambda: {"": float(len(self._pending))},
        )  # fmt: skip

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sweeper = asyncio.create_task(self._sweep(), name="record-join-sweeper")

    def _taped(self, exchange: ProxiedExchange) -> bool:
        # Keyed on the exchange id, so both hooks of one exchange reach the same answer.
        if self._tape is None or not self._flags.recording:
            return False
        percent = self._flags.record_percent
        return percent >= 100.0 or key_in_sample(exchange.id.encode(), percent)

    def _count_untaped(self) -> None:
        if self._tape is not None and self._flags.recording:
            self.stats.sampled_out += 1

    def _open(self, exchange: ProxiedExchange) -> _Pending | None:
        """Start joining ``exchange``; None when nobody wants it (not taped, no event log)."""
        record = self._taped(exchange)
        if not record and self._on_joined is None:
            return None
        waiting: set[str] = set()
        for name, decision in exchange.decisions.items():
            if decision == MIRRORED:
                waiting.add(name)
        entry = _Pending(record, waiting)
        self._pending[exchange.id] = entry
        if len(self._pending) > self._settings.max_pending:
            _, oldest = self._pending.popitem(last=False)
            self.stats.evicted_at_capacity += 1
            self._complete(oldest, "too many exchanges waiting for shadows")
        return entry

    def request_complete(self, exchange: ProxiedExchange) -> None:
        if self.active and not self._closed:
            self._open(exchange)

    def exchange_complete(self, exchange: ProxiedExchange) -> None:
        if not self.active:
            return
        entry = self._pending.get(exchange.id)
        if entry is None:
            if self._closed:
                return
            # Not taped and no event log, or no request_complete (the request failed before its
            # body was known): decide again (the same way) and join it alone.
            entry = self._open(exchange)
            if entry is None:
                self._count_untaped()
                return
        entry.exchange = exchange
        if not entry.waiting:
            del self._pending[exchange.id]
            self._complete(entry, "")
            return
        self._deadlines.append((self._running_loop().time() + self._settings.join_timeout_s, exchange.id))

    def on_shadow_outcome(self, exchange_id: str, shadow: str, outcome: Outcome, timing: Timing) -> None:
        """The mirror stage's listener: one call per mirrored copy."""
        entry = self._pending.get(exchange_id)
        if entry is None or shadow not in entry.waiting:
            self.stats.unjoined_shadow_outcomes += 1
            return
        entry.waiting.discard(shadow)
        entry.shadows[shadow] = outcome
        entry.timings[shadow] = timing
        if not entry.waiting and entry.exchange is not None:
            del self._pending[exchange_id]
            self._complete(entry, "")

    def _complete(self, entry: _Pending, missing_reason: str) -> None:
        if entry.exchange is None:
            # Evicted or shut down before the primary finished: nothing the tape could hold.
            return
        if entry.waiting:
            self.stats.shadow_join_timeouts += len(entry.waiting)
            for name in entry.waiting:
                entry.shadows[name] = Failure(FailureKind.TIMEOUT, missing_reason)
            entry.waiting.clear()
        ex = entry.exchange
        session = ""
        if self._sample_key is not None:
            key = self._sample_key.extract(ex.target, ex.request_headers)
            session = "" if key is None else key.decode("utf-8", "replace")
        self.stats.joined += 1
        cap = self._settings.max_body_bytes
        if entry.record and self._tape is not None:
            unrecorded = self._flags.unrecorded_shadows() if entry.shadows else _NONE
            if self._tape.submit_record(
                exchange_wire_record(ex, entry.shadows, entry.timings, cap, session, unrecorded)
            ):
                self.stats.submitted += 1
            else:
                self.stats.dropped_by_writer += 1
        else:
            self._count_untaped()
        if self._on_joined is not None:
            try:
                self._on_joined(build_exchange(ex, entry.shadows, entry.timings, cap, session), ex, entry.record)
            except Exception:
                log.exception("joined-exchange listener failed on %s", ex.id)

    async def _sweep(self) -> None:
        interval_s = min(_SWEEP_PERIOD_S, self._settings.join_timeout_s / 4)
        loop = asyncio.get_running_loop()
        more = False
        while True:
            # More late ones left: carry on after one loop turn (primary I/O first), not a period.
            await asyncio.sleep(0 if more else interval_s)
            more = self.sweep(loop.time())

    def sweep(self, now_s: float) -> bool:
        """Complete exchanges whose join deadline has passed, at most _MAX_LATE_PER_SWEEP of them;
        True when more are already late."""
        deadlines = self._deadlines
        for _ in range(_MAX_LATE_PER_SWEEP):
            if not deadlines or deadlines[0][0] > now_s:
                return False
            _, exchange_id = deadlines.popleft()
            entry = self._pending.pop(exchange_id, None)
            if entry is not None:
                self._complete(entry, "no shadow outcome within the join timeout")
        return bool(deadlines) and deadlines[0][0] <= now_s

    async def aclose(self, timeout_s: float) -> None:
        """Complete everything still waiting (call after the mirror stage has closed)."""
        if self._closed:
            return
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        while self._pending:
            _, entry = self._pending.popitem(last=False)
            self._complete(entry, "proxy shut down before the shadow answered")
        self._deadlines.clear()

    def snapshot(self) -> dict[str, Any]:
        return {"pending": len(self._pending), **dataclasses.asdict(self.stats)}
