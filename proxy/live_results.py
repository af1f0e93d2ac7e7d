"""The live differ's results read back for the proxy, once a second, off the data path.

``LiveReader`` follows each candidate shadow's live store (``shadowtap.differ.store``, read only;
the store is in WAL mode, so the live differ never waits for it). Each reading takes the pairs the
live differ added since the last one (``DiffStore.pairs_after``, at most ``READ_ROWS`` a store: a
backlog, such as a reused ``--live-db``, is caught up over several readings) and judges each equal,
differing or error with the report's suppression (volatile values, ignore rules, and learned noise
as a report of the last minute decided it, rebuilt every ``_NOISE_EVERY`` readings when a secondary
teaches noise). From that one pass, a ``Reading``:

- the Prometheus counters per shadow and endpoint template (``ProxyMetrics.diff_view``; at most
  ``MAX_ENDPOINT_LABELS`` templates per shadow, the rest counted under ``OTHER_ENDPOINT``) and the
  unsuppressed signatures seen, by severity;
- with the event log on, one follow-up ``diff`` event per pair, carrying the exchange's id, its
  verdict and its signature ids, serialised already (at most ``MAX_EVENTS`` between readings, the
  rest counted as dropped; ``EventLog.on_diff`` writes the lines);
- the figures of each window the trip guard's ``diff.*`` rules ask for (``TripGuard.diff_queries``),
  added up from the pairs kept by the second they started in (``DiffWindow``), handed back with why
  they cannot be judged yet (``TripGuard.take_diff``): live diff off, starting, restarting, paused,
  or its noise model warming up.

The reader runs in the live analysis process (``shadowtap.proxy.live_view``), never in the proxy's:
``LiveResults``, in the proxy, asks it for a reading once a second with the windows its trip rules
want, and applies the compact answer (``pack_reading``): its cost in the proxy follows the number
of templates, rules and events, never the store's size. Without an analysis process (a reader of
stores written by hand) ``LocalSource`` takes the readings in a thread.

The reader's work follows the rate of new pairs, never the size of the store. This module must
never write a store, run a query on the event loop, or touch the data path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from shadowtap.differ.aggregate import LEARNED_NOISE, build_report
from shadowtap.differ.config import DifferConfig
from shadowtap.differ.report_model import SEVERITIES, Severity
from shadowtap.differ.signatures import is_structural, severity, severity_rank, signature_id
from shadowtap.differ.store import EMPTY_SET, DiffStore, PairRow, SetMember
from shadowtap.proxy.trips import DIFF_KINDS, DiffWindow, TripRule
from shadowtap.recorder.errors import ShadowtapError

if TYPE_CHECKING:
    from shadowtap.proxy.events import EventLog
    from shadowtap.proxy.metrics import ProxyMetrics
    from shadowtap.proxy.trips import TripGuard

__all__ = [
    "MAX_ENDPOINT_LABELS",
    "MAX_EVENTS",
    "OTHER_ENDPOINT",
    "READ_ROWS",
    "LiveReader",
    "LiveResults",
    "LocalSource",
    "Reading",
    "ReadingSource",
    "keep_seconds",
    "live_wait_reason",
    "pack_reading",
    "unpack_reading",
]

log = logging.getLogger(__name__)

#: Endpoint templates given a label of their own per shadow; later ones count under ``other``, so
#: a service whose paths defeat templating cannot grow the metrics without bound.
MAX_ENDPOINT_LABELS: Final = 100
OTHER_ENDPOINT: Final = "other"
#: Pairs read per store and tick: about a second's work at the live differ's best rate, so a tick
#: stays short and a backlog is caught up over several.
READ_ROWS: Final = 20_000
#: Follow-up ``diff`` events kept between two readings that take them; past it they are counted
#: as dropped (the event log's ``dropped``).
MAX_EVENTS: Final = 20_000
#: Distinct signatures remembered per shadow for the severity gauge; past it new ones are not counted.
MAX_SIGNATURES: Final = 50_000
#: Cached difference sets and keys per shadow before the cache starts over.
_CACHE_SIZE: Final = 65_536
#: Learned-noise decisions come from a report of this last stretch, rebuilt every ``_NOISE_EVERY``
#: ticks (only when a secondary shadow teaches noise): the one reading whose cost grows with the rate.
_NOISE_WINDOW_S: Final = 60.0
_NOISE_EVERY: Final = 10
#: Seconds of pairs kept for the trip rules' windows beyond the longest window a rule has: the
#: differ's lag. Without a ``diff.*`` rule none are kept.
_KEEP_MARGIN_S: Final = 60
#: Kinds of pair (endpoint, status, difference set) kept per second; past it a second's new kinds
#: count under the endpoint ``other``, so paths that defeat templating cannot grow memory without
#: bound (their signatures then count as one per key across those endpoints).
MAX_KINDS_PER_SECOND: Final = 20_000

#: Pairs by (shadow, endpoint label, result) and unsuppressed signatures by (shadow, severity).
DiffView = tuple[dict[tuple[str, str, str], int], dict[tuple[str, str], int]]
#: A signature as the store keys it: (endpoint, difference key id, volatile reason or "").
_SigKey = tuple[str, int, str]
#: What a signature is: its id, severity, whether a detector or rule silences it whatever the noise,
#: and the (endpoint, path, kind, transition) learned noise is decided on.
_Sig = tuple[str, Severity, bool, tuple[str, str, str, str]]


def live_wait_reason(stats: dict[str, Any]) -> str | None:
    """Why the live results cannot be judged now, from the ``live_diff`` section of ``/stats``
    (``LiveDiff.stats``); None when they can."""
    state = stats.get("state")
    if state == "off":
        return f"live diff is off: {stats.get('why') or 'not configured'}"
    if state in ("starting", "restarting"):
        return f"the live differ is {state}"
    if state == "paused":
        return "live diff is paused"
    noise = stats.get("noise") or {}
    if noise.get("state") == "warming up":
        return (
            f"noise model warming up: {noise.get('pairs')} of {noise.get('needed')} exchanges answered by "
            f"{noise.get('secondary')}"
        )
    return None


@dataclass(slots=True)
class _Follow:
    """What is known of one shadow's store between readings (touched by one thread at a time)."""

    name: str
    path: str
    last_id: int = 0
    #: No event for a pair at or below this id: the proxy had it from an earlier reader.
    events_after: int = 0
    #: The endpoints given a label of their own (at most ``MAX_ENDPOINT_LABELS``).
    labels: dict[str, str] = field(default_factory=dict)
    pairs: dict[tuple[str, str], int] = field(default_factory=dict)
    signatures: dict[_SigKey, _Sig] = field(default_factory=dict)
    #: (endpoint, path, kind, transition) the latest window's report found to be learned noise.
    learned: frozenset[tuple[str, str, str, str]] = frozenset()
    keys: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    members: dict[int, tuple[SetMember, ...]] = field(default_factory=dict)
    #: Pairs read that the secondary answered too (what noise is learned from), and how many the
    #: noise model needs (``diff.min_samples``); 0 without a secondary.
    secondary_pairs: int = 0
    noise_needs: int = 0
    #: The pairs read, by the second they started in: {(endpoint, status, difference set): count},
    #: as many seconds as the longest ``diff.*`` rule's window (what a window adds up).
    seconds: dict[int, dict[tuple[str, str, int], int]] = field(default_factory=dict)


@dataclass(slots=True)
class Reading:
    """One tick's results: what the reader hands the proxy (packed by ``pack_reading`` when it
    crosses from the live analysis process)."""

    windows: dict[tuple[str, int], DiffWindow] = field(default_factory=dict)
    view: DiffView = ({}, {})
    #: The follow-up ``diff`` events, each one JSON line already serialised.
    events: list[bytes] = field(default_factory=list)
    #: Events not kept since the last reading that took events (past ``MAX_EVENTS``).
    events_dropped: int = 0
    waiting: str | None = None
    #: Per shadow, the last pair read: handed back with the next request (``marks``), so a reader
    #: started anew (the analysis process restarted) sends no event twice.
    marks: dict[str, int] = field(default_factory=dict)


def pack_reading(reading: Reading) -> list[Any]:
    """A reading as plain lists for msgpack (``unpack_reading`` reverses it)."""
    pairs, signatures = reading.view
    return [
        [
            [name, since, w.compared, w.differing, w.errors, w.signatures]
            for (name, since), w in reading.windows.items()
        ],
        [[shadow, label, result, n] for (shadow, label, result), n in pairs.items()],
        [[shadow, level, n] for (shadow, level), n in signatures.items()],
        reading.events,
        reading.events_dropped,
        reading.waiting,
        reading.marks,
    ]


def unpack_reading(packed: list[Any]) -> Reading:
    windows, pairs, signatures, events, dropped, waiting, marks = packed
    return Reading(
        {(name, since): DiffWindow(compared, differing, errors, dict(by_severity))
         for name, since, compared, differing, errors, by_severity in windows},
        ({(shadow, label, result): n for shadow, label, result, n in pairs},
         {(shadow, level): n for shadow, level, n in signatures}),
        list(events),
        int(dropped),
        waiting,
        dict(marks),
    )  # fmt: skip


def keep_seconds(rules: Iterable[TripRule]) -> int:
    """Seconds of pairs a reader keeps for the ``diff.*`` rules' windows (0 without one)."""
    windows = [rule.window_s for rule in rules if rule.kind in DIFF_KINDS]
    return int(max(windows)) + _KEEP_MARGIN_S if windows else 0


class ReadingSource(Protocol):
    """Where ``LiveResults`` gets each tick's reading: a ``LiveReader`` in a thread of this process
    (``LocalSource``), or the live analysis process (``shadowtap.proxy.live_view.ViewClient``)."""

    async def reading(self, queries: list[tuple[str, int]], with_events: bool, marks: dict[str, int]) -> Reading: ...


class LiveResults:
    """Takes a reading once per ``period_s`` (module docstring); ``start`` then ``await stop()``."""

    def __init__(
        self,
        databases: tuple[tuple[str, str], ...],
        config: DifferConfig,
        metrics: ProxyMetrics,
        trips: TripGuard | None = None,
        events: EventLog | None = None,
        *,
        live_stats: Callable[[], dict[str, Any]] | None = None,
        publish: bool = True,
        period_s: float = 1.0,
        clock_ns: Callable[[], int] = time.time_ns,
        source: ReadingSource | None = None,
    ) -> None:
        """``databases``: each candidate shadow's live store (none when live diff is off);
        ``live_stats``: the ``live_diff`` section of ``/stats``, which says whether the differ runs.
        ``publish``: give the metrics and events their figures; with ``--workers N`` only worker 0
        does (the others judge their trip rules only). ``source``: where the readings come from (the
        live analysis process); by default a ``LiveReader`` of this process, in a thread."""
        self._live_stats = live_stats
        self._trips = trips if trips is not None and trips.has_diff_rules else None
        self._events = events if publish else None
        self._period_s = period_s
        self._names = [name for name, _ in databases]
        if source is None and databases:
            keep_s = keep_seconds(self._trips.rules) if self._trips is not None else 0
            source = LocalSource(LiveReader(databases, config, keep_s, clock_ns))
        self._source = source
        self._view: DiffView = ({}, {})
        self._marks: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reads = 0
        self.diff_events = 0
        if databases and publish:
            metrics.diff_view = self.view
        if self._trips is not None and not databases:
            why = self._waiting()
            for rule in self._trips.rules:
                if rule.kind in DIFF_KINDS:
                    log.warning("trip rule %r cannot trip: %s", rule.text, why)

    def view(self) -> DiffView:
        """The metrics' figures as of the last tick (read at scrape, never the store)."""
        return self._view

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="live-results")

    async def stop(self) -> None:
        """Stop after a local read in progress, if any (it must not outlive the stores); a request
        to the analysis process is given up."""
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            if not isinstance(self._source, LocalSource):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._period_s)
            if self._stop.is_set():
                return
            try:
                await self.tick()
            except Exception:  # a bug here must never stop the results for good, nor reach the loop
                log.exception("reading the live diff results failed")

    async def tick(self) -> None:
        """One reading from the source, handed to the trip guard, the metrics and the event log."""
        queries = self._trips.diff_queries() if self._trips is not None else []
        waiting = self._waiting()
        if self._source is None:
            reading = Reading()
        else:
            try:
                reading = await self._source.reading(queries, self._events is not None, self._marks)
            except ShadowtapError as exc:  # the analysis process is away: the rules wait, the view stays
                reading = Reading(view=self._view, waiting=str(exc))
        self.reads += 1
        self._view = reading.view
        self._marks.update(reading.marks)
        if self._trips is not None:
            self._trips.take_diff(reading.windows, waiting or reading.waiting, self._names)
        if self._events is not None:
            self._events.dropped += reading.events_dropped
            if reading.events:
                self.diff_events += len(reading.events)
                self._events.on_diff(reading.events)

    def _waiting(self) -> str | None:
        reason = None if self._live_stats is None else live_wait_reason(self._live_stats())
        return reason or (None if self._names else "live diff is off")


class LocalSource:
    """Readings of a ``LiveReader`` taken in a thread of this process."""

    def __init__(self, reader: LiveReader) -> None:
        self.reader = reader

    async def reading(self, queries: list[tuple[str, int]], with_events: bool, marks: dict[str, int]) -> Reading:
        return await asyncio.to_thread(self.reader.read, queries, with_events, True, marks)


class LiveReader:
    """Follows the live stores and judges their new pairs (module docstring): the work behind a
    reading, done in the live analysis process (``shadowtap.proxy.live_view``). ``keep_s``: seconds
    of pairs kept for the ``diff.*`` rules' windows (``keep_seconds``)."""

    def __init__(
        self,
        databases: tuple[tuple[str, str], ...],
        config: DifferConfig,
        keep_s: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
        max_labels: int | None = None,
        started_ns: int | None = None,
    ) -> None:
        """``started_ns``: events only for pairs that started from then on (by default, now)."""
        # Figures only: examples would decode stored exchanges every tick for nothing.
        self._config = dataclasses.replace(config, examples_per_signature=0)
        self._keep_s = keep_s
        self._clock_ns = clock_ns
        self._started_ns = clock_ns() if started_ns is None else started_ns
        self._follows = [_Follow(name, path) for name, path in databases]
        self._max_labels = MAX_ENDPOINT_LABELS if max_labels is None else max_labels
        self._ticks = 0
        self._logged: set[str] = set()
        #: Events judged and not taken yet (a reading that asks for them takes them), at most
        #: ``MAX_EVENTS``; set once a reading has asked for events.
        self._collect_events = False
        self._pending: list[bytes] = []
        self._dropped = 0

    def read(
        self, queries: list[tuple[str, int]], with_events: bool, fresh: bool = True, marks: dict[str, int] | None = None
    ) -> Reading:
        """A reading: the new pairs judged (unless not ``fresh``: the last read is recent, and only
        the windows are added up anew), the windows ``queries`` asks for, and with ``with_events``
        the events judged since the last reading that took them. ``marks``: the last reading's, as
        the caller had them (``Reading.marks``)."""
        reading = Reading()
        pairs: dict[tuple[str, str, str], int] = {}
        signatures: dict[tuple[str, str], int] = {}
        if with_events:
            self._collect_events = True
        if fresh:
            self._ticks += 1
        for follow in self._follows:
            if marks and follow.name in marks:
                follow.events_after = max(follow.events_after, int(marks[follow.name]))
            try:
                store = DiffStore(follow.path, create=False)
            except ShadowtapError:
                reading.waiting = "no results from the live differ yet"
                self._carry(follow, pairs, signatures)
                continue
            try:
                meta = store.meta()
                if meta is None:
                    reading.waiting = "no results from the live differ yet"
                    continue
                follow.noise_needs = max(1, self._config.min_samples) if meta.secondary is not None else 0
                if fresh and meta.secondary is not None and self._ticks % _NOISE_EVERY == 1:
                    # Learned noise weighs the secondary's rate at a field against the candidate's
                    # over many pairs: the report's decisions over the last stretch, now and then.
                    since = self._clock_ns() - int(_NOISE_WINDOW_S * 1e9)
                    report = build_report(store, self._config, since_ns=since)
                    follow.learned = frozenset(
                        (s.endpoint, s.path, s.kind, s.transition)
                        for e in report.endpoints
                        for s in e.signatures
                        if s.suppression_reason == LEARNED_NOISE
                    )
                rows = store.pairs_after(follow.last_id, READ_ROWS) if fresh else []
                for row in rows:
                    event = self._judge(store, follow, row)
                    if (
                        self._collect_events
                        and event is not None
                        and row.started_at_ns >= self._started_ns
                        and row.id > follow.events_after
                    ):
                        if len(self._pending) < MAX_EVENTS:
                            self._pending.append(json.dumps(event, separators=(",", ":")).encode() + b"\n")
                        else:
                            self._dropped += 1
                if rows:
                    follow.last_id = rows[-1].id
                if follow.secondary_pairs < follow.noise_needs:
                    # Said by the live differ's own figures too, where they are at hand; not with
                    # --workers N, where the differ runs in the parent: the store says it here.
                    reading.waiting = (
                        f"noise model warming up: {follow.secondary_pairs} of {follow.noise_needs} pairs answered "
                        f"by {meta.secondary}"
                    )
                oldest = self._clock_ns() // 1_000_000_000 - self._keep_s
                for second in [second for second in follow.seconds if second < oldest]:
                    del follow.seconds[second]
                for name, since in queries:
                    if name == follow.name:
                        reading.windows[(name, since)] = self._window(store, follow, since)
            except ShadowtapError as exc:
                self._log_once(f"cannot read the live store {follow.path}: {exc}")
            finally:
                store.close()
                self._carry(follow, pairs, signatures)
        reading.view = (pairs, signatures)
        reading.marks = {follow.name: follow.last_id for follow in self._follows}
        if with_events:
            reading.events, self._pending = self._pending, []
            reading.events_dropped, self._dropped = self._dropped, 0
        return reading

    def _carry(
        self, follow: _Follow, pairs: dict[tuple[str, str, str], int], signatures: dict[tuple[str, str], int]
    ) -> None:
        for (label, result), n in follow.pairs.items():
            pairs[(follow.name, label, result)] = n
        for level in SEVERITIES:
            signatures[(follow.name, level)] = 0
        learned = follow.learned
        for _, level, fixed, noise_key in follow.signatures.values():
            if not fixed and noise_key not in learned:
                signatures[(follow.name, level)] += 1

    def _judge(self, store: DiffStore, follow: _Follow, row: PairRow) -> dict[str, Any] | None:
        """Count one new pair; its follow-up event (None for a noise-only pair)."""
        if row.status == "noise":
            return None
        if row.has_secondary:
            follow.secondary_pairs += 1
        ep = row.endpoint
        label = follow.labels.get(ep)
        if label is None:
            if len(follow.labels) < self._max_labels:
                label = follow.labels[ep] = ep
            else:
                label = OTHER_ENDPOINT
        shown: list[str] = []
        hidden: list[str] = []
        worst: Severity | None = None
        for key_id, volatile in self._members(store, follow, row.diff_set):
            sig_key = (ep, key_id, volatile)
            sig = follow.signatures.get(sig_key)
            if sig is None:
                sig = self._signature(store, follow, sig_key)
                if len(follow.signatures) < MAX_SIGNATURES:
                    follow.signatures[sig_key] = sig
            sig_id, level, fixed, noise_key = sig
            if fixed or noise_key in follow.learned:
                hidden.append(sig_id)
            else:
                shown.append(sig_id)
                if severity_rank(level) < severity_rank(worst):
                    worst = level
        if self._keep_s:
            groups = follow.seconds.get(row.started_at_ns // 1_000_000_000)
            if groups is None:
                groups = follow.seconds[row.started_at_ns // 1_000_000_000] = {}
            group = (ep, row.status, row.diff_set)
            if group not in groups and len(groups) >= MAX_KINDS_PER_SECOND:
                group = (OTHER_ENDPOINT, row.status, row.diff_set)
            groups[group] = groups.get(group, 0) + 1
        if row.status == "compared":
            verdict = "differing" if shown else "equal"
            results: tuple[str, ...] = ("compared", verdict)
        else:
            verdict = "error"
            results = ("errors",)
        for result in results:
            follow.pairs[(label, result)] = follow.pairs.get((label, result), 0) + 1
        return {
            "event": "diff",
            "id": row.exchange_id,
            "ts_ns": row.started_at_ns,
            "shadow": follow.name,
            "endpoint": ep,
            "verdict": verdict,
            "severity": worst,
            "signatures": shown,
            "suppressed": hidden,
        }

    def _members(self, store: DiffStore, follow: _Follow, set_id: int) -> tuple[SetMember, ...]:
        if set_id == EMPTY_SET:
            return ()
        found = follow.members.get(set_id)
        if found is None:
            found = store.members(set_id)
            if len(follow.members) >= _CACHE_SIZE:
                follow.members.clear()
            follow.members[set_id] = found
        return found

    def _signature(self, store: DiffStore, follow: _Follow, sig_key: _SigKey) -> _Sig:
        """What a signature is, decided as ``build_report`` decides it."""
        ep, key_id, volatile = sig_key
        key = follow.keys.get(key_id)
        if key is None:
            key = store.diff_key(key_id)
            if len(follow.keys) >= _CACHE_SIZE:
                follow.keys.clear()
            follow.keys[key_id] = key
        path, kind, transition = key
        # Ignore rules never silence structure (as in the report); volatile values always are.
        fixed = bool(volatile) or (
            not is_structural(kind, transition) and any(rule.matches(ep, path) for rule in self._config.ignore)
        )
        sig_id = signature_id(ep, path, kind, transition if not volatile else f"{transition} {volatile}")
        return sig_id, severity(kind, transition), fixed, (ep, path, kind, transition)

    def _window(self, store: DiffStore, follow: _Follow, since_ns: int) -> DiffWindow:
        """A trip rule's figures: the pairs that started in whole seconds from ``since_ns`` on, judged
        as the report judges them (the same suppression as the counters)."""
        first = -(-since_ns // 1_000_000_000)
        compared = differing = errors = 0
        shown: dict[_SigKey, Severity] = {}
        for second, groups in follow.seconds.items():
            if second < first:
                continue
            for (ep, status, diff_set), n in groups.items():
                live = False
                for key_id, volatile in self._members(store, follow, diff_set):
                    sig_key = (ep, key_id, volatile)
                    sig = follow.signatures.get(sig_key) or self._signature(store, follow, sig_key)
                    if not sig[2] and sig[3] not in follow.learned:
                        live = True
                        shown[sig_key] = sig[1]
                if status == "compared":
                    compared += n
                    differing += n if live else 0
                else:
                    errors += n
        by_severity: dict[str, int] = {}
        for level in shown.values():
            by_severity[level] = by_severity.get(level, 0) + 1
        return DiffWindow(compared, differing, errors, by_severity)

    def _log_once(self, message: str) -> None:
        if message not in self._logged and len(self._logged) < 100:
            self._logged.add(message)
            log.warning("%s", message)
