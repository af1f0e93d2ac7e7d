"""Replay stats: recording, classification, encode/decode and merging without losing counts."""

from __future__ import annotations

import json
import random

import pytest

from shadowtap.differ.templates import EndpointTemplater
from shadowtap.replayer.stats import (
    SERIES_MAX_POINTS,
    ReplayStats,
    Series,
    bucket_ceiling_us,
    log_bucket,
    values_at_percentiles,
)

MS = 1_000_000


def record(stats: ReplayStats, endpoint: str, due_ms: int, lag_ms: int, service_ms: int, **kw: object) -> None:
    due = 1_000 * MS + due_ms * MS
    stats.record_done(
        endpoint,
        t0_ns=1_000 * MS,
        due_ns=due,
        released_ns=due + lag_ms * MS,
        sent_ns=due + lag_ms * MS,
        done_ns=due + lag_ms * MS + service_ms * MS,
        status=kw.get("status", 200),  # type: ignore[arg-type]
        error=kw.get("error"),  # type: ignore[arg-type]
    )


def test_three_histograms_and_error_classes() -> None:
    stats = ReplayStats()
    record(stats, "GET /a", 0, 1, 10)
    record(stats, "GET /a", 10, 100, 10)
    record(stats, "GET /b", 20, 0, 5, status=503)
    record(stats, "GET /b", 1500, 0, 5, status=None, error="timeout")
    overall = stats.overall
    assert overall.requests == 4 and overall.ok == 2
    assert dict(overall.errors) == {"5xx": 1, "timeout": 1}
    assert abs(overall.percentile_ms("corrected", 100) - 110) < 1
    assert abs(overall.percentile_ms("service", 100) - 10) < 0.1
    assert abs(overall.percentile_ms("start_lag", 100) - 100) < 0.5
    assert stats.endpoints["GET /b"].statuses[503] == 1
    assert [row[1] for row in stats.timeline] == [3, 1]  # sent per second
    summary = stats.summary()
    assert summary.error_rate == 0.5 and summary.errors == {"timeout": 1, "5xx": 1}


def test_encode_decode_merge_keeps_every_count() -> None:
    a, b = ReplayStats(), ReplayStats()
    for i in range(100):
        record(a, "GET /a", i, 0, i % 7 + 1)
        record(b, "GET /c" if i % 2 else "GET /a", i + 2000, 0, 3)
    b.record_held_back(5 * MS)
    decoded = ReplayStats.decode(json.loads(json.dumps(b.encode())))
    merged = ReplayStats()
    merged.merge(a)
    merged.merge(decoded)
    assert merged.overall.requests == 200
    assert merged.overall.corrected.get_total_count() == 200
    assert merged.endpoints["GET /a"].requests == 150 and merged.endpoints["GET /c"].requests == 50
    assert merged.held_back == 1 and merged.held_back_ns == 5 * MS
    assert sum(row[1] for row in merged.timeline) == 200 and len(merged.timeline) == 3


def test_batched_recording_matches_hdrhistogram_record_value() -> None:
    import random

    from hdrh.histogram import HdrHistogram

    rng = random.Random(7)
    stats = ReplayStats()
    reference = {name: HdrHistogram(1, 3_600_000_000, 3) for name in ("service", "corrected", "start_lag")}
    for i in range(3000):
        lag_us = rng.choice([1, 2, 50, 999, 1000, 1001, 123_456])
        service_us = int(rng.lognormvariate(6, 2)) + 1
        due = 10**12 + i * 1000 * MS
        stats.record_done(
            "GET /",
            t0_ns=10**12,
            due_ns=due,
            released_ns=due + lag_us * 1000,
            sent_ns=due + lag_us * 1000,
            done_ns=due + (lag_us + service_us) * 1000,
            status=200,
            error=None,
        )
        reference["service"].record_value(min(service_us, 3_600_000_000))
        reference["corrected"].record_value(min(lag_us + service_us, 3_600_000_000))
        reference["start_lag"].record_value(lag_us)
    for name, hist in reference.items():
        mine = stats.overall.histogram(name)
        assert list(mine.counts) == list(hist.counts), name
        # Lowest and highest as a decoded histogram keeps them (the equivalent values of their buckets).
        assert (mine.total_count, mine.get_min_value(), mine.get_max_value()) == (
            hist.total_count,
            hist.get_min_value(),
            hist.get_max_value(),
        )
        assert mine.get_counts_array_index(mine.max_value) == hist.get_counts_array_index(hist.max_value)
        # An endpoint's histograms have two significant digits: the same values, coarser buckets.
        coarse = HdrHistogram(1, 3_600_000_000, 2)
        for index in range(hist.counts_len):
            if hist.counts[index]:
                coarse.record_value(hist.get_value_from_index(index), hist.counts[index])
        assert list(stats.endpoints["GET /"].histogram(name).counts) == list(coarse.counts), name


def test_the_index_constants_are_hdrhistograms_layouts() -> None:
    from shadowtap.replayer import stats as stats_module

    assert stats_module._layout(3) == (
        stats_module._UNIT,
        stats_module._HALF_MAGNITUDE,
        stats_module._MASK,
        stats_module._HALF_COUNT,
    )
    assert stats_module._layout(2) == (
        stats_module._E_UNIT,
        stats_module._E_HALF_MAGNITUDE,
        stats_module._E_MASK,
        stats_module._E_HALF_COUNT,
    )


def test_counts_go_into_the_histograms_and_reading_settles_their_totals() -> None:
    stats = ReplayStats()
    for i in range(3000):
        due = 10**12 + i * MS
        # Every latency distinct, three endpoints.
        stats.record_done(
            f"GET /{i % 3}",
            t0_ns=10**12,
            due_ns=due,
            released_ns=due + i * 1000,
            sent_ns=due + i * 1000,
            done_ns=due + 3 * i * 1000 + 1000,
            status=200,
            error=None,
        )
        if i == 1500:
            half = stats.overall.histogram("service")
            assert half.get_total_count() == 1501
            assert half.get_max_value() == half.get_highest_equivalent_value(2 * 1500 + 1)
    assert stats.overall.requests == 3000
    for name in ("service", "corrected", "start_lag"):
        assert stats.overall.histogram(name).get_total_count() == 3000
        assert sum(per.histogram(name).get_total_count() for per in stats.endpoints.values()) == 3000
    service = stats.overall.histogram("service")
    assert (service.get_min_value(), service.get_max_value()) == (1, service.get_highest_equivalent_value(2 * 2999 + 1))
    # Shipped and merged as a worker's are, then counting on: nothing lost or counted twice.
    merged = ReplayStats.decode(json.loads(json.dumps(stats.encode())))
    merged.merge(stats)
    record(merged, "GET /0", 5, 1, 2)
    assert merged.overall.histogram("corrected").get_total_count() == 6001
    assert merged.endpoints["GET /0"].histogram("corrected").get_total_count() == 2001


@pytest.mark.parametrize("digits", [2, 3])
def test_percentiles_in_one_walk_are_hdrhistograms_own(digits: int) -> None:
    from hdrh.histogram import HdrHistogram

    rng = random.Random(digits)
    wanted = (0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0)
    empty = HdrHistogram(1, 3_600_000_000, digits)
    assert values_at_percentiles(empty, wanted) == dict.fromkeys(wanted, 0)
    for values in (
        [1],
        [3_599_999_999],
        [rng.choice([1, 7, 999, 1000, 1001, 65_536]) for _ in range(500)],
        [int(rng.lognormvariate(7, 2.5)) + 1 for _ in range(5000)],
    ):
        hist = HdrHistogram(1, 3_600_000_000, digits)
        for value in values:
            hist.record_value(min(value, 3_600_000_000))
        expected = {p: hist.get_value_at_percentile(p) for p in wanted}
        assert values_at_percentiles(hist, wanted) == expected
        # Decoded (as workers ship them) and merged ones too.
        decoded = HdrHistogram.decode(hist.encode())
        assert values_at_percentiles(decoded, wanted) == expected
        merged = HdrHistogram(1, 3_600_000_000, digits)
        merged.add(decoded)
        assert values_at_percentiles(merged, reversed(wanted)) == expected
        # A histogram whose largest value was not tracked: the counts past it are walked too.
        hist.max_value = 1
        assert values_at_percentiles(hist, wanted) == {p: hist.get_value_at_percentile(p) for p in wanted}


def test_the_first_error_examples_of_each_class_are_kept_merged_and_shipped() -> None:
    from shadowtap.replayer.stats import ERROR_EXAMPLES_PER_CLASS, ErrorExample

    a, b = ReplayStats(), ReplayStats()
    for i in range(10):
        for stats, offset in ((a, 1), (b, 0)):
            if stats.wants_example("connect"):
                stats.record_example(ErrorExample("connect", (2 * i + offset) * MS, f"GET /c/{i}", "refused"))
    assert not a.wants_example("connect") and a.wants_example("timeout")
    b.record_example(ErrorExample("5xx", 7 * MS, "GET /s", "503 Service Unavailable"))
    merged = ReplayStats()
    merged.merge(a)
    merged.merge(ReplayStats.decode(json.loads(json.dumps(b.encode()))))
    connect = [e for e in merged.error_examples if e.kind == "connect"]
    # The earliest of both workers, in time order, bounded per class.
    assert [e.at_ns for e in connect] == [0, 1 * MS, 2 * MS][:ERROR_EXAMPLES_PER_CLASS]
    assert [e.kind for e in merged.error_examples].count("5xx") == 1


def test_the_series_counts_statuses_failures_and_latency_per_second() -> None:
    stats = ReplayStats()
    for i in range(10):
        stats.record_planned(i * 100 * MS)
    record(stats, "GET /a", 0, 0, 10)
    record(stats, "GET /a", 100, 0, 20, status=404)
    record(stats, "GET /b", 200, 0, 30, status=503)
    record(stats, "GET /b", 1200, 0, 40, status=None, error="connect")
    record(stats, "GET /b", 1300, 0, 50, status=None, error="bogus")
    record(stats, "GET /b", 1400, 0, 60, status=302)
    series = stats.series
    assert series.interval_s == 1 and len(series.rows) == 2
    first, second = series.row_counts(0), series.row_counts(1)
    assert first == {
        "planned": 10,
        "sent": 3,
        "ok": 2,
        "errors": 1,
        "statuses": {"2xx": 1, "4xx": 1, "5xx": 1},
        "failures": {},
    }
    assert second == {
        "planned": 0,
        "sent": 3,
        "ok": 1,
        "errors": 2,
        "statuses": {"3xx": 1},
        "failures": {"connect": 1, "other": 1},
    }
    assert 20 <= series.percentile_ms(0, 50) <= 20 * 1.0625
    assert 30 <= series.percentile_ms(0, 99) <= 30 * 1.0625
    assert 60 <= series.percentile_ms(1, 99) <= 60 * 1.0625


def test_log_buckets_are_exact_below_32_us_and_within_a_sixteenth_above() -> None:
    rng = random.Random(3)
    values = list(range(1, 5000)) + [rng.randrange(1, 3_600_000_001) for _ in range(20_000)] + [3_600_000_000]
    for value in values:
        index = log_bucket(value)
        ceiling = bucket_ceiling_us(index)
        assert value <= ceiling <= value * 1.0625, value
        assert log_bucket(ceiling) == index and log_bucket(ceiling + 1) == index + 1
    assert log_bucket(3_600_000_000) < 464


def test_a_long_run_coarsens_the_series_and_keeps_every_count() -> None:
    stats = ReplayStats()
    hours = 5
    for second in range(0, hours * 3600, 7):
        stats.record_planned(second * 1000 * MS)
        record(stats, "GET /", second * 1000, 0, 5)
    series = stats.series
    assert len(series.rows) <= SERIES_MAX_POINTS
    assert series.interval_s == 32  # 18,000 s in at most 600 intervals: 1 s doubled five times
    sent = len(range(0, hours * 3600, 7))
    assert sum(row[1] for row in series.rows) == sent and sum(row[0] for row in series.rows) == sent
    assert sum(sum(b.values()) for b in series.latency) == sent
    # Interval i covers [32 i, 32 (i + 1)) seconds.
    assert series.row_counts(1)["sent"] == len(range(32 // 7 * 7 + 7, 64, 7))


def test_series_of_different_intervals_merge_at_the_coarser_one() -> None:
    short, long = ReplayStats(), ReplayStats()
    for i in range(100):
        record(short, "GET /", i * 1000, 0, 2, status=500 if i % 10 == 0 else 200)
    for i in range(1000):
        failed = i % 100 == 0
        record(long, "GET /", i * 1000, 0, 4, status=None if failed else 200, error="timeout" if failed else None)
    assert (short.series.interval_s, long.series.interval_s) == (1, 2)
    merged = ReplayStats()
    merged.merge(short)
    merged.merge(ReplayStats.decode(json.loads(json.dumps(long.encode()))))
    series = merged.series
    assert series.interval_s == 2 and len(series.rows) == len(long.series.rows)
    totals = [sum(row[k] for row in series.rows) for k in range(4)]
    assert totals == [0, 1100, 1100 - 10 - 10, 20]
    first = series.row_counts(0)
    assert first["statuses"] == {"2xx": 2, "5xx": 1} and first["failures"] == {"timeout": 1}
    # The other way round: a fine series merged into a coarse one lands in the same intervals.
    other = ReplayStats.decode(long.encode())
    other.merge(short)
    assert other.series.rows == series.rows and other.series.latency == series.latency


def test_a_series_refuses_a_malformed_encoding() -> None:
    with pytest.raises(ValueError, match="counters"):
        Series.decode({"interval_s": 1, "rows": [[1, 2]], "latency": [[]]})
    with pytest.raises(ValueError, match="latency"):
        Series.decode({"interval_s": 1, "rows": [], "latency": [[]]})


def _pages(templater: EndpointTemplater, count: int, start: int = 0) -> list[str]:
    """Plan-time templates of ``count`` sparse page paths (the position folds along the way)."""
    return [templater.observe_template("GET", f"/pages/{_word(i)}") for i in range(start, start + count)]


def _word(n: int) -> str:
    return "page-" + "".join("abcdefghij"[n // 10**k % 10] for k in range(4))


def test_stats_started_under_a_raw_path_merge_into_its_template_when_it_folds() -> None:
    templater = EndpointTemplater()
    stats = ReplayStats(templater=templater)
    planned = _pages(templater, 40)  # not folded yet: every page is its own endpoint
    assert len(set(planned)) == 40
    for i, endpoint in enumerate(planned):
        record(stats, endpoint, i, 0, 5)
    record(stats, "GET /healthz", 0, 0, 1)
    assert len(stats.endpoints) == 41
    late = _pages(templater, 200, start=40)
    # A request planned before the fold but done after it counts under the template too.
    record(stats, planned[0], 50, 0, 5)
    for i, endpoint in enumerate(late):
        record(stats, endpoint, 60 + i, 0, 5)
    endpoints = stats.endpoints
    assert set(endpoints) == {"GET /pages/{id}", "GET /healthz"}
    assert endpoints["GET /pages/{id}"].requests == 241
    assert endpoints["GET /pages/{id}"].histogram("service").get_total_count() == 241
    assert stats.overall.requests == 242


def test_workers_stats_fold_alike_when_merged() -> None:
    """One worker saw enough pages to fold the position, the other did not: merged, they fold."""
    folded_side, raw_side = EndpointTemplater(), EndpointTemplater()
    a, b = ReplayStats(templater=folded_side), ReplayStats(templater=raw_side)
    for i, endpoint in enumerate(_pages(folded_side, 300)):
        record(a, endpoint, i, 0, 5)
    for i, endpoint in enumerate(_pages(raw_side, 10, start=1000)):
        record(b, endpoint, i, 0, 5)
    assert len(b.endpoints) == 10
    merged = ReplayStats()
    merged.merge(ReplayStats.decode(json.loads(json.dumps(a.encode()))))
    merged.merge(ReplayStats.decode(json.loads(json.dumps(b.encode()))))
    assert {name: per.requests for name, per in merged.endpoints.items()} == {"GET /pages/{id}": 310}


def test_endpoints_past_the_template_cap_share_the_overflow_bucket() -> None:
    templater = EndpointTemplater(max_templates=5)
    stats = ReplayStats(templater=templater)
    for round_ in range(4):
        for i in range(12):
            record(stats, templater.observe_template("GET", f"/r{'abcdefghijkl'[i]}"), round_ * 12 + i, 0, 1)
    assert len(stats.endpoints) == 6 and stats.endpoints["GET {overflow}"].requests == 28
    assert stats.overflow() == {"GET": (7, True)}
