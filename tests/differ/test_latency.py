"""The latency comparison: percentiles side by side, the paired test, the verdict, merging, bounds."""

from __future__ import annotations

import math
import pickle
import random

import pytest

from shadowtap.differ.latency import (
    HISTOGRAM_BINS,
    LatencyTracker,
    PairReservoir,
    evaluate_latency_terms,
    parse_latency_term,
    quantile_rank_interval,
    sign_test_interval,
    split_fail_on,
    wilcoxon_signed_rank,
)
from shadowtap.recorder.errors import ConfigError

# Reference values from scipy 1.17.1 (scipy.stats.wilcoxon(d, zero_method="wilcox", correction=False,
# method="approx")), computed once in a scratch virtualenv outside the project; scipy reports
# min(W+, W-) and -|z|, so the W+ and the sign of z below are ours.
WILCOXON_CASES = [
    ([1, 2, -3, 4, 5], 12.0, 1.2135597524338357, 0.22491588401596185),
    ([0.5, -0.2, 1.5, 1.5, -1.5, 2.0, 0, 3.1, -0.7, 0.9, 1.5, 2.2], 55.5, 2.010451732239466, 0.04438339991701973),
    ([-1, -1, 1, 2, 2, 2, -3, 4, 0, 0, 5, -6, 7, 7, 8], 70.0, 1.7169218820102798, 0.08599344615870515),
]


@pytest.mark.parametrize(("differences", "w_plus", "z", "p_value"), WILCOXON_CASES)
def test_wilcoxon_matches_scipy(differences: list[float], w_plus: float, z: float, p_value: float) -> None:
    test = wilcoxon_signed_rank(differences)
    assert test is not None
    assert test.w_plus == w_plus
    assert test.z == pytest.approx(z, rel=1e-12)
    assert test.p_value == pytest.approx(p_value, rel=1e-12)


def test_wilcoxon_by_hand_and_without_differences() -> None:
    # [1, 2, -3, 4, 5]: ranks 1..5, W+ = 12, mean 7.5, variance 5*6*11/24 = 13.75.
    test = wilcoxon_signed_rank([1, 2, -3, 4, 5])
    assert test is not None and test.z == pytest.approx(4.5 / math.sqrt(13.75))
    assert wilcoxon_signed_rank([0.0, 0.0]) is None


def test_order_statistic_intervals() -> None:
    # n = 100, q = 0.5, z = 1.96: 50 -/+ 9.8 -> ranks 40 and 61.
    assert quantile_rank_interval(100, 0.5, 1.959963984540054) == (40, 61)
    assert quantile_rank_interval(50, 0.99) is None  # too few for a p99 interval
    median, lo, hi = sign_test_interval(list(range(1, 101))) or (0, 0, 0)
    # k = floor((100 - 1.96 * 10) / 2) = 40: the 40th and the 61st values.
    assert (median, lo, hi) == (50.5, 40, 61)


def paired(tracker: LatencyTracker, n: int, slowdown: float, seed: int, endpoint: str = "/items/{id}") -> None:
    rng = random.Random(seed)
    for _ in range(n):
        base = rng.lognormvariate(math.log(0.020), 0.5)
        # Each side's own noise on top of the request's shared cost.
        primary = base * rng.uniform(0.9, 1.1)
        shadow = base * slowdown * rng.uniform(0.9, 1.1)
        tracker.add(endpoint, "v2", primary, shadow)


def test_a_shadow_twenty_percent_slower_is_detected_and_fails_the_terms() -> None:
    tracker = LatencyTracker()
    # The p99's interval is the widest (each side's on its own, conservatively): tens of thousands
    # of pairs tell a 20 % slower tail from noise; 3,000 are enough for the median.
    paired(tracker, 20_000, 1.2, seed=1)
    [c] = tracker.compare()
    assert c.verdict == "slower" and c.statement.startswith("the candidate is slower")
    p50 = c.quantile(0.5)
    assert p50 is not None and p50.ratio == pytest.approx(1.2, abs=0.05)
    assert p50.ratio_ci is not None and 1.0 < p50.ratio_ci[0] < 1.2 < p50.ratio_ci[1]
    assert c.median_ratio is not None and c.median_ratio[1] < 1.2 < c.median_ratio[2]
    _, terms = split_fail_on("latency.p50>+10%,latency.p99>+10%,latency.p50>+5ms")
    judged = evaluate_latency_terms(terms, [c])
    assert judged.failed and {f.term for f in judged.failures} == {"latency.p50>+10%", "latency.p99>+10%"}
    # +20 % of a 20 ms median is about 4 ms: under the 5 ms term.
    assert all(f.term != "latency.p50>+5ms" for f in judged.failures)
    judged = evaluate_latency_terms([parse_latency_term("latency.p50>+30%")], [c])
    assert not judged.failed


def test_no_change_is_not_flagged() -> None:
    tracker = LatencyTracker()
    paired(tracker, 3000, 1.0, seed=2)
    [c] = tracker.compare()
    assert c.verdict == "no significant difference"
    _, terms = split_fail_on("latency.p50>+5%,latency.p99>+10%,latency.p90>1.1x")
    assert not evaluate_latency_terms(terms, [c]).failed


def test_too_few_samples_gives_no_verdict_and_says_so() -> None:
    tracker = LatencyTracker()
    paired(tracker, 30, 3.0, seed=3)
    [c] = tracker.compare()
    assert c.verdict == "too few samples" and "30 of the 50 pairs" in c.statement and c.quantiles == ()
    judged = evaluate_latency_terms([parse_latency_term("latency.p50>+10%")], [c])
    assert not judged.failed and judged.undecided[0][:3] == ("latency.p50>+10%", "/items/{id}", "v2")
    # Enough for a median, not for a p99 interval: p99 is undecided, not failed.
    tracker = LatencyTracker()
    paired(tracker, 100, 3.0, seed=3)
    [c] = tracker.compare()
    judged = evaluate_latency_terms([parse_latency_term("latency.p99>+10%")], [c])
    assert not judged.failed and "too few pairs" in judged.undecided[0][3]


def test_merging_workers_is_exact_for_histograms_and_the_small_reservoirs() -> None:
    whole, first, second = LatencyTracker(), LatencyTracker(), LatencyTracker()
    rng = random.Random(4)
    for i in range(600):
        primary, shadow = rng.uniform(0.001, 0.1), rng.uniform(0.001, 0.1)
        endpoint = f"/e{i % 3}"
        whole.add(endpoint, "v2", primary, shadow)
        (first if i % 2 else second).add(endpoint, "v2", primary, shadow)
    first.merge(second)
    for key in whole.series_keys():
        assert first.histograms(*key) == whole.histograms(*key)
        # 200 pairs per endpoint, under the reservoir size: the merged reservoir holds all of them.
        assert sorted(first.reservoir(*key).pairs) == sorted(whole.reservoir(*key).pairs)
    assert [c.to_dict() for c in first.compare()] == [c.to_dict() for c in whole.compare()]


def test_merging_full_reservoirs_is_reproducible_and_weighted() -> None:
    def build() -> tuple[PairReservoir, PairReservoir]:
        big, small = PairReservoir(100, "a"), PairReservoir(100, "b")
        for i in range(9000):
            big.add(0.0, float(i))
        for i in range(1000):
            small.add(1.0, float(i))
        return big, small

    merged_once, other = build()
    merged_once.merge(other, "seed")
    merged_twice, other = build()
    merged_twice.merge(other, "seed")
    assert merged_once.pairs == merged_twice.pairs and merged_once.seen == 10_000 and len(merged_once.pairs) == 100
    # A tenth of the pairs came from the small stream: its share is 10 of 100 on average (a
    # hypergeometric draw: about 3 either way for one seed), over 100 seeds within a few tenths.
    shares = []
    for seed in range(100):
        merged, other = build()
        merged.merge(other, f"seed {seed}")
        shares.append(sum(1 for p, _ in merged.pairs if p == 1.0))
    assert 9.0 <= sum(shares) / len(shares) <= 11.0


def test_memory_is_bounded_whatever_the_traffic() -> None:
    tracker = LatencyTracker(reservoir_size=256, max_endpoints=10)
    rng = random.Random(5)
    for i in range(50_000):
        tracker.add(f"/e{i % 40}", "v2", rng.expovariate(50), rng.expovariate(40))
    keys = tracker.series_keys()
    assert len(keys) == 11 and ("(overflow)", "v2") in keys
    for key in keys:
        primary, shadow = tracker.histograms(*key)
        assert len(primary.bins) <= HISTOGRAM_BINS and len(shadow.bins) <= HISTOGRAM_BINS
        assert len(tracker.reservoir(*key).pairs) <= 256
    assert tracker.reservoir("(overflow)", "v2").seen == 50_000 * 30 // 40
    assert len(pickle.dumps(tracker)) < 2_000_000


def test_results_are_reproducible() -> None:
    a, b = LatencyTracker(reservoir_size=100), LatencyTracker(reservoir_size=100)
    paired(a, 2000, 1.1, seed=6)
    paired(b, 2000, 1.1, seed=6)
    assert [c.to_dict() for c in a.compare()] == [c.to_dict() for c in b.compare()]


@pytest.mark.parametrize(
    ("text", "kind", "threshold"),
    [("latency.p99>+20%", "percent", 0.2), ("latency.p50>+5ms", "seconds", 0.005), ("latency.p90>=2x", "factor", 2.0)],
)
def test_terms_parse(text: str, kind: str, threshold: float) -> None:
    term = parse_latency_term(text)
    assert (term.kind, term.threshold) == (kind, pytest.approx(threshold))


@pytest.mark.parametrize("text", ["latency.p99>20%", "latency.p95>+20%", "latency.mean>+1ms", "latency.p50<+5ms"])
def test_bad_terms_are_refused_naming_the_term(text: str) -> None:
    with pytest.raises(ConfigError, match="latency term"):
        split_fail_on(f"high,{text}")


def test_split_leaves_the_other_clauses() -> None:
    rest, terms = split_fail_on("high,latency.p99>+20%,severity>=medium&rate>0.01")
    assert rest == "high,severity>=medium&rate>0.01" and [t.text for t in terms] == ["latency.p99>+20%"]
