"""Replay latency statistics: three HdrHistograms per endpoint template and overall, errors and a timeline.

Service time (sent -> done), response time from the intended send (due -> done: corrected for
coordinated omission, so a stall shows up for every request that waited behind it) and start lag
(due -> released by the scheduler: the replayer's own health). Errors are classified as connect,
timeout, reset, 5xx and other, and a failed gRPC call (an HTTP 200 whose ``grpc-status`` is not OK)
by its status name (``grpc-NOT_FOUND``), the first few of each kept as examples. A per-second timeline
(planned, sent, ok, errors) feeds the HTML report. Everything encodes to plain data (histograms
as HdrHistogram's base64 encoding) so worker processes and Locust workers ship it to one place and
``merge`` adds it up.

Endpoints are templates from the shared learner (``differ.templates``), never raw paths: a request
planned under ``GET /files/abc`` is counted under ``GET /files/{id}`` once that position folds, and
stats already kept under the old key merge into the template's (``ReplayStats.templater``). So the
per-endpoint state is bounded by the learner's template cap (and its overflow bucket).

Pure code, no asyncio and no I/O: the locustfile uses it under gevent. It must never record a
negative or unbounded value (clamped into the histogram range) and never lose a count when merging.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from hdrh.histogram import HdrHistogram

from shadowtap.differ.templates import EndpointTemplater

__all__ = [
    "ERROR_CLASSES",
    "ERROR_EXAMPLES_PER_CLASS",
    "FAILURE_KINDS",
    "HISTOGRAMS",
    "SERIES_MAX_POINTS",
    "SERIES_PERCENTILES",
    "STATUS_CLASSES",
    "EndpointStats",
    "ErrorExample",
    "ReplayStats",
    "Series",
    "Summary",
    "error_counts",
    "values_at_percentiles",
]

#: Histogram unit: microseconds, 1 us .. 1 h; 3 significant digits overall (186 KiB each), 2 per
#: endpoint (27 KiB each: the three of an endpoint cost 82 KiB, not 560, and stay within 1 %).
_LOWEST_US: Final = 1
_HIGHEST_US: Final = 3_600_000_000
_DIGITS: Final = 3
_ENDPOINT_DIGITS: Final = 2
_NS_PER_US: Final = 1_000
#: Intervals the series keeps at most: one second each until a run outgrows them (10 minutes), then
#: the interval doubles and neighbours fold together, so memory and the charts stay bounded however
#: long a replay runs.
SERIES_MAX_POINTS: Final = 600
_NS_PER_S: Final = 1_000_000_000
#: No entry counted yet (above any counts-array index).
_NO_INDEX: Final = 1 << 30

HISTOGRAMS: Final = ("service", "corrected", "start_lag")
ERROR_CLASSES: Final = ("connect", "timeout", "reset", "5xx", "other")
#: Response status classes, and the kinds of request that got no response, counted per interval.
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")
FAILURE_KINDS: Final = ("connect", "timeout", "reset", "other")
PERCENTILES: Final = (50.0, 90.0, 99.0, 99.9, 100.0)
#: The response-time percentiles reported per interval of the series.
SERIES_PERCENTILES: Final = (50.0, 90.0, 99.0)
#: Failed requests kept as examples, per error class: the first ones, enough to see what went wrong
#: (a dead target fails every request the same way) while the memory stays a few lines.
ERROR_EXAMPLES_PER_CLASS: Final = 3


def _histogram() -> HdrHistogram:
    return HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS)


def _endpoint_histogram() -> HdrHistogram:
    return HdrHistogram(_LOWEST_US, _HIGHEST_US, _ENDPOINT_DIGITS)


def _layout(digits: int) -> tuple[int, int, int, int]:
    """HdrHistogram's own constants for a counts-array index at ``digits`` significant digits (every
    histogram of one precision has the same layout): unit magnitude, sub-bucket half-count
    magnitude, sub-bucket mask, sub-bucket half count. A test pins the constants below to these."""
    layout = HdrHistogram(_LOWEST_US, _HIGHEST_US, digits)
    return (
        int(layout.unit_magnitude),
        int(layout.sub_bucket_half_count_magnitude),
        int(layout.sub_bucket_mask),
        int(layout.sub_bucket_half_count),
    )


# The layouts of 1 us .. 1 h at three digits (overall) and two (an endpoint), as literals: compiled,
# the index is then arithmetic on machine integers with no lookup.
_UNIT: Final = 0
_HALF_MAGNITUDE: Final = 10
_MASK: Final = 2047
_HALF_COUNT: Final = 1024
_E_UNIT: Final = 0
_E_HALF_MAGNITUDE: Final = 7
_E_MASK: Final = 255
_E_HALF_COUNT: Final = 128


def _counts_index(value: int) -> int:
    """HdrHistogram's counts-array index of ``value`` in an overall histogram (three digits).

    The same arithmetic as ``HdrHistogram._counts_index_for`` (bucket from the bit length, then
    the sub-bucket), as a plain function of machine integers when compiled: ``record_value``'s call
    chain was most of the replayer's recording cost. A test pins this against ``record_value``.
    """
    bucket = (value | _MASK).bit_length() - _UNIT - (_HALF_MAGNITUDE + 1)
    return ((bucket + 1) << _HALF_MAGNITUDE) + (value >> (bucket + _UNIT)) - _HALF_COUNT


def _endpoint_counts_index(value: int) -> int:
    """``_counts_index`` for an endpoint's histograms (two digits)."""
    bucket = (value | _E_MASK).bit_length() - _E_UNIT - (_E_HALF_MAGNITUDE + 1)
    return ((bucket + 1) << _E_HALF_MAGNITUDE) + (value >> (bucket + _E_UNIT)) - _E_HALF_COUNT


def _counts_view(hist: HdrHistogram) -> memoryview:
    """``hist``'s counts array as a flat memoryview of unsigned integers: a count written through it
    is in the histogram (the array's memory), at the cost of a subscript, not of a ctypes call."""
    raw = memoryview(hist.counts)
    size = raw.itemsize
    raw = raw.cast("B")
    # HdrHistogram's word sizes: 8 (its default, ours), 4 and 2.
    if size == 8:
        return raw.cast("Q")
    return raw.cast("I") if size == 4 else raw.cast("H")


class _Counting:
    """Latencies counted straight into one ``EndpointStats``' three counts arrays, with the rest of
    the histograms' bookkeeping (their total, lowest and highest value) kept here until ``settle``:
    per request, three subscripts and a few integer comparisons instead of three ``record_value``
    calls. ``ReplayStats`` settles before anything reads the histograms."""

    __slots__ = (
        "added",
        "corrected",
        "corrected_high",
        "corrected_low",
        "histograms",
        "lag",
        "lag_high",
        "lag_low",
        "service",
        "service_high",
        "service_low",
    )

    def __init__(self, stats: EndpointStats) -> None:
        self.histograms = (stats.service, stats.corrected, stats.start_lag)
        self.service = _counts_view(stats.service)
        self.corrected = _counts_view(stats.corrected)
        self.lag = _counts_view(stats.start_lag)
        self.added = 0
        self.service_low = self.corrected_low = self.lag_low = _NO_INDEX
        self.service_high = self.corrected_high = self.lag_high = -1

    def count(self, service: int, corrected: int, lag: int) -> None:
        """One request's three counts-array indexes."""
        self.service[service] += 1
        self.corrected[corrected] += 1
        self.lag[lag] += 1
        self.added += 1
        if service < self.service_low:
            self.service_low = service
        if service > self.service_high:
            self.service_high = service
        if corrected < self.corrected_low:
            self.corrected_low = corrected
        if corrected > self.corrected_high:
            self.corrected_high = corrected
        if lag < self.lag_low:
            self.lag_low = lag
        if lag > self.lag_high:
            self.lag_high = lag

    def settle(self) -> None:
        """Bring the histograms' totals, lowest and highest values up to the counts, as decoding a
        histogram sets them (the values of the lowest and highest entries)."""
        added = self.added
        if not added:
            return
        service, corrected, lag = self.histograms
        for hist, low, high in (
            (service, self.service_low, self.service_high),
            (corrected, self.corrected_low, self.corrected_high),
            (lag, self.lag_low, self.lag_high),
        ):
            hist.total_count += added
            hist.min_value = min(hist.min_value, hist.get_value_from_index(low))
            hist.max_value = max(hist.max_value, hist.get_highest_equivalent_value(hist.get_value_from_index(high)))
        self.added = 0
        self.service_low = self.corrected_low = self.lag_low = _NO_INDEX
        self.service_high = self.corrected_high = self.lag_high = -1


def _cumulative(hist: HdrHistogram) -> tuple[list[int], list[int]]:
    """The entries of ``hist`` that are not zero: their counts-array indexes, and the count of
    values up to and including each (so a percentile is a bisection).

    It reads the counts up to the largest value recorded in place (``_counts_view``) and visits only
    the entries that are not zero (``itertools.compress`` skips the rest in C); past the largest value only for a
    histogram whose largest value was not tracked (fewer counts up to it than the total says), as
    HdrHistogram would walk them.
    """
    indexes: list[int] = []
    cumulative: list[int] = []
    total: int = hist.get_total_count()
    if total == 0:
        return indexes, cumulative
    # A decoded histogram may hold a shorter counts array; entries past it count as zero.
    length: int = min(hist.counts_len, hist.encoder.payload.counts_len)
    end = length if hist.max_value <= 0 else min(length, hist.get_counts_array_index(hist.max_value) + 1)
    view = _counts_view(hist)
    seen: int = 0
    start = 0
    for stop in (end, length):
        counts = view[start:stop]
        for offset in itertools.compress(range(stop - start), counts):
            seen += counts[offset]
            indexes.append(start + offset)
            cumulative.append(seen)
        if seen >= total:
            break
        start = stop
    return indexes, cumulative


def _values_at(hist: HdrHistogram, walk: tuple[list[int], list[int]], wanted: Iterable[float]) -> dict[float, int]:
    indexes, cumulative = walk
    out: dict[float, int] = {}
    for p in wanted:
        at = bisect.bisect_left(cumulative, int(hist.get_target_count_at_percentile(p)))
        if at == len(cumulative):
            out[p] = 0  # more counts wanted than the array holds: as HdrHistogram's walk, nothing found
            continue
        value = hist.get_value_from_index(indexes[at])
        out[p] = hist.get_highest_equivalent_value(value) if p else hist.get_lowest_equivalent_value(value)
    return out


def values_at_percentiles(hist: HdrHistogram, percentiles: Iterable[float]) -> dict[float, int]:
    """``hist.get_value_at_percentile(p)`` for each of ``percentiles``, from one walk of its counts.

    The same values as HdrHistogram's own (a test pins them), which walks the counts array from
    its start for each percentile with a Python call per entry: the five percentiles of the three
    overall histograms took tens of milliseconds of a report (23,552 entries each at three digits),
    more than a short paced replay spent on its requests. ``EndpointStats`` keeps the walk
    (``_cumulative``) until its histogram changes.
    """
    wanted = sorted(set(percentiles))
    if hist.get_total_count() == 0:
        return dict.fromkeys(wanted, 0)
    return _values_at(hist, _cumulative(hist), wanted)


def _us(value_ns: int) -> int:
    return min(_HIGHEST_US, max(_LOWEST_US, value_ns // _NS_PER_US))


# Columns of a series row: four totals, then the status classes, then the failure kinds.
_PLANNED: Final = 0
_SENT: Final = 1
_OK: Final = 2
_ERRORS: Final = 3
_FIRST_STATUS: Final = 4
_FIRST_FAILURE: Final = _FIRST_STATUS + len(STATUS_CLASSES)
_COLUMNS: Final = _FIRST_FAILURE + len(FAILURE_KINDS)
_FAILURE_COLUMN: Final = {kind: _FIRST_FAILURE + i for i, kind in enumerate(FAILURE_KINDS)}
_OTHER_FAILURE: Final = _FAILURE_COLUMN["other"]
#: Column of a status by ``status // 100`` (0 -> 1xx: a status below 100 is out of range anyway).
_STATUS_COLUMN: Final = tuple(_FIRST_STATUS + max(0, min(4, c - 1)) for c in range(6))
_LAST_STATUS: Final = _FIRST_FAILURE - 1
#: Latency log buckets: 16 per power of two (a bucket is at most 1/16 = 6.25 % wide), exact below
#: 32 us. Index 463 holds the histogram's ceiling (an hour), so a row has at most 464 buckets.
_LOG_SUB_BITS: Final = 4
_LOG_EXACT_BITS: Final = _LOG_SUB_BITS + 1


def log_bucket(value_us: int) -> int:
    """The series' latency bucket of a value in microseconds (see ``bucket_ceiling_us``)."""
    shift = value_us.bit_length() - _LOG_EXACT_BITS
    return value_us if shift <= 0 else (shift << _LOG_SUB_BITS) + (value_us >> shift)


def bucket_ceiling_us(index: int) -> int:
    """The largest value in microseconds that falls into log bucket ``index``."""
    if index < 1 << _LOG_EXACT_BITS:
        return index
    shift = (index >> _LOG_SUB_BITS) - 1
    mantissa = index - (shift << _LOG_SUB_BITS)
    return ((mantissa + 1) << shift) - 1


class Series:
    """Counts per interval since t0, for the charts over time: what was planned (by slot) and sent
    (by send time); by completion time, ok and errors (5xx and failures), status classes, failure
    kinds and a log-bucket histogram of the response time from the intended send.

    Cheap on purpose: a row is a flat list of ``_COLUMNS`` counters and its latencies a sparse dict
    of at most 464 log buckets, so recording a request is a few additions. Starts at 1 s intervals
    and doubles the interval whenever a run would need more than ``SERIES_MAX_POINTS``; series of
    different intervals merge at the coarser one.
    """

    __slots__ = ("interval_ns", "latency", "rows")

    def __init__(
        self, interval_s: int = 1, rows: list[list[int]] | None = None, latency: list[dict[int, int]] | None = None
    ) -> None:
        self.interval_ns = interval_s * _NS_PER_S
        self.rows: list[list[int]] = rows if rows is not None else []
        self.latency: list[dict[int, int]] = latency if latency is not None else [{} for _ in self.rows]

    @property
    def interval_s(self) -> int:
        return self.interval_ns // _NS_PER_S

    def index(self, offset_ns: int) -> int:
        """The row of ``offset_ns`` after t0 (clamped at 0), added (and coarsened) as needed."""
        i = offset_ns // self.interval_ns
        if 0 <= i < len(self.rows):
            return i
        offset_ns = max(0, offset_ns)
        i = offset_ns // self.interval_ns
        while i >= SERIES_MAX_POINTS:
            self.coarsen()
            i = offset_ns // self.interval_ns
        while len(self.rows) <= i:
            self.rows.append([0] * _COLUMNS)
            self.latency.append({})
        return i

    def coarsen(self) -> None:
        """Double the interval: each pair of neighbouring rows becomes one."""
        rows: list[list[int]] = []
        latency: list[dict[int, int]] = []
        for i in range(0, len(self.rows), 2):
            row, buckets = list(self.rows[i]), dict(self.latency[i])
            if i + 1 < len(self.rows):
                _add_row(row, buckets, self.rows[i + 1], self.latency[i + 1])
            rows.append(row)
            latency.append(buckets)
        self.interval_ns *= 2
        self.rows, self.latency = rows, latency

    def merge(self, other: Series) -> None:
        """Add ``other`` (measured against the same t0) into this series, at the coarser interval."""
        while self.interval_ns < other.interval_ns:
            self.coarsen()
        for j, row in enumerate(other.rows):
            i = self.index(j * other.interval_ns)
            _add_row(self.rows[i], self.latency[i], row, other.latency[j])

    def percentile_ms(self, i: int, percentile: float) -> float:
        """Response time (from the intended send) at ``percentile`` in row ``i``, in ms: the ceiling
        of its log bucket, so at most 6.25 % above the true value; 0.0 when nothing completed."""
        buckets = self.latency[i]
        total = sum(buckets.values())
        if not total:
            return 0.0
        wanted = max(1, -(-total * percentile // 100))
        seen = 0
        for index in sorted(buckets):
            seen += buckets[index]
            if seen >= wanted:
                return bucket_ceiling_us(index) / 1000.0
        return bucket_ceiling_us(max(buckets)) / 1000.0

    def encode(self) -> dict[str, Any]:
        # Latency buckets as flat [index, count, ...] lists: integer keys survive every encoding.
        return {
            "interval_s": self.interval_s,
            "rows": self.rows,
            "latency": [[n for item in sorted(b.items()) for n in item] for b in self.latency],
        }

    @classmethod
    def decode(cls, data: dict[str, Any]) -> Series:
        rows = [list(map(int, row)) for row in data["rows"]]
        if any(len(row) != _COLUMNS for row in rows):
            raise ValueError(f"a series row must have {_COLUMNS} counters")
        latency = [{int(flat[k]): int(flat[k + 1]) for k in range(0, len(flat), 2)} for flat in data["latency"]]
        if len(latency) != len(rows):
            raise ValueError("a series needs one latency row per row")
        return cls(int(data["interval_s"]), rows, latency)

    def row_counts(self, i: int) -> dict[str, Any]:
        """Row ``i`` by name: the four totals, and the status classes and failure kinds that occurred."""
        row = self.rows[i]
        return {
            "planned": row[_PLANNED],
            "sent": row[_SENT],
            "ok": row[_OK],
            "errors": row[_ERRORS],
            "statuses": {c: row[_FIRST_STATUS + k] for k, c in enumerate(STATUS_CLASSES) if row[_FIRST_STATUS + k]},
            "failures": {f: row[_FIRST_FAILURE + k] for k, f in enumerate(FAILURE_KINDS) if row[_FIRST_FAILURE + k]},
        }


def _add_row(row: list[int], buckets: dict[int, int], other_row: list[int], other_buckets: dict[int, int]) -> None:
    for k, value in enumerate(other_row):
        row[k] += value
    for index, count in other_buckets.items():
        buckets[index] = buckets.get(index, 0) + count


@dataclass(slots=True)
class EndpointStats:
    """The three histograms and the outcome counts of one endpoint (or of all of them: built with
    ``_histogram``, three significant digits; an endpoint's, ``endpoint()``, have two)."""

    service: HdrHistogram = field(default_factory=_histogram)
    corrected: HdrHistogram = field(default_factory=_histogram)
    start_lag: HdrHistogram = field(default_factory=_histogram)
    requests: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    # Per histogram: its total count when walked, and the walk (_cumulative), for the reports'
    # many percentiles of one histogram.
    walks: dict[str, tuple[int, tuple[list[int], list[int]]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @classmethod
    def endpoint(cls) -> EndpointStats:
        return cls(_endpoint_histogram(), _endpoint_histogram(), _endpoint_histogram())

    def histogram(self, name: str) -> HdrHistogram:
        return {"service": self.service, "corrected": self.corrected, "start_lag": self.start_lag}[name]

    def percentile_ms(self, name: str, percentile: float) -> float:
        return self.percentiles_ms(name, (percentile,))[percentile]

    def percentiles_ms(self, name: str, percentiles: Iterable[float]) -> dict[float, float]:
        """The values at ``percentiles`` of histogram ``name``, in ms (0.0 when it is empty)."""
        hist = self.histogram(name)
        total: int = hist.get_total_count()
        if total == 0:
            return {p: 0.0 for p in percentiles}
        walked = self.walks.get(name)
        if walked is None or walked[0] != total:
            walked = self.walks[name] = (total, _cumulative(hist))
        return {p: float(v) / 1000.0 for p, v in _values_at(hist, walked[1], percentiles).items()}

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def add(self, other: EndpointStats) -> None:
        self.service.add(other.service)
        self.corrected.add(other.corrected)
        self.start_lag.add(other.start_lag)
        self.requests += other.requests
        self.ok += other.ok
        self.errors.update(other.errors)
        self.statuses.update(other.statuses)

    def encode(self) -> dict[str, Any]:
        return {
            "service": self.service.encode().decode("ascii"),
            "corrected": self.corrected.encode().decode("ascii"),
            "start_lag": self.start_lag.encode().decode("ascii"),
            "requests": self.requests,
            "ok": self.ok,
            "errors": dict(self.errors),
            "statuses": {str(k): v for k, v in self.statuses.items()},
        }

    @classmethod
    def decode(cls, data: dict[str, Any], *, endpoint: bool = False) -> EndpointStats:
        out = cls.endpoint() if endpoint else cls()
        for name in HISTOGRAMS:
            out.histogram(name).decode_and_add(data[name].encode("ascii"))
        out.requests = int(data["requests"])
        out.ok = int(data["ok"])
        out.errors.update({str(k): int(v) for k, v in data["errors"].items()})
        out.statuses.update({int(k): int(v) for k, v in data["statuses"].items()})
        return out


@dataclass(frozen=True, slots=True)
class ErrorExample:
    """One failed request, for the reports: its error class, when it ended (ns after t0), which
    request (method and path, no query: it may hold credentials) and what came back."""

    kind: str
    at_ns: int
    request: str
    detail: str

    def encode(self) -> list[Any]:
        return [self.kind, self.at_ns, self.request, self.detail]

    @classmethod
    def decode(cls, data: list[Any]) -> ErrorExample:
        kind, at_ns, request, detail = data
        return cls(str(kind), int(at_ns), str(request), str(detail))


@dataclass(frozen=True, slots=True)
class Summary:
    """The figures the summary table, the JSON results and the SLO gates read."""

    requests: int
    ok: int
    errors: dict[str, int]
    error_rate: float
    held_back: int
    achieved_rate_per_s: float
    elapsed_s: float
    percentiles_ms: dict[str, dict[str, float]]


class ReplayStats:
    """Everything one replay measured. ``record_*`` is called once per request by the runner.

    Latencies are counted straight into the histograms' counts arrays (``_Counting``) and their
    totals settled in batches: recording into three pure-Python HdrHistograms per request was a
    third of the replayer's CPU. Reading ``overall`` or ``endpoints`` settles first, so readers
    always see every request.
    """

    __slots__ = (
        "_endpoints",
        "_overall",
        "_counting",
        "_overall_counting",
        "_unsettled",
        "error_examples",
        "first_sent_ns",
        "held_back",
        "held_back_ns",
        "last_done_ns",
        "series",
        "templater",
        "_generation",
    )

    def __init__(
        self,
        overall: EndpointStats | None = None,
        endpoints: dict[str, EndpointStats] | None = None,
        held_back: int = 0,
        held_back_ns: int = 0,
        series: Series | None = None,
        first_sent_ns: int | None = None,
        last_done_ns: int | None = None,
        error_examples: list[ErrorExample] | None = None,
        templater: EndpointTemplater | None = None,
    ) -> None:
        self._overall = overall or EndpointStats()
        self._endpoints = endpoints or {}
        #: The learner the plan templates endpoints with (shared, so stats follow its folds).
        self.templater = templater
        self._generation = -1 if templater is None else templater.generation
        # Where each endpoint's latencies are counted, and the overall ones (made when first used:
        # a decoded or merged one may never record), and those counted since the last settling.
        self._counting: dict[str, _Counting] = {}
        self._overall_counting: _Counting | None = None
        self._unsettled: list[_Counting] = []
        #: Requests that waited for the in-flight cap (their wait is in the corrected histogram).
        self.held_back = held_back
        self.held_back_ns = held_back_ns
        #: Counts and response times per interval since t0.
        self.series = series if series is not None else Series()
        self.first_sent_ns = first_sent_ns
        self.last_done_ns = last_done_ns
        #: The first failed requests of each error class, in completion order (``record_example``).
        self.error_examples: list[ErrorExample] = error_examples if error_examples is not None else []

    @property
    def timeline(self) -> list[list[int]]:
        """The series' rows: each starts with [planned, sent, ok, errors] for one interval of
        ``series.interval_s`` seconds (1 s until a run outgrows ``SERIES_MAX_POINTS`` of them)."""
        return self.series.rows

    @property
    def overall(self) -> EndpointStats:
        self.flush()
        return self._overall

    @property
    def endpoints(self) -> dict[str, EndpointStats]:
        self.flush()
        if self.templater is not None and self.templater.generation != self._generation:
            self._refold()
        return self._endpoints

    def overflow(self) -> dict[str, tuple[int, bool]]:
        """Per method with an overflow bucket (``GET {overflow}``): its distinct paths, and
        whether that count is exact (see ``EndpointTemplater.overflow``)."""
        return {} if self.templater is None else self.templater.overflow()

    def _refold(self) -> None:
        """Merge the stats of endpoints whose template has since become a more general one."""
        assert self.templater is not None
        self.flush()
        self._counting = {}  # made again for the endpoints that stay
        retemplate = self.templater.retemplate
        folded: dict[str, EndpointStats] = {}
        for name, per in self._endpoints.items():
            current = retemplate(name)
            into = folded.get(current)
            if into is None:
                folded[current] = per
            else:
                into.add(per)
        self._endpoints = folded
        self._generation = self.templater.generation

    def flush(self) -> None:
        """Settle the histograms that counted latencies since the last time."""
        unsettled = self._unsettled
        if unsettled:
            for counting in unsettled:
                counting.settle()
            self._unsettled = []

    def record_planned(self, slot_ns: int) -> None:
        series = self.series
        i = series.index(slot_ns)  # first: it may coarsen, replacing ``rows``
        series.rows[i][_PLANNED] += 1

    def record_done(
        self,
        endpoint: str,
        *,
        t0_ns: int,
        due_ns: int,
        released_ns: int,
        sent_ns: int,
        done_ns: int,
        status: int | None,
        error: str | None,
    ) -> None:
        """One finished request. ``error`` is an ``ERROR_CLASSES`` name for a failure (``status`` None)."""
        templater = self.templater
        if templater is not None and templater.generation != self._generation:
            self._refold()
        per = self._endpoints.get(endpoint)
        if per is None:
            if templater is not None:
                # Planned before its position folded: count it under the template it has now.
                endpoint = templater.retemplate(endpoint)
                per = self._endpoints.get(endpoint)
            if per is None:
                per = self._endpoints[endpoint] = EndpointStats.endpoint()
        if status is not None and status >= 500:
            error = "5xx"
        service_us = _us(done_ns - sent_ns)
        corrected_us = _us(done_ns - due_ns)
        lag_us = _us(released_ns - due_ns)
        overall_counting = self._overall_counting
        if overall_counting is None:
            overall_counting = self._overall_counting = _Counting(self._overall)
        if not overall_counting.added:
            self._unsettled.append(overall_counting)
        overall_counting.count(_counts_index(service_us), _counts_index(corrected_us), _counts_index(lag_us))
        counting = self._counting.get(endpoint)
        if counting is None:
            counting = self._counting[endpoint] = _Counting(per)
        if not counting.added:
            self._unsettled.append(counting)
        counting.count(
            _endpoint_counts_index(service_us), _endpoint_counts_index(corrected_us), _endpoint_counts_index(lag_us)
        )
        for target in (self._overall, per):
            target.requests += 1
            if status is not None:
                target.statuses[status] += 1
            if error is None:
                target.ok += 1
            else:
                target.errors[error] += 1
        # The series, inlined (this runs once per request): the row's index without a call when it
        # exists, the log bucket as in ``log_bucket``.
        series = self.series
        rows_by_interval = series.rows
        interval_ns = series.interval_ns
        i = (sent_ns - t0_ns) // interval_ns
        if not 0 <= i < len(rows_by_interval):
            i = series.index(sent_ns - t0_ns)
            rows_by_interval = series.rows
        rows_by_interval[i][1] += 1  # _SENT
        i = (done_ns - t0_ns) // series.interval_ns
        if not 0 <= i < len(rows_by_interval):
            i = series.index(done_ns - t0_ns)
            rows_by_interval = series.rows
        row = rows_by_interval[i]
        if status is None:
            row[3] += 1  # _ERRORS
            row[_FAILURE_COLUMN.get(error or "other", _OTHER_FAILURE)] += 1
        else:
            row[2 if error is None else 3] += 1  # _OK or _ERRORS
            row[_STATUS_COLUMN[status // 100] if status < 600 else _LAST_STATUS] += 1
        shift = corrected_us.bit_length() - 5  # _LOG_EXACT_BITS
        bucket = corrected_us if shift <= 0 else (shift << 4) + (corrected_us >> shift)
        buckets = series.latency[i]
        buckets[bucket] = buckets.get(bucket, 0) + 1
        if self.first_sent_ns is None or sent_ns < self.first_sent_ns:
            self.first_sent_ns = sent_ns
        if self.last_done_ns is None or done_ns > self.last_done_ns:
            self.last_done_ns = done_ns

    def wants_example(self, kind: str) -> bool:
        """Whether a failure of error class ``kind`` should be described (``record_example``): only
        the first few are, so the caller builds the text for those alone."""
        return sum(1 for e in self.error_examples if e.kind == kind) < ERROR_EXAMPLES_PER_CLASS

    def record_example(self, example: ErrorExample) -> None:
        if self.wants_example(example.kind):
            self.error_examples.append(example)

    def record_held_back(self, waited_ns: int) -> None:
        self.held_back += 1
        self.held_back_ns += waited_ns

    def merge(self, other: ReplayStats) -> None:
        """Add ``other`` (another worker's stats against the same t0) into this one; endpoints that
        either side's templater folded are folded in both."""
        if other.templater is not None:
            if self.templater is None:
                self.templater = EndpointTemplater()
            self.templater.absorb(other.templater.export())
        self.overall.add(other.overall)
        endpoints = self.endpoints
        for name, per in other.endpoints.items():
            endpoints.setdefault(name, EndpointStats.endpoint()).add(per)
        if self.templater is not None:
            self._generation = -1  # the other side's keys may fold into this side's templates
        self.held_back += other.held_back
        self.held_back_ns += other.held_back_ns
        self.series.merge(other.series)
        starts = [t for t in (self.first_sent_ns, other.first_sent_ns) if t is not None]
        ends = [t for t in (self.last_done_ns, other.last_done_ns) if t is not None]
        self.first_sent_ns = min(starts) if starts else None
        self.last_done_ns = max(ends) if ends else None
        # The earliest of both, per class: the same t0, so their times compare.
        examples = sorted(self.error_examples + other.error_examples, key=lambda e: e.at_ns)
        self.error_examples = []
        for example in examples:
            self.record_example(example)

    def encode(self) -> dict[str, Any]:
        return {
            "overall": self.overall.encode(),
            "endpoints": {name: per.encode() for name, per in self.endpoints.items()},
            "held_back": self.held_back,
            "held_back_ns": self.held_back_ns,
            "series": self.series.encode(),
            "first_sent_ns": self.first_sent_ns,
            "last_done_ns": self.last_done_ns,
            "error_examples": [e.encode() for e in self.error_examples],
            "templates": None if self.templater is None else self.templater.export(),
        }

    @classmethod
    def decode(cls, data: dict[str, Any]) -> ReplayStats:
        templater = None
        if data.get("templates") is not None:
            templater = EndpointTemplater()
            templater.absorb(data["templates"])
        return cls(
            overall=EndpointStats.decode(data["overall"]),
            endpoints={name: EndpointStats.decode(per, endpoint=True) for name, per in data["endpoints"].items()},
            templater=templater,
            held_back=int(data["held_back"]),
            held_back_ns=int(data["held_back_ns"]),
            series=Series.decode(data["series"]),
            first_sent_ns=data["first_sent_ns"],
            last_done_ns=data["last_done_ns"],
            error_examples=[ErrorExample.decode(e) for e in data["error_examples"]],
        )

    def summary(self) -> Summary:
        overall = self.overall
        elapsed_s = 0.0
        if self.first_sent_ns is not None and self.last_done_ns is not None:
            elapsed_s = max(0.0, (self.last_done_ns - self.first_sent_ns) / 1e9)
        return Summary(
            requests=overall.requests,
            ok=overall.ok,
            errors=error_counts(overall.errors),
            error_rate=overall.error_count / overall.requests if overall.requests else 0.0,
            held_back=self.held_back,
            achieved_rate_per_s=overall.requests / elapsed_s if elapsed_s > 0 else 0.0,
            elapsed_s=elapsed_s,
            percentiles_ms={
                name: {f"p{p:g}": ms for p, ms in overall.percentiles_ms(name, PERCENTILES).items()}
                for name in HISTOGRAMS
            },
        )


def error_counts(errors: Counter[str]) -> dict[str, int]:
    """The non-zero error counts: ``ERROR_CLASSES`` in their order, then the gRPC statuses
    (``grpc-NOT_FOUND``) by name."""
    out = {name: errors[name] for name in ERROR_CLASSES if errors[name]}
    out.update(sorted((name, count) for name, count in errors.items() if count and name not in out))
    return out
