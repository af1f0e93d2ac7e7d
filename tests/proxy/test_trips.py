"""Trip rules without sockets: the grammar, the sliding windows, and the guard on a hand-driven clock."""

from __future__ import annotations

import pytest

from shadowtap.proxy.config import ProxyConfig
from shadowtap.proxy.flags import RuntimeFlags
from shadowtap.proxy.metrics import TRIP_BINS, ProxyMetrics, trip_bin, trip_bin_s
from shadowtap.proxy.trips import DiffWindow, SlidingHistogram, TripGuard, parse_trip
from shadowtap.recorder.errors import ConfigError


def test_rules_parse_into_what_they_say() -> None:
    rule = parse_trip("v2:shadow.p99>3x primary/30s;rearm=5m;min=50")
    assert (rule.shadow, rule.kind, rule.threshold, rule.quantile, rule.window_s, rule.rearm_s, rule.min_samples) == (
        "v2", "vs_primary", 3.0, 0.99, 30.0, 300.0, 50,
    )  # fmt: skip
    errors = parse_trip("shadow.errors>20%")
    assert (errors.kind, errors.threshold, errors.window_s, errors.shadow, errors.inclusive) == (
        "errors", 0.2, 60.0, None, False,
    )  # fmt: skip
    primary = parse_trip("primary.p99>+10%/1m")
    assert (primary.kind, primary.threshold, primary.baseline_s) == ("primary", 0.1, 300.0)
    assert parse_trip("shadow.p50>250ms").threshold == 0.25
    assert parse_trip("diff.critical>=1").inclusive
    major = parse_trip("diff.major>=5/1m")
    assert (major.kind, major.severity, major.threshold, major.window_s, major.text) == (
        "diff", "high", 5, 60.0, "diff.major>=5/1m",
    )  # fmt: skip
    differing = parse_trip("v2:diff.differing>10%/30s;rearm=5m")
    assert (differing.kind, differing.threshold, differing.window_s, differing.rearm_s, differing.min_samples) == (
        "diff_rate", 0.1, 30.0, 300.0, 20,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("shadow.errors>20", "percent"),
        ("shadow.latency>1s", "cannot read trip rule"),
        ("shadow.p99>3 primary", "factor"),
        ("shadow.errors>20%/soon", "duration"),
        ("primary.p99>10%", "+10%"),
        ("diff.awful>=1", "severity"),
        ("diff.differing>10", "percent"),
        ("diff.critical>=1.5", "count of signatures"),
        ("shadow.errors>20%;rearm=1m;rearm=2m", "repeated"),
        ("shadow.errors>20%/1h", "at most"),
        ("shadow.errors>20%;baseline=1m", "primary.pNN rules only"),
        ("v9:shadow.errors>20%", "no shadow named 'v9'"),
    ],
)
def test_bad_rules_are_refused_naming_the_rule(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ProxyConfig.from_mapping(
            {"primary": "http://127.0.0.1:9", "shadows": {"v2": "http://127.0.0.1:10"}, "trips": [text]}
        )
    assert caught.value.field == "trips[0]" and says in str(caught.value) and repr(text) in str(caught.value)


def test_a_sliding_histogram_forgets_what_left_the_window_into_its_baseline() -> None:
    baseline = SlidingHistogram(2)
    window = SlidingHistogram(2, baseline)
    for i in range(5):
        window.push({i: 10})
    assert window.total == 20 and baseline.total == 20 and len(window.buckets) == 2 and len(baseline.buckets) == 2
    assert [i for i, n in enumerate(window.counts) if n] == [3, 4]
    assert [i for i, n in enumerate(baseline.counts) if n] == [1, 2]


def test_fine_bins_are_ordered_and_within_two_percent() -> None:
    assert trip_bin(0) == 0 and trip_bin(1023) == 0 and trip_bin(1024) == 1 and trip_bin(10**13) == TRIP_BINS - 1
    previous = 0
    for ns in [int(1100 * 1.01**i) for i in range(2000)]:
        index = trip_bin(ns)
        assert index >= previous and abs(trip_bin_s(index) * 1e9 / ns - 1) < 0.02 or index == TRIP_BINS - 1
        previous = index


def test_percentiles_are_read_within_two_percent() -> None:
    window = SlidingHistogram(1)
    samples = [0.001 * (1 + i / 100) for i in range(1000)]  # 1 ms .. 11 ms, evenly
    bucket: dict[int, int] = {}
    for s in samples:
        index = trip_bin(int(s * 1e9))
        bucket[index] = bucket.get(index, 0) + 1
    window.push(bucket)
    for q in (0.5, 0.9, 0.99):
        exact = sorted(samples)[int(q * 1000) - 1]
        got = window.quantile_s(q)
        assert got is not None and abs(got / exact - 1) < 0.02


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def guard(rules: list[str]) -> tuple[TripGuard, RuntimeFlags, ProxyMetrics, Clock]:
    config = ProxyConfig.from_mapping(
        {"primary": "http://127.0.0.1:9", "shadows": {"v2": "http://127.0.0.1:10", "v3": "http://127.0.0.1:11"},
         "trips": rules}
    )  # fmt: skip
    flags, metrics, clock = RuntimeFlags(config), ProxyMetrics(), Clock()
    return TripGuard(config.trips, flags, metrics, clock=clock), flags, metrics, clock


def second(guard_: TripGuard, clock: Clock) -> None:
    clock.now += 1.0
    guard_.tick()


def test_errors_trip_within_the_window_for_the_failing_shadow_only() -> None:
    g, flags, metrics, clock = guard(["shadow.errors>20%/10s;min=10"])
    second(g, clock)  # the first tick after start only notes that mirroring is on
    for _ in range(20):  # healthy: 10 answers a second each
        for _ in range(10):
            metrics.count_mirror("v2", "ok")
            metrics.count_mirror("v3", "ok")
        second(g, clock)
    assert flags.shadow_mirroring(0) and flags.shadow_mirroring(1)
    # v2 fails every copy from now: 10 s of healthy history is 100 copies, so more than 20 % failing
    # takes 3 seconds of failures (30 of 130 is 23 %), well within the 10 s window.
    failing_s = 0
    while flags.shadow_mirroring(0) and failing_s < 10:
        for _ in range(10):
            metrics.count_mirror("v2", "reset")
            metrics.count_mirror("v3", "ok")
        second(g, clock)
        failing_s += 1
    assert failing_s == 3
    assert flags.tripped_by(0) == "shadow.errors>20%/10s;min=10" and flags.shadow_mirroring(1)
    assert g.trips_total == {("v2", "shadow.errors>20%/10s;min=10"): 1}


def test_a_5xx_answer_is_an_error_and_drops_before_sending_are_not() -> None:
    g, flags, metrics, clock = guard(["v2:shadow.errors>=50%/5s;min=10"])
    second(g, clock)
    for _ in range(10):
        metrics.count_mirror("v2", "queue-full")
        metrics.count_mirror("v2", "breaker-open")
        metrics.count_mirror("v2", "ok")
        metrics.observe_shadow("v2", 0.01, 200)
    second(g, clock)
    assert flags.shadow_mirroring(0)
    for _ in range(10):
        metrics.count_mirror("v2", "ok")
        metrics.observe_shadow("v2", 0.01, 503)
    second(g, clock)
    assert not flags.shadow_mirroring(0)


def test_no_trip_below_the_minimum_of_samples() -> None:
    g, flags, metrics, clock = guard(["shadow.errors>20%/10s;min=50"])
    second(g, clock)
    for _ in range(10):
        for _ in range(4):
            metrics.count_mirror("v2", "timeout")
        second(g, clock)
    # 40 failures of 40 copies over the window, but 50 are needed.
    assert flags.shadow_mirroring(0)
    assert g.snapshot()[0]["state"] == "warming up"


def test_the_primary_getting_slower_than_its_baseline_trips_every_shadow() -> None:
    g, flags, metrics, clock = guard(["primary.p99>+10%/5s;baseline=10s;min=50"])
    from shadowtap.proxy.metrics import MetricsStage

    observer = MetricsStage(metrics)
    second(g, clock)
    for _ in range(15):  # 15 s at 10 ms: fills the baseline and the window
        for _ in range(20):
            observer.observe_primary(200, False, 10_000_000)
        second(g, clock)
    assert flags.shadow_mirroring(0) and flags.shadow_mirroring(1)
    for _ in range(5):
        for _ in range(20):
            observer.observe_primary(200, False, 13_000_000)
        second(g, clock)
    assert not flags.shadow_mirroring(0) and not flags.shadow_mirroring(1)


def test_a_diff_rule_waits_for_the_live_differ() -> None:
    g, flags, _metrics, clock = guard(["diff.critical>=1"])
    second(g, clock)
    assert {entry["state"] for entry in g.snapshot()} == {"waiting for live diff"}
    assert flags.shadow_mirroring(0)


def test_a_shadow_switched_off_by_hand_is_judged_afresh_when_back_on() -> None:
    g, flags, metrics, clock = guard(["v2:shadow.errors>20%/10s;min=10"])
    second(g, clock)
    for _ in range(10):
        metrics.count_mirror("v2", "reset")
    flags.set_shadow_mirroring(0, False)  # the kill switch, before the guard judged those failures
    second(g, clock)
    flags.set_shadow_mirroring(0, True)
    second(g, clock)
    for _ in range(20):
        metrics.count_mirror("v2", "ok")
    second(g, clock)
    assert flags.shadow_mirroring(0) and flags.tripped_by(0) is None


def test_diff_rules_are_judged_on_the_live_results_and_wait_while_there_are_none() -> None:
    config = ProxyConfig.from_mapping(
        {"primary": "http://127.0.0.1:9", "shadows": {"v2": "http://127.0.0.1:10", "v3": "http://127.0.0.1:11"},
         "trips": ["diff.major>=2/10s;min=5", "v3:diff.differing>50%/10s;min=5"]}
    )  # fmt: skip
    flags, metrics, clock = RuntimeFlags(config), ProxyMetrics(), Clock()
    g = TripGuard(config.trips, flags, metrics, clock=clock, clock_ns=lambda: int(clock.now * 1e9))
    second(g, clock)
    # Queried for each shadow the rules cover, each window back from now.
    assert g.diff_queries() == [("v2", 0), ("v3", 0)]
    second(g, clock)
    clock.now = 20.0
    queries = g.diff_queries()
    assert queries == [("v2", 10_000_000_000), ("v3", 10_000_000_000)]
    bad = DiffWindow(compared=10, differing=8, errors=0, signatures={"critical": 1, "high": 1, "low": 3})
    # While live diff cannot tell, nothing trips, and the rules say why.
    g.take_diff(dict.fromkeys(queries, bad), "noise model warming up: 3 of 10", ["v2", "v3"])
    assert flags.shadow_mirroring(0) and flags.shadow_mirroring(1)
    assert {(e["state"], e["waiting"]) for e in g.snapshot()} == {
        ("waiting for live diff", "noise model warming up: 3 of 10")
    }
    # Too few compared pairs: warming up.
    g.take_diff(dict.fromkeys(queries, bad._replace(compared=4)), None, ["v2", "v3"])
    assert {e["state"] for e in g.snapshot()} == {"warming up"} and flags.shadow_mirroring(0)
    # High or worse: one critical and one high make two; v3 differs 80 % of the time; both trip.
    g.take_diff(dict.fromkeys(queries, bad), None, ["v2", "v3"])
    assert not flags.shadow_mirroring(0) and not flags.shadow_mirroring(1)
    assert flags.tripped_by(0) == "diff.major>=2/10s;min=5" and flags.tripped_by(1) == "diff.major>=2/10s;min=5"
    states = {(e["rule"], e["shadow"]): e for e in g.snapshot()}
    assert states[("diff.major>=2/10s;min=5", "v2")]["observed"] == 2
    # Turned back on by a person: judged only on the pairs since, so an older window is stale.
    flags.apply({"shadows": {"v2": {"mirroring": True}}})
    second(g, clock)
    g.take_diff(dict.fromkeys(queries, bad), None, ["v2", "v3"])
    assert flags.shadow_mirroring(0)
    [(name, since_ns)] = [q for q in g.diff_queries() if q[0] == "v2"]
    assert since_ns == int(clock.now * 1e9)
    g.take_diff({(name, since_ns): bad._replace(signatures={"high": 1})}, None, ["v2", "v3"])
    assert flags.shadow_mirroring(0)


def test_a_diff_rule_on_a_shadow_the_live_differ_does_not_compare_says_so() -> None:
    g, flags, _metrics, clock = guard(["diff.critical>=1"])
    second(g, clock)
    g.take_diff({}, None, ["v2"])
    states = {e["shadow"]: e for e in g.snapshot()}
    assert states["v3"]["state"] == "waiting for live diff" and "does not compare" in states["v3"]["waiting"]
    assert states["v2"]["state"] == "armed"
