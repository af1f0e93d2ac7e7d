"""The live differ's results read back into the proxy, once a second, in a thread: off the data path.

``LiveResults`` follows each candidate shadow's live store (``shadowtap.differ.store``, read only;
the store is in WAL mode, so the live differ never waits for it). Each tick reads the pairs the
live differ added since the last tick (``DiffStore.pairs_after``, at most ``READ_ROWS`` a tick: a
backlog, such as a reused ``--live-db``, is caught up over several ticks) and judges each equal,
differing or error with the report's suppression (volatile values, ignore rules, and learned noise
as a report of the last minute decided it, rebuilt every ``_NOISE_EVERY`` ticks when a secondary
teaches noise). From that one pass:

- the Prometheus counters per shadow and endpoint template (``ProxyMetrics.diff_view``; at most
  ``MAX_ENDPOINT_LABELS`` templates per shadow, the rest counted under ``OTHER_ENDPOINT``) and the
  unsuppressed signatures seen, by severity;
- with the event log on, one follow-up ``diff`` event per pair, carrying the exchange's id, its
  verdict and its signature ids (``EventLog.on_diff``);
- the figures of each window the trip guard's ``diff.*`` rules ask for (``TripGuard.diff_queries``),
  added up from the pairs kept by the second they started in (``DiffWindow``), handed back with why
  they cannot be judged yet (``TripGuard.take_diff``): live diff off, starting, restarting, paused,
  or its noise model warming up.

The work follows the rate of new pairs, never the size of the store. This module must never write
a store, run a query on the event loop, or touch the data path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from shadowtap.differ.aggregate import LEARNED_NOISE, build_report
from shadowtap.differ.config import DifferConfig
from shadowtap.differ.report_model import SEVERITIES, Severity
from shadowtap.differ.signatures import is_structural, severity, severity_rank, signature_id
from shadowtap.differ.store import EMPTY_SET, DiffStore, PairRow, SetMember
from shadowtap.proxy.trips import DIFF_KINDS, DiffWindow
from shadowtap.recorder.errors import ShadowtapError

if TYPE_CHECKING:
    from shadowtap.proxy.events import EventLog
    from shadowtap.proxy.metrics import ProxyMetrics
    from shadowtap.proxy.trips import TripGuard

__all__ = ["MAX_ENDPOINT_LABELS", "OTHER_ENDPOINT", "READ_ROWS", "LiveResults", "live_wait_reason"]

log = logging.getLogger(__name__)

#: Endpoint templates given a label of their own per shadow; later ones count under ``other``, so
#: a service whose paths defeat templating cannot grow the metrics without bound.
MAX_ENDPOINT_LABELS: Final = 100
OTHER_ENDPOINT: Final = "other"
#: Pairs read per store and tick: about a second's work at the live differ's best rate, so a tick
#: stays short and a backlog is caught up over several.
READ_ROWS: Final = 20_000
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
    """What is known of one shadow's store between ticks (touched only by the reading thread)."""

    name: str
    path: str
    last_id: int = 0
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
class _Reading:
    """One tick's results, handed from the reading thread to the loop."""

    windows: dict[tuple[str, int], DiffWindow] = field(default_factory=dict)
    view: DiffView = ({}, {})
    events: list[dict[str, Any]] = field(default_factory=list)
    waiting: str | None = None


class LiveResults:
    """Reads the live stores once per ``period_s`` (module docstring); ``start`` then ``await stop()``."""

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
    ) -> None:
        """``databases``: each candidate shadow's live store (none when live diff is off);
        ``live_stats``: the ``live_diff`` section of ``/stats``, which says whether the differ runs.
        ``publish``: give the metrics and events their figures; with ``--workers N`` only worker 0
        does (every worker reads the same stores; the others judge their trip rules only)."""
        self._live_stats = live_stats
        # Figures only: examples would decode stored exchanges every tick for nothing.
        self._config = dataclasses.replace(config, examples_per_signature=0)
        self._trips = trips if trips is not None and trips.has_diff_rules else None
        windows = [rule.window_s for rule in self._trips.rules if rule.kind in DIFF_KINDS] if self._trips else []
        self._keep_s = int(max(windows)) + _KEEP_MARGIN_S if windows else 0
        self._events = events if publish else None
        self._period_s = period_s
        self._clock_ns = clock_ns
        self._started_ns = clock_ns()
        self._follows = [_Follow(name, path) for name, path in databases]
        self._max_labels = MAX_ENDPOINT_LABELS
        self._view: DiffView = ({}, {})
        self._ticks = 0
        self._logged: set[str] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reads = 0
        self.diff_events = 0
        if self._follows and publish:
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
        """Stop after the read in progress, if any (it must not outlive the stores)."""
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
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
        """One reading: in a thread, then handed to the trip guard, the metrics and the event log."""
        queries = self._trips.diff_queries() if self._trips is not None else []
        waiting = self._waiting()
        reading = await asyncio.to_thread(self._read, queries, self._events is not None)
        self.reads += 1
        self._view = reading.view
        if self._trips is not None:
            self._trips.take_diff(reading.windows, waiting or reading.waiting, [f.name for f in self._follows])
        if self._events is not None and reading.events:
            self.diff_events += len(reading.events)
            self._events.on_diff(reading.events)

    def _waiting(self) -> str | None:
        reason = None if self._live_stats is None else live_wait_reason(self._live_stats())
        return reason or (None if self._follows else "live diff is off")

    # --- the reading thread -----------------------------------------------------------------------

    def _read(self, queries: list[tuple[str, int]], with_events: bool) -> _Reading:
        reading = _Reading()
        pairs: dict[tuple[str, str, str], int] = {}
        signatures: dict[tuple[str, str], int] = {}
        self._ticks += 1
        for follow in self._follows:
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
                if meta.secondary is not None and self._ticks % _NOISE_EVERY == 1:
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
                rows = store.pairs_after(follow.last_id, READ_ROWS)
                for row in rows:
                    event = self._judge(store, follow, row)
                    if with_events and event is not None and row.started_at_ns >= self._started_ns:
                        reading.events.append(event)
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
