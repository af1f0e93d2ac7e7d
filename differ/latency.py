"""Is the new version slower? The shadow's latency against the primary's on the same requests.

For each endpoint template and shadow, ``LatencyTracker.add(endpoint, shadow, primary_s, shadow_s)``
takes one request's pair of latencies (the primary's, and the shadow's from the copy being sent to
its last byte). Memory is bounded whatever the traffic: per (endpoint, shadow) two log histograms
(bins 1 % apart from 1 us to 1 h, sparse: at most ``HISTOGRAM_BINS`` entries each) and a reservoir
of at most ``reservoir_size`` pairs (Algorithm R, with a ``random.Random`` seeded from the endpoint
and shadow names, so the same input gives the same results); at most ``max_endpoints`` endpoints per
shadow, the rest counted together under ``OVERFLOW``.

``LatencyTracker.merge`` combines workers' trackers: the histograms exactly (counts add), the
reservoirs by weighted sampling without replacement (each worker's share in proportion to the pairs
it saw, with a fixed seed), which leaves a uniform sample of the union; when both reservoirs hold
every pair they saw, the merge is their union, exactly.

``LatencyTracker.compare()`` gives one ``LatencyComparison`` per (endpoint, shadow):

- p50, p90 and p99 of each side from the histograms (all pairs), side by side, the ratio and the
  difference, each with a 95 % confidence interval: each side's quantile gets a distribution-free
  interval from order statistics (binomial ranks, 97.5 % each, read from the histogram), and the
  ratio's interval combines them (shadow low / primary high .. shadow high / primary low), which is
  conservative (it ignores that the two latencies of a request move together), so a tail change
  needs many pairs to show (a 20 % slower p99 took about 20,000 in the tests; the median 3,000);
- on the reservoir's pairs: the median of the per-request differences and ratios with their
  sign-test (order statistic) 95 % intervals, and the Wilcoxon signed-rank test of "no shift"
  (normal approximation with the tie correction, zero differences dropped; the p-value two-sided);
- a ``verdict``: ``too few samples`` below ``min_pairs`` pairs (no statement beyond that), else
  ``slower`` / ``faster`` when the test's p-value is below ``alpha`` (0.01 by default), else
  ``no significant difference``; and ``statement``, one honest sentence saying so.

``--fail-on`` latency terms (``latency.p99>+20%``, ``latency.p50>+5ms``, ``latency.p90>2x``) are
parsed by ``parse_latency_term`` (``split_fail_on`` separates them from a SPEC's other clauses) and
judged by ``evaluate_latency_terms(terms, comparisons)``, a pure function: a term fails on a
(endpoint, shadow) when the point estimate exceeds the threshold *and* the ratio's confidence
interval at that percentile lies above 1 (the shadow is slower there beyond noise). A comparison
with too few pairs, or too few for that percentile's interval, never fails a term; the result
lists it among ``undecided`` so a report can say so.

Integration: ``shadowtap.differ.pipeline`` keeps each timed pair's latencies (and their
``histogram_bin``) in the results store; ``shadowtap.differ.aggregate`` rebuilds, for a report's
window, each endpoint's histograms and sample (``LatencyHistogram.from_bins``,
``LatencyTracker.load``), ``compare()``s and judges the terms; each comparison's ``to_dict()`` is
the JSON report's shape. ``add`` and ``merge`` serve callers that see pairs as they come (a live
view). This module must never read tapes, stores or responses: it sees numbers only, and has no
dependency beyond the standard library.
"""

from __future__ import annotations

import math
import random
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from shadowtap.recorder.errors import ConfigError

__all__ = [
    "ALPHA",
    "HISTOGRAM_BINS",
    "MAX_ENDPOINTS",
    "MIN_PAIRS",
    "OVERFLOW",
    "QUANTILES",
    "RESERVOIR_SIZE",
    "LatencyComparison",
    "LatencyFailure",
    "LatencyHistogram",
    "LatencyJudgement",
    "LatencyTerm",
    "LatencyTracker",
    "PairReservoir",
    "QuantileComparison",
    "evaluate_latency_terms",
    "histogram_bin",
    "parse_latency_term",
    "quantile_rank_interval",
    "sign_test_interval",
    "split_fail_on",
    "wilcoxon_signed_rank",
]

#: The percentiles compared side by side.
QUANTILES: Final = (0.5, 0.9, 0.99)
#: Pairs an endpoint needs before any verdict: below it the comparison says so and nothing else.
MIN_PAIRS: Final = 50
#: The Wilcoxon test's significance level for a verdict of slower or faster.
ALPHA: Final = 0.01
#: Pairs kept per (endpoint, shadow) for the paired statistics.
RESERVOIR_SIZE: Final = 1000
#: Endpoints tracked per shadow; further ones share ``OVERFLOW``.
MAX_ENDPOINTS: Final = 1000
OVERFLOW: Final = "(overflow)"

_MIN_S: Final = 1e-6
_GROWTH: Final = 1.01
_LOG_GROWTH: Final = math.log(_GROWTH)
#: Bins of a histogram: below 1 us, 1 % steps up to an hour, and above.
HISTOGRAM_BINS: Final = int(math.log(3600.0 / _MIN_S) / _LOG_GROWTH) + 2
#: Two-sided normal quantiles: 95 % (the sign-test interval) and 97.5 % (each side of a ratio).
_Z95: Final = 1.959963984540054
_Z975: Final = 2.241402727604947


# --- histograms ---------------------------------------------------------------------------------------


def histogram_bin(seconds: float) -> int:
    """The histogram bin of a latency: 0 below 1 us, then one per 1 % step (what a store keeps)."""
    if seconds < _MIN_S:
        return 0
    return min(HISTOGRAM_BINS - 1, int(math.log(seconds / _MIN_S) / _LOG_GROWTH) + 1)


def _bin_value(index: int) -> float:
    """A bin's representative value: the geometric middle of its bounds (within 0.5 % of any value in it)."""
    if index == 0:
        return _MIN_S / 2
    return float(_MIN_S * _GROWTH ** (index - 0.5))


class LatencyHistogram:
    """Counts per 1 % bin, sparse; merging adds counts, so a merge is exact."""

    __slots__ = ("bins", "count", "sum_s")

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}
        self.count = 0
        self.sum_s = 0.0

    def add(self, seconds: float) -> None:
        index = histogram_bin(seconds)
        self.bins[index] = self.bins.get(index, 0) + 1
        self.count += 1
        self.sum_s += seconds

    @classmethod
    def from_bins(cls, bins: dict[int, int]) -> LatencyHistogram:
        """A histogram of stored counts per bin (``histogram_bin``'s numbering); its ``sum_s`` from
        the bins' values (each within 0.5 % of its samples)."""
        histogram = cls()
        histogram.bins = {index: n for index, n in bins.items() if n > 0}
        histogram.count = sum(histogram.bins.values())
        histogram.sum_s = sum(n * _bin_value(index) for index, n in histogram.bins.items())
        return histogram

    def merge(self, other: LatencyHistogram) -> None:
        for index, n in other.bins.items():
            self.bins[index] = self.bins.get(index, 0) + n
        self.count += other.count
        self.sum_s += other.sum_s

    def at_rank(self, rank: int) -> float:
        """The value of the ``rank``-th smallest sample (1-based), to the bin."""
        seen = 0
        for index in sorted(self.bins):
            seen += self.bins[index]
            if seen >= rank:
                return _bin_value(index)
        raise ValueError(f"rank {rank} of {self.count} samples")

    def quantile(self, q: float) -> float:
        return self.at_rank(max(1, math.ceil(q * self.count)))

    def quantile_interval(self, q: float, z: float = _Z975) -> tuple[float, float] | None:
        interval = quantile_rank_interval(self.count, q, z)
        if interval is None:
            return None
        return self.at_rank(interval[0]), self.at_rank(interval[1])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyHistogram):
            return NotImplemented
        return self.bins == other.bins and self.count == other.count


def quantile_rank_interval(n: int, q: float, z: float = _Z975) -> tuple[int, int] | None:
    """1-based ranks (lo, hi) of the order statistics bracketing the ``q`` quantile of ``n`` i.i.d.
    samples with the confidence of the two-sided normal quantile ``z`` (the binomial's normal
    approximation); None when ``n`` is too small for such an interval at this ``q``."""
    if n <= 0:
        return None
    spread = z * math.sqrt(n * q * (1 - q))
    lo = math.floor(n * q - spread)
    hi = math.ceil(n * q + spread) + 1
    if lo < 1 or hi > n:
        return None
    return lo, hi


# --- the reservoir ------------------------------------------------------------------------------------


class PairReservoir:
    """A uniform sample of at most ``size`` (primary_s, shadow_s) pairs of the ``seen`` offered."""

    __slots__ = ("pairs", "rng", "seen", "size")

    def __init__(self, size: int, seed: str) -> None:
        if size < 1:
            raise ValueError(f"a reservoir holds at least one pair, not {size}")
        self.size = size
        self.pairs: list[tuple[float, float]] = []
        self.seen = 0
        self.rng = random.Random(seed)

    def add(self, primary_s: float, shadow_s: float) -> None:
        self.seen += 1
        if len(self.pairs) < self.size:
            self.pairs.append((primary_s, shadow_s))
            return
        slot = self.rng.randrange(self.seen)
        if slot < self.size:
            self.pairs[slot] = (primary_s, shadow_s)

    def merge(self, other: PairReservoir, seed: str) -> None:
        """Become a uniform sample of both streams: when both hold all they saw, their union; else
        ``size`` pairs drawn without replacement, each stream's share drawn from the pairs it saw."""
        holds_all = len(self.pairs) == self.seen and len(other.pairs) == other.seen
        if holds_all and len(self.pairs) + len(other.pairs) <= self.size:
            self.pairs.extend(other.pairs)
            self.seen += other.seen
            return
        rng = random.Random(f"{seed}|{self.seen}|{other.seen}")
        mine_left, theirs_left = self.seen, other.seen
        take_mine = 0
        for _ in range(min(self.size, self.seen + other.seen)):
            if rng.random() * (mine_left + theirs_left) < mine_left:
                take_mine += 1
                mine_left -= 1
            else:
                theirs_left -= 1
        take_theirs = min(self.size, self.seen + other.seen) - take_mine
        self.pairs = rng.sample(self.pairs, take_mine) + rng.sample(other.pairs, take_theirs)
        self.seen += other.seen


# --- statistics ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wilcoxon:
    """The signed-rank test of paired differences: ``n`` nonzero differences, ``w_plus`` the sum of
    the positive ones' ranks, ``z`` and the two-sided ``p_value`` (normal approximation)."""

    n: int
    w_plus: float
    z: float
    p_value: float


def wilcoxon_signed_rank(differences: Sequence[float]) -> Wilcoxon | None:
    """Wilcoxon's signed-rank test: zero differences dropped, tied magnitudes given their average
    rank and the variance its tie correction, no continuity correction. None with no nonzero
    difference. (The same as ``scipy.stats.wilcoxon(d, zero_method="wilcox", correction=False,
    method="approx")``.)"""
    nonzero = sorted((abs(d), d > 0) for d in differences if d != 0)
    n = len(nonzero)
    if n == 0:
        return None
    w_plus = 0.0
    ties = 0.0
    i = 0
    while i < n:
        j = i
        while j + 1 < n and nonzero[j + 1][0] == nonzero[i][0]:
            j += 1
        rank = (i + j + 2) / 2  # ranks i+1 .. j+1, averaged
        t = j - i + 1
        ties += t**3 - t
        w_plus += rank * sum(1 for k in range(i, j + 1) if nonzero[k][1])
        i = j + 1
    mean = n * (n + 1) / 4
    variance = n * (n + 1) * (2 * n + 1) / 24 - ties / 48
    if variance <= 0:
        return Wilcoxon(n, w_plus, 0.0, 1.0)
    z = (w_plus - mean) / math.sqrt(variance)
    return Wilcoxon(n, w_plus, z, math.erfc(abs(z) / math.sqrt(2)))


def sign_test_interval(values: Sequence[float], z: float = _Z95) -> tuple[float, float, float] | None:
    """(median, lo, hi): the median of ``values`` and its distribution-free interval from order
    statistics (the sign test's, normal approximation); None when there are too few values."""
    n = len(values)
    if n == 0:
        return None
    ordered = sorted(values)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    k = math.floor((n - z * math.sqrt(n)) / 2)
    if k < 1:
        return None
    return median, ordered[k - 1], ordered[n - k]


# --- comparisons --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuantileComparison:
    """One percentile side by side: seconds, the ratio shadow/primary and the difference, with 95 %
    intervals (None when there are too few pairs for one at this percentile)."""

    q: float
    primary_s: float
    shadow_s: float
    ratio: float
    ratio_ci: tuple[float, float] | None
    difference_s: float
    difference_ci: tuple[float, float] | None

    @property
    def label(self) -> str:
        return f"p{self.q * 100:g}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "quantile": self.label,
            "primary_ms": _ms(self.primary_s),
            "shadow_ms": _ms(self.shadow_s),
            "ratio": round(self.ratio, 4),
            "ratio_ci95": None if self.ratio_ci is None else [round(v, 4) for v in self.ratio_ci],
            "difference_ms": _ms(self.difference_s),
            "difference_ci95_ms": None if self.difference_ci is None else [_ms(v) for v in self.difference_ci],
        }


@dataclass(frozen=True, slots=True)
class LatencyComparison:
    """The shadow's latency against the primary's for one endpoint template."""

    endpoint: str
    shadow: str
    pairs: int
    sampled_pairs: int
    verdict: str
    statement: str
    quantiles: tuple[QuantileComparison, ...] = ()
    #: Median per-request difference (s) and ratio over the sampled pairs, with sign-test intervals.
    median_difference: tuple[float, float, float] | None = None
    median_ratio: tuple[float, float, float] | None = None
    wilcoxon: Wilcoxon | None = None

    def quantile(self, q: float) -> QuantileComparison | None:
        return next((c for c in self.quantiles if c.q == q), None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape for reports: milliseconds, ratios, intervals, the test and the verdict
        (every key always present; null where there were too few pairs)."""
        out: dict[str, Any] = {
            "endpoint": self.endpoint,
            "shadow": self.shadow,
            "pairs": self.pairs,
            "sampled_pairs": self.sampled_pairs,
            "verdict": self.verdict,
            "statement": self.statement,
            "quantiles": [c.to_dict() for c in self.quantiles],
            "median_difference_ms": None,
            "median_ratio": None,
            "wilcoxon": None,
        }
        if self.median_difference is not None:
            median, lo, hi = self.median_difference
            out["median_difference_ms"] = {"value": _ms(median), "ci95": [_ms(lo), _ms(hi)]}
        if self.median_ratio is not None:
            median, lo, hi = self.median_ratio
            out["median_ratio"] = {"value": round(median, 4), "ci95": [round(lo, 4), round(hi, 4)]}
        if self.wilcoxon is not None:
            out["wilcoxon"] = {"n": self.wilcoxon.n, "z": round(self.wilcoxon.z, 4), "p_value": self.wilcoxon.p_value}
        return out


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class _Series:
    __slots__ = ("primary", "reservoir", "shadow")

    def __init__(self, reservoir_size: int, seed: str) -> None:
        self.primary = LatencyHistogram()
        self.shadow = LatencyHistogram()
        self.reservoir = PairReservoir(reservoir_size, seed)


def _seed(endpoint: str, shadow: str) -> str:
    return f"latency|{zlib.crc32(f'{endpoint}|{shadow}'.encode())}"


class LatencyTracker:
    """Pairs of latencies per (endpoint template, shadow), in bounded memory; mergeable."""

    def __init__(
        self, reservoir_size: int = RESERVOIR_SIZE, max_endpoints: int = MAX_ENDPOINTS, seed: str = ""
    ) -> None:
        self.reservoir_size = reservoir_size
        self.max_endpoints = max_endpoints
        self.seed = seed
        self._series: dict[tuple[str, str], _Series] = {}
        self._endpoints: dict[str, int] = {}

    def _get(self, endpoint: str, shadow: str) -> _Series:
        key = (endpoint, shadow)
        series = self._series.get(key)
        if series is None:
            if endpoint != OVERFLOW and self._endpoints.get(shadow, 0) >= self.max_endpoints:
                return self._get(OVERFLOW, shadow)
            if endpoint != OVERFLOW:
                self._endpoints[shadow] = self._endpoints.get(shadow, 0) + 1
            series = self._series[key] = _Series(self.reservoir_size, self.seed + _seed(endpoint, shadow))
        return series

    def add(self, endpoint: str, shadow: str, primary_s: float, shadow_s: float) -> None:
        """One request's latencies: the primary's and this shadow's, seconds."""
        series = self._get(endpoint, shadow)
        series.primary.add(primary_s)
        series.shadow.add(shadow_s)
        series.reservoir.add(primary_s, shadow_s)

    def merge(self, other: LatencyTracker) -> None:
        """Add another worker's pairs: histograms exactly, reservoirs by weighted sampling."""
        for (endpoint, shadow), theirs in sorted(other._series.items()):
            mine = self._get(endpoint, shadow)
            mine.primary.merge(theirs.primary)
            mine.shadow.merge(theirs.shadow)
            mine.reservoir.merge(theirs.reservoir, self.seed + _seed(endpoint, shadow))

    def load(
        self,
        endpoint: str,
        shadow: str,
        primary: LatencyHistogram,
        shadow_histogram: LatencyHistogram,
        sample: Sequence[tuple[float, float]],
    ) -> None:
        """Set one series from stored state: both histograms (all its pairs) and a uniform sample of
        at most ``reservoir_size`` of its pairs, chosen by the caller (a store keeps every pair)."""
        if len(sample) > self.reservoir_size:
            raise ValueError(f"a sample of {len(sample)} pairs, more than the {self.reservoir_size} kept")
        if endpoint != OVERFLOW and (endpoint, shadow) not in self._series:
            self._endpoints[shadow] = self._endpoints.get(shadow, 0) + 1
        series = self._series[(endpoint, shadow)] = _Series(self.reservoir_size, self.seed + _seed(endpoint, shadow))
        series.primary = primary
        series.shadow = shadow_histogram
        series.reservoir.pairs = list(sample)
        series.reservoir.seen = primary.count

    def series_keys(self) -> list[tuple[str, str]]:
        return sorted(self._series)

    def histograms(self, endpoint: str, shadow: str) -> tuple[LatencyHistogram, LatencyHistogram]:
        series = self._series[(endpoint, shadow)]
        return series.primary, series.shadow

    def reservoir(self, endpoint: str, shadow: str) -> PairReservoir:
        return self._series[(endpoint, shadow)].reservoir

    def compare(self, min_pairs: int = MIN_PAIRS, alpha: float = ALPHA) -> list[LatencyComparison]:
        """One comparison per (endpoint, shadow), sorted by endpoint then shadow."""
        return [self._compare(endpoint, shadow, min_pairs, alpha) for endpoint, shadow in self.series_keys()]

    def _compare(self, endpoint: str, shadow: str, min_pairs: int, alpha: float) -> LatencyComparison:
        series = self._series[(endpoint, shadow)]
        pairs = series.primary.count
        sampled = series.reservoir.pairs
        if pairs < min_pairs:
            return LatencyComparison(
                endpoint, shadow, pairs, len(sampled), "too few samples",
                f"too few samples: {pairs} of the {min_pairs} pairs needed; no statement about latency",
            )  # fmt: skip
        quantiles = tuple(_quantile_comparison(series.primary, series.shadow, q) for q in QUANTILES)
        differences = [s - p for p, s in sampled]
        ratios = [s / p for p, s in sampled if p > 0]
        test = wilcoxon_signed_rank(differences)
        median_difference = sign_test_interval(differences)
        median_ratio = sign_test_interval(ratios)
        if test is not None and test.p_value < alpha:
            verdict = "slower" if test.z > 0 else "faster"
        else:
            verdict = "no significant difference"
        statement = _statement(verdict, quantiles, median_difference, test, pairs, len(sampled), alpha)
        return LatencyComparison(
            endpoint, shadow, pairs, len(sampled), verdict, statement, quantiles, median_difference, median_ratio, test
        )


def _quantile_comparison(primary: LatencyHistogram, shadow: LatencyHistogram, q: float) -> QuantileComparison:
    p, s = primary.quantile(q), shadow.quantile(q)
    p_ci, s_ci = primary.quantile_interval(q), shadow.quantile_interval(q)
    ratio_ci = difference_ci = None
    if p_ci is not None and s_ci is not None:
        # Each side's interval holds with 97.5 %: both at once with at least 95 %.
        ratio_ci = (s_ci[0] / p_ci[1], s_ci[1] / p_ci[0])
        difference_ci = (s_ci[0] - p_ci[1], s_ci[1] - p_ci[0])
    return QuantileComparison(q, p, s, s / p, ratio_ci, s - p, difference_ci)


def _statement(
    verdict: str,
    quantiles: Sequence[QuantileComparison],
    median_difference: tuple[float, float, float] | None,
    test: Wilcoxon | None,
    pairs: int,
    sampled: int,
    alpha: float,
) -> str:
    parts = []
    if median_difference is not None:
        median, lo, hi = median_difference
        parts.append(f"median per request {median * 1000:+.3g} ms (95% CI {lo * 1000:+.3g} to {hi * 1000:+.3g} ms)")
    for c in quantiles:
        if c.ratio_ci is not None:
            parts.append(f"{c.label} x{c.ratio:.2f} (95% CI {c.ratio_ci[0]:.2f}-{c.ratio_ci[1]:.2f})")
        else:
            parts.append(f"{c.label} x{c.ratio:.2f} (too few pairs for an interval)")
    tested = (
        f"Wilcoxon signed-rank p = {test.p_value:.2g} on {sampled} sampled pairs of {pairs}"
        if test is not None
        else f"no pair differs, of {sampled} sampled"
    )
    head = {
        "slower": "the candidate is slower",
        "faster": "the candidate is faster",
        "no significant difference": f"no significant difference at alpha {alpha:g}",
    }[verdict]
    return f"{head}: {'; '.join(parts)}; {tested}"


# --- --fail-on latency terms --------------------------------------------------------------------------

_TERM_RE: Final = re.compile(
    r"^latency\.p(?P<q>50|90|99)\s*(?P<op>>=|>)\s*(?:(?P<plus>\+)(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>%|ms|s)"
    r"|(?P<factor>\d+(?:\.\d+)?)x)$"
)


@dataclass(frozen=True, slots=True)
class LatencyTerm:
    """A ``--fail-on`` latency term: ``kind`` ``percent`` (``threshold`` a fraction over the
    primary), ``seconds`` (a difference) or ``factor`` (a ratio)."""

    text: str
    q: float
    kind: str
    threshold: float
    inclusive: bool

    def observed(self, c: QuantileComparison) -> float:
        if self.kind == "percent":
            return c.ratio - 1
        if self.kind == "seconds":
            return c.difference_s
        return c.ratio

    def exceeds(self, c: QuantileComparison) -> bool:
        value = self.observed(c)
        return value >= self.threshold if self.inclusive else value > self.threshold


def parse_latency_term(text: str) -> LatencyTerm:
    """``latency.p99>+20%``, ``latency.p50>+5ms``, ``latency.p90>=2x``; errors quote the term."""
    term = text.strip()
    match = _TERM_RE.match(term)
    if match is None:
        raise ConfigError(
            f"cannot read latency term {term!r}: expected latency.p50|p90|p99 > +N% | +Nms | +Ns | Nx "
            "(e.g. 'latency.p99>+20%', 'latency.p50>+5ms')",
            field="--fail-on",
        )
    q = int(match["q"]) / 100
    inclusive = match["op"] == ">="
    if match["factor"] is not None:
        return LatencyTerm(term, q, "factor", float(match["factor"]), inclusive)
    amount = float(match["amount"])
    if match["unit"] == "%":
        return LatencyTerm(term, q, "percent", amount / 100, inclusive)
    return LatencyTerm(term, q, "seconds", amount / 1000 if match["unit"] == "ms" else amount, inclusive)


def split_fail_on(spec: str) -> tuple[str, tuple[LatencyTerm, ...]]:
    """A ``--fail-on`` SPEC's clauses (``,``-separated) without its latency terms, and those terms:
    the rest goes to ``shadowtap.differ.verdict.parse_fail_on`` as before ('' when nothing is left)."""
    rest: list[str] = []
    terms: list[LatencyTerm] = []
    for clause in spec.split(","):
        if clause.strip().startswith("latency."):
            terms.append(parse_latency_term(clause))
        else:
            rest.append(clause)
    return ",".join(rest).strip(), tuple(terms)


@dataclass(frozen=True, slots=True)
class LatencyFailure:
    """A term that failed on one (endpoint, shadow), with what was observed, in words."""

    term: str
    endpoint: str
    shadow: str
    observed: float
    statement: str


@dataclass(frozen=True, slots=True)
class LatencyJudgement:
    """What the latency terms decided: ``failures`` (the run fails when any), ``undecided``: the
    (term, endpoint, shadow, why) that could not be judged, and how many were ``judged``."""

    failures: tuple[LatencyFailure, ...] = ()
    undecided: tuple[tuple[str, str, str, str], ...] = field(default=())
    #: (term, comparison) couples that were judged (failed or passed), not undecided.
    judged: int = 0

    @property
    def failed(self) -> bool:
        return bool(self.failures)


def evaluate_latency_terms(terms: Iterable[LatencyTerm], comparisons: Iterable[LatencyComparison]) -> LatencyJudgement:
    """Judge each term on each comparison: it fails when the estimate exceeds the threshold and the
    ratio's 95 % interval at that percentile lies above 1. Too few pairs: undecided, never failed."""
    failures: list[LatencyFailure] = []
    undecided: list[tuple[str, str, str, str]] = []
    comparisons = list(comparisons)
    judged = 0
    for term in terms:
        for c in comparisons:
            at = c.quantile(term.q)
            if at is None:
                undecided.append((term.text, c.endpoint, c.shadow, c.statement))
                continue
            if at.ratio_ci is None:
                undecided.append(
                    (term.text, c.endpoint, c.shadow, f"too few pairs ({c.pairs}) for a {at.label} interval")
                )
                continue
            judged += 1
            if term.exceeds(at) and at.ratio_ci[0] > 1.0:
                observed = term.observed(at)
                shown = f"{observed * 1000:+.3g} ms" if term.kind == "seconds" else (
                    f"{observed * 100:+.1f}%" if term.kind == "percent" else f"x{observed:.2f}"
                )  # fmt: skip
                failures.append(
                    LatencyFailure(
                        term.text,
                        c.endpoint,
                        c.shadow,
                        observed,
                        f"{at.label} {at.primary_s * 1000:.3g} ms -> {at.shadow_s * 1000:.3g} ms ({shown}; ratio 95% "
                        f"CI {at.ratio_ci[0]:.2f}-{at.ratio_ci[1]:.2f}) over {c.pairs} pairs",
                    )  # fmt: skip
                )
    return LatencyJudgement(tuple(failures), tuple(undecided), judged)
