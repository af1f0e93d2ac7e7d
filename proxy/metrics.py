"""Prometheus metrics for one proxy process, counted cheaply on the loop and rendered on scrape.

The hot path only adds to plain ints and fixed-bucket histograms (no locks, no label lookups in
prometheus_client); a custom collector turns them into metric families when ``/metrics`` is read.
Each process has its own ``CollectorRegistry``, never the global one, so tests and workers do not
share state. This module must never block or allocate per request beyond a dict increment.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from shadowtap.proxy.stages import ProxiedExchange

__all__ = [
    "LATENCY_BUCKETS_S",
    "TRIP_BINS",
    "LatencyHistogram",
    "MetricsStage",
    "ProxyMetrics",
    "trip_bin",
    "trip_bin_s",
]

#: Seconds; dense below 10 ms where a sidecar's added latency lives, sparse up to timeouts.
LATENCY_BUCKETS_S: Final = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class LatencyHistogram:
    """Cumulative-on-read histogram with fixed buckets: ``observe`` is a bisect and two adds."""

    __slots__ = ("counts", "sum_s")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.sum_s += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(LATENCY_BUCKETS_S, self.counts, strict=False):
            running += n
            out.append((repr(bound), float(running)))
        out.append(("+Inf", float(running + self.counts[-1])))
        return out


#: Bins of the fine latency histograms trip rules read: 32 per doubling (2.2 % apart) from 1,024 ns
#: up to about 18 minutes (2^40 ns); bin 0 holds what is faster, the last bin what is slower.
_TRIP_STEPS: Final = 32
TRIP_BINS: Final = 30 * _TRIP_STEPS + 1


def trip_bin(ns: int) -> int:
    """The fine bin of a latency in ns: integer shifts only (compiled: about 500 instructions a
    request under callgrind, where a bisect over 870 float bounds cost about 2,000)."""
    if ns < 1024:
        return 0
    value = ns >> 5
    shift = 5
    while value >= 64:
        value >>= 1
        shift += 1
    index = (shift - 5) * _TRIP_STEPS + (value - 32) + 1
    return index if index < TRIP_BINS else TRIP_BINS - 1


def trip_bin_s(index: int) -> float:
    """A fine bin's representative latency in seconds: the geometric middle of its bounds."""
    if index <= 0:
        return 512e-9
    shift, step = divmod(index - 1, _TRIP_STEPS)
    low = (step + 32) << (shift + 5)
    high = (step + 33) << (shift + 5)
    return float((low * high) ** 0.5) / 1e9


_STATUS_CLASSES: Final = tuple(f"{n}xx" for n in range(6))

GaugeSource = Callable[[], Mapping[str, float]]


class ProxyMetrics:
    """Counters the stages update, plus gauges/counters read from live objects at scrape time."""

    def __init__(self, worker: int = 0) -> None:
        self.worker = worker
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests_by_status: dict[str, int] = {}
        self.primary_latency = LatencyHistogram()
        self.mirror_outcomes: dict[tuple[str, str], int] = {}
        self.shadow_latency: dict[str, LatencyHistogram] = {}
        #: 5xx answers per shadow (a trip rule's errors), counted only once trips are enabled.
        self.shadow_5xx: dict[str, int] = {}
        #: Cumulative fine latency histograms (``TRIP_BINS``, ``trip_bin``) of the primary and of each
        #: shadow, kept only when trip rules are configured; ``trips.TripGuard`` reads their growth
        #: once a second, so the data path adds a few shifts and one increment, nothing else.
        self.trip_primary: list[int] | None = None
        self.trip_shadow: dict[str, list[int]] = {}
        #: Set by the trip guard: (trips by (shadow, rule), tripped state by shadow), read at scrape.
        self.trip_view: Callable[[], tuple[dict[tuple[str, str], int], dict[str, float]]] | None = None
        #: Set by ``shadowtap.proxy.live_results`` (which reads the live stores once a second, never
        #: here): pairs by (shadow, endpoint template, result) and unsuppressed signatures by
        #: (shadow, severity), read at scrape.
        self.diff_view: Callable[[], tuple[dict[tuple[str, str, str], int], dict[tuple[str, str], int]]] | None = None
        self._sources: list[tuple[str, str, str, str, GaugeSource]] = []
        self.registry.register(_Collector(self))

    def count_mirror(self, shadow: str, outcome: str) -> None:
        key = (shadow, outcome)
        self.mirror_outcomes[key] = self.mirror_outcomes.get(key, 0) + 1

    def observe_shadow(self, shadow: str, seconds: float, status: int = 200) -> None:
        """A shadow's answer: its latency (copy sent to last byte) and status."""
        histogram = self.shadow_latency.get(shadow)
        if histogram is None:
            histogram = self.shadow_latency[shadow] = LatencyHistogram()
        histogram.observe(seconds)
        if self.trip_primary is not None:
            fine = self.trip_shadow.get(shadow)
            if fine is not None:
                fine[trip_bin(int(seconds * 1e9))] += 1
            if status >= 500:
                self.shadow_5xx[shadow] = self.shadow_5xx.get(shadow, 0) + 1

    def enable_trip_counters(self, shadows: Sequence[str]) -> None:
        """Start counting what trip rules read (``trip_primary``, ``trip_shadow``, ``shadow_5xx``)."""
        self.trip_primary = [0] * TRIP_BINS
        self.trip_shadow = {name: [0] * TRIP_BINS for name in shadows}

    def shadow_errors_and_ended(self, shadow: str, error_kinds: frozenset[str]) -> tuple[int, int]:
        """Cumulative (errors, copies that ended) of a shadow: errors are failed copies of
        ``error_kinds`` plus 5xx answers; ended are those failures plus every answer."""
        failed = 0
        answered = 0
        for (name, outcome), n in self.mirror_outcomes.items():
            if name == shadow:
                if outcome == "ok":
                    answered += n
                elif outcome in error_kinds:
                    failed += n
        return failed + self.shadow_5xx.get(shadow, 0), failed + answered

    def add_source(self, kind: str, name: str, help_text: str, label: str, source: GaugeSource) -> None:
        """Register values read at scrape: ``kind`` is ``gauge`` or ``counter``; ``label`` may be ''."""
        self._sources.append((kind, name, help_text, label, source))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector(Collector):
    def __init__(self, metrics: ProxyMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        requests = CounterMetricFamily(
            "shadowtap_proxy_requests", "Requests answered, by primary status class", labels=["status"]
        )
        for status, n in sorted(m.requests_by_status.items()):
            requests.add_metric([status], n)
        yield requests
        primary = HistogramMetricFamily(
            "shadowtap_primary_latency_seconds", "Primary time from request to response end"
        )
        primary.add_metric([], m.primary_latency.cumulative(), m.primary_latency.sum_s)
        yield primary
        shadow = HistogramMetricFamily(
            "shadowtap_shadow_latency_seconds", "Shadow time from send to response end", labels=["shadow"]
        )
        for name, histogram in sorted(m.shadow_latency.items()):
            shadow.add_metric([name], histogram.cumulative(), histogram.sum_s)
        yield shadow
        outcomes = CounterMetricFamily(
            "shadowtap_mirror_outcomes",
            "Mirror decisions and results per shadow: mirrored, ok, or the drop/failure reason",
            labels=["shadow", "outcome"],
        )
        for (name, outcome), n in sorted(m.mirror_outcomes.items()):
            outcomes.add_metric([name, outcome], n)
        yield outcomes
        if m.trip_view is not None:
            trips, tripped = m.trip_view()
            total = CounterMetricFamily(
                "shadowtap_trips", "Times a trip rule switched a shadow's mirroring off", labels=["shadow", "rule"]
            )
            for (shadow_name, rule), n in sorted(trips.items()):
                total.add_metric([shadow_name, rule], n)
            yield total
            state = GaugeMetricFamily(
                "shadowtap_tripped", "1 while a trip rule holds a shadow's mirroring off", labels=["shadow"]
            )
            for shadow_name, value in sorted(tripped.items()):
                state.add_metric([shadow_name], value)
            yield state
        if m.diff_view is not None:
            pairs, signatures = m.diff_view()
            judged = CounterMetricFamily(
                "shadowtap_diff_pairs",
                "Pairs the live differ judged per shadow and endpoint template (past the label cap: 'other'): "
                "compared (equal + differing) and errors",
                labels=["shadow", "endpoint", "result"],
            )
            for (shadow_name, endpoint, result), n in sorted(pairs.items()):
                judged.add_metric([shadow_name, endpoint, result], n)
            yield judged
            seen = GaugeMetricFamily(
                "shadowtap_diff_signatures",
                "Unsuppressed signatures the live differ has seen, by severity",
                labels=["shadow", "severity"],
            )
            for (shadow_name, level), n in sorted(signatures.items()):
                seen.add_metric([shadow_name, level], n)
            yield seen
        for kind, name, help_text, label, source in m._sources:
            family_type = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            family = family_type(name, help_text, labels=[label] if label else None)
            for label_value, value in sorted(source().items()):
                family.add_metric([label_value] if label else [], value)
            yield family


class MetricsStage:
    """Counts every primary exchange by status class and observes its latency.

    Both a ``Stage`` and a ``PrimaryObserver``: the app hands it to the data path as an observer,
    which costs a call per exchange instead of two stage calls and a ``Response`` build."""

    name = "metrics"

    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def request_complete(self, exchange: ProxiedExchange) -> None:
        return None

    def exchange_complete(self, exchange: ProxiedExchange) -> None:
        status = None if exchange.response is None else exchange.response.status
        self.observe_primary(status, exchange.failure is not None, exchange.timing.done_ns)

    def observe_primary(self, status: int | None, failed: bool, done_ns: int | None) -> None:
        """The ``PrimaryObserver`` side: how the data path reports to it without building records."""
        m = self._metrics
        if status is not None:
            label = _STATUS_CLASSES[status // 100] if 1 <= status < 600 else f"{status // 100}xx"
        else:
            label = "error" if failed else "unknown"
        m.requests_by_status[label] = m.requests_by_status.get(label, 0) + 1
        if done_ns is not None:
            m.primary_latency.observe(done_ns / 1e9)
            fine = m.trip_primary
            if fine is not None:
                fine[trip_bin(done_ns)] += 1

    async def aclose(self, timeout_s: float) -> None:
        return None
