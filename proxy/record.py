"""The record stage: has each primary exchange joined with its shadows' outcomes and taped.

When the primary exchange ends, it decides whether the exchange goes to the tape (recording flag and
sample percent, hashed on the exchange id) and sends it on as one flat part
(``shadowtap.recorder.join.primary_part``), bodies capped at ``max_body_bytes`` with truncation marked, with
no shadows yet. Each mirrored copy's outcome follows as a part of its own (``shadow_part``).
``shadowtap.recorder.join.RecordJoiner`` joins them: it waits for every shadow the exchange was mirrored to,
up to ``join_timeout_s`` after the primary finished, and at most ``max_pending`` exchanges, holding
at most ``max_pending_bytes``, wait (beyond either the oldest is completed at once without its
missing shadows, and counted).

Where the join runs:
- in the tape writer process (``ProcessTapeWriter``, the default) when no wide-event log is on. The
  stage packs the parts and keeps nothing per exchange, so the event loop pays for two flat lists
  per exchange; the child builds the nested record and joins it;
- here, on the loop, otherwise: the event log needs every joined ``recorder.Exchange``, and the
  thread writer takes whole records.

This stage must never block, never wait on the data path, and never keep an exchange longer than
its join deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from shadowtap.proxy.config import RecordSettings
from shadowtap.proxy.flags import RuntimeFlags
from shadowtap.proxy.metrics import ProxyMetrics
from shadowtap.proxy.mirror import MIRRORED
from shadowtap.proxy.sampling import SampleKey, key_in_sample
from shadowtap.proxy.stages import NOT_TIMED, ProxiedExchange
from shadowtap.recorder.join import (
    SHUTDOWN_REASON,
    Joined,
    JoinSettings,
    JoinStats,
    RecordJoiner,
    part_bytes,
    primary_from_part,
    primary_part,
    shadow_from_part,
    shadow_part,
)
from shadowtap.recorder.model import Exchange, Headers, Outcome, Response, Timing, exchange_from_wire

__all__ = ["ExchangeSink", "JoiningSink", "RecordStage", "RecordStats", "exchange_primary_part", "outcome_part"]

#: Join deadlines are checked this often, and at most _MAX_LATE_PER_SWEEP exchanges past theirs are
#: completed per check: a shadow that stops answering leaves a deadline per mirrored request, and
#: completing a quarter second's worth at once (hundreds of builds) stalls the primary path.
_SWEEP_PERIOD_S: Final = 0.01
_MAX_LATE_PER_SWEEP: Final = 32

log = logging.getLogger(__name__)

_NONE: Final[frozenset[str]] = frozenset()


class ExchangeSink(Protocol):
    """Where joined exchanges go: ``recorder.TapeWriter`` or ``ProcessTapeWriter``. ``submit_record``
    takes a record array in wire form (``shadowtap.recorder.model.exchange_record``), never blocks, and says
    whether it took it (if not, it was dropped, and the sink counts it)."""

    def submit_record(self, record: list[Any]) -> bool: ...


class JoiningSink(Protocol):
    """A sink that can join exchanges itself (``ProcessTapeWriter`` given ``JoinSettings``, when
    ``joins`` is true): the stage hands it each exchange's record when the primary ends and each
    shadow's outcome when the copy ends, and keeps nothing per exchange. The submits never block,
    and say whether the part was taken.

    Told apart by its ``joins`` attribute rather than ``isinstance``: mypyc compiles this module,
    and a compiled protocol class is neither runtime-checkable nor extendable."""

    def submit_record(self, record: list[Any]) -> bool: ...

    @property
    def joins(self) -> bool: ...

    @property
    def join_stats(self) -> JoinStats: ...

    @property
    def join_pending(self) -> int: ...

    @property
    def join_pending_bytes(self) -> int: ...

    def submit_primary(self, part: list[Any]) -> bool: ...

    def submit_shadow(self, part: list[Any]) -> bool: ...


#: Called with every joined exchange, whether or not it was taped (the wide-event log).
JoinedListener = Callable[[Exchange, ProxiedExchange, bool], None]


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


def _capped(body: bytes, cap: int, truncated_from: int | None) -> tuple[bytes, int | None]:
    """``body`` cut to ``cap`` bytes, marked with the size it had (unless it was cut before)."""
    return body[:cap], len(body) if truncated_from is None else truncated_from


def exchange_primary_part(
    ex: ProxiedExchange, max_body_bytes: int, session: str, mirrored: list[str], unrecorded: Collection[str]
) -> list[Any]:
    """The exchange as its primary ends, as a flat part for the joiner (``shadowtap.recorder.join.primary_part``):
    bodies capped at ``max_body_bytes`` with truncation marked, no nested record built here (the
    record stage's hot path; the joiner's side builds it, in the tape writer process by default)."""
    cap = max_body_bytes
    body = ex.request_body
    request_truncated_from: int | None = None
    if body is None:
        body, request_truncated_from = b"", ex.request_body_size
    elif len(body) > cap:
        body, request_truncated_from = _capped(body, cap, None)
    response = ex.response
    timing = ex.timing
    tags = {"source": "proxy", "correlation_id": ex.id}
    if ex.upgraded:
        tags["upgraded"] = "1"
    status: int | None = None
    headers: Headers = ()
    reason, response_body, version, truncated_from = "", b"", "", None
    if response is not None:
        status, reason, headers = response.status, response.reason, response.headers
        response_body, version, truncated_from = response.body, response.http_version, response.truncated_from
        if len(response_body) > cap:
            response_body, truncated_from = _capped(response_body, cap, truncated_from)
    return primary_part(
        ex.id, ex.started_at_ns, ex.started_mono_ns, ex.method, ex.target, ex.request_headers, body, ex.scheme,
        ex.authority, ex.http_version, request_truncated_from, status, reason, headers, response_body, version,
        truncated_from, ex.failure, timing.sent_ns, timing.first_byte_ns, timing.done_ns, session, ex.connection_id,
        ex.client_addr, dict(ex.decisions), tags, mirrored, unrecorded,
    )  # fmt: skip


def outcome_part(
    exchange_id: str,
    shadow: str,
    outcome: Outcome,
    timing: Timing,
    early: bool,
    recorded: bool,
    max_body_bytes: int,
    delta: list[Any] | None = None,
) -> list[Any]:
    """A shadow's outcome as a flat part for the joiner (``shadowtap.recorder.join.shadow_part``), its body
    capped at ``max_body_bytes`` with the truncation marked, with what the proxy changed in the
    copy's request (``delta``, in wire form; None when no copy was sent)."""
    if isinstance(outcome, Response):
        body, truncated_from = outcome.body, outcome.truncated_from
        if len(body) > max_body_bytes:
            body, truncated_from = _capped(body, max_body_bytes, truncated_from)
        return shadow_part(
            exchange_id, shadow, outcome.status, outcome.reason, outcome.headers, body, outcome.http_version,
            truncated_from, None, timing.sent_ns, timing.first_byte_ns, timing.done_ns, early, recorded, delta,
        )  # fmt: skip
    return shadow_part(  # a failure
        exchange_id, shadow, None, "", (), b"", "", None, outcome, timing.sent_ns, timing.first_byte_ns,
        timing.done_ns, early, recorded, delta,
    )  # fmt: skip


class RecordStage:
    """Decides what is taped, builds each exchange's record and its shadows' parts, and has them
    joined: in the tape writer process when it can join and no event log needs the joined exchange,
    else here, on the loop (``shadowtap.recorder.join.RecordJoiner``)."""

    name = "record"
    #: Nothing to do when a request ends: a shadow that answers before the primary says so (``early``).
    watches_requests = False

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
        self._counts = RecordStats()
        #: The sink that joins, when it can and nothing here needs the joined exchange; else the
        #: joiner here.
        self._remote: JoiningSink | None = None
        self._joiner: RecordJoiner | None = None
        if on_joined is None and getattr(tape, "joins", False) is True:
            self._remote = cast(JoiningSink, tape)
        else:
            self._joiner = RecordJoiner(
                JoinSettings(settings.join_timeout_s, settings.max_pending, settings.max_pending_bytes), self._joined
            )
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
        """Whether the tape writer process joins the exchanges (nothing is kept here per exchange)."""
        return self._remote is not None

    @property
    def stats(self) -> RecordStats:
        """The stage's counters, with the join's from wherever it runs (the writer's lag a batch)."""
        counts = dataclasses.replace(self._counts)
        if self._remote is not None:
            join = self._remote.join_stats
        else:
            assert self._joiner is not None
            join = self._joiner.stats
        counts.joined = join.joined
        counts.shadow_join_timeouts = join.shadow_join_timeouts
        counts.evicted_at_capacity = join.evicted_at_capacity
        counts.evicted_at_byte_capacity = join.evicted_at_byte_capacity
        counts.unjoined_shadow_outcomes += join.unjoined_shadow_outcomes
        return counts

    @property
    def pending(self) -> int:
        """Exchanges waiting for their shadows."""
        if self._remote is not None:
            return self._remote.join_pending
        assert self._joiner is not None
        return self._joiner.pending

    @property
    def pending_bytes(self) -> int:
        """The bytes of the exchanges waiting for their shadows."""
        if self._remote is not None:
            return self._remote.join_pending_bytes
        assert self._joiner is not None
        return self._joiner.pending_bytes

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._joiner is not None:
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
        part = exchange_primary_part(exchange, self._settings.max_body_bytes, session, mirrored, unrecorded)
        remote = self._remote
        if remote is not None:
            if remote.submit_primary(part):
                self._counts.submitted += 1
            else:
                self._counts.dropped_by_writer += 1
            return
        assert self._joiner is not None
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        size = part_bytes(part)
        record, waiting_for, off_tape = primary_from_part(part)
        self._joiner.primary(record, waiting_for, off_tape, (exchange, taped), loop.time(), size)

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
            assert self._joiner is not None
            if self._closed:
                self._counts.unjoined_shadow_outcomes += 1
                return
            # Kept whole here: the event log shows every outcome (the tape view leaves the
            # unrecorded ones out).
            part = outcome_part(exchange.id, shadow, outcome, timing, early, True, self._settings.max_body_bytes, delta)
            self._joiner.shadow(*shadow_from_part(part), part_bytes(part))
            return
        if not self._taped(exchange.id):
            self._counts.unjoined_shadow_outcomes += 1
            return
        recorded = shadow not in self._flags.unrecorded_shadows()
        part = outcome_part(exchange.id, shadow, outcome, timing, early, recorded, self._settings.max_body_bytes, delta)
        if not remote.submit_shadow(part):
            self._counts.shadow_outcomes_dropped += 1

    def _joined(self, entry: Joined) -> None:
        """The joiner's output: to the event log (every exchange) and the tape (if taped)."""
        exchange, taped = entry.context
        if self._on_joined is not None:
            try:
                self._on_joined(exchange_from_wire(entry.full_record()), exchange, taped)
            except Exception:
                log.exception("joined-exchange listener failed on %s", exchange.id)
        if not taped:
            self._count_untaped()
            return
        assert self._tape is not None
        if self._tape.submit_record(entry.tape_record()):
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
        return self._joiner is not None and self._joiner.sweep(now_s, _MAX_LATE_PER_SWEEP)

    async def aclose(self, timeout_s: float) -> None:
        """Complete everything still waiting here (call after the mirror stage has closed). The
        writer process completes what it joins when its pipe closes, with the same reason."""
        if self._closed:
            return
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._joiner is not None:
            self._joiner.close(SHUTDOWN_REASON)

    def snapshot(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "pending_bytes": self.pending_bytes,
            "joins_in_writer": self.joins_in_writer,
            **dataclasses.asdict(self.stats),
        }
