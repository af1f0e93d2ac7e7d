"""Latency through the pipeline: timed pairs into the store, the report's comparisons and latency terms."""

from __future__ import annotations

import random
import re
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

import pytest

from shadowtap.differ import DifferConfig, DiffSession, DiffStore, RunMeta, build_report
from shadowtap.differ.pipeline import pair_latency
from shadowtap.differ.report_model import DiffReport
from shadowtap.differ.verdict import parse_fail_on
from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.model import Exchange, Failure, FailureKind, Request, Response, Timing

T0_NS = 1_714_557_600_000_000_000
JSON = ((b"Content-Type", b"application/json"),)
BODY = b'{"ok": true}'


def timed(i: int, path: str, primary_s: float, shadow_s: float, *, candidate: str = "v2") -> Exchange:
    """One exchange answered alike by both sides, the primary in ``primary_s`` and the candidate in
    ``shadow_s`` (each measured from its own send: the shadow's copy is sent later than the primary)."""
    p_ns, s_ns = round(primary_s * 1e9), round(shadow_s * 1e9)
    return Exchange(
        id=f"ex-{i:06d}",
        started_at_ns=T0_NS + i * 1_000_000,
        request=Request("GET", path),
        primary=Response(200, "OK", JSON, BODY),
        shadows={candidate: Response(200, "OK", JSON, BODY)},
        timings={
            "primary": Timing(20_000, 20_000 + p_ns // 2, 20_000 + p_ns),
            candidate: Timing(900_000, 900_000 + s_ns // 2, 900_000 + s_ns),
        },
    )


def traffic(plan: Iterable[tuple[str, int, float]], seed: int = 11, start: int = 0) -> list[Exchange]:
    """``(path, pairs, slowdown)`` per endpoint, interleaved: each primary latency log-normal around
    20 ms, the candidate's ``slowdown`` times it with +-5 % jitter of its own."""
    rng = random.Random(seed)
    out: list[Exchange] = []
    i = start
    for path, pairs, slowdown in plan:
        for _ in range(pairs):
            base = rng.lognormvariate(-3.9, 0.35)
            out.append(timed(i, path, base, base * slowdown * rng.uniform(0.95, 1.05)))
            i += 1
    rng.shuffle(out)
    return out


def report_of(
    exchanges: Iterable[Exchange], fail_on: str = "high", *, db: str | Path = ":memory:", **window: int
) -> DiffReport:
    store = DiffStore(db)
    try:
        session = DiffSession(store, DifferConfig(), RunMeta("primary", "v2", None, ("t",)))
        for exchange in exchanges:
            session.add(exchange)
        session.finish()
        return build_report(store, DifferConfig(), fail_on=fail_on, **window)
    finally:
        store.close()


def test_a_30_percent_slower_endpoint_is_slower_first_and_fails_a_p50_term() -> None:
    report = report_of(traffic([("/slow", 600, 1.3), ("/same", 600, 1.0), ("/rare", 20, 1.3)]), "high,latency.p50>+20%")
    latency = report.latency
    assert latency.pairs == 1220 and latency.untimed == 0
    first = latency.comparisons[0]
    assert (first.endpoint, first.shadow, first.verdict, first.pairs) == ("GET /slow", "v2", "slower", 600)
    p50 = first.quantile(0.5)
    assert p50 is not None and 1.25 < p50.ratio < 1.35 and p50.ratio_ci is not None and p50.ratio_ci[0] > 1.0
    assert first.statement.startswith("the candidate is slower")
    by_endpoint = {c.endpoint: c for c in latency.comparisons}
    assert by_endpoint["GET /same"].verdict == "no significant difference"
    rare = by_endpoint["GET /rare"]
    assert rare.verdict == "too few samples" and "20 of the 50 pairs" in rare.statement
    assert [(f.term, f.endpoint) for f in latency.failures] == [("latency.p50>+20%", "GET /slow")]
    assert [(u.term, u.endpoint) for u in latency.undecided] == [("latency.p50>+20%", "GET /rare")]
    assert report.verdict.exit_code == 1
    assert report.verdict.failing_latency == ("latency.p50>+20% at GET /slow",)
    assert report.verdict.failing_signatures == ()
    assert "latency.p50>+20% at GET /slow" in report.verdict.reason


def test_an_absolute_term_fails_too_and_a_higher_threshold_passes() -> None:
    exchanges = traffic([("/slow", 600, 1.3), ("/same", 600, 1.0)])
    assert report_of(exchanges, "latency.p50>+2ms").verdict.exit_code == 1  # about +6 ms at 20 ms
    passing = report_of(exchanges, "latency.p50>+50%")
    assert passing.verdict.exit_code == 0 and "2 latency judgement(s)" in passing.verdict.reason


def test_a_no_change_tape_passes_every_latency_term() -> None:
    report = report_of(traffic([("/a", 800, 1.0), ("/b", 800, 1.0)]), "high,latency.p50>+5%,latency.p99>+20%")
    assert report.verdict.exit_code == 0, report.verdict.reason
    assert report.latency.failures == ()
    assert all(c.verdict == "no significant difference" for c in report.latency.comparisons)


def test_too_few_pairs_are_said_and_fail_nothing() -> None:
    report = report_of(traffic([("/slow", 30, 2.0)]))
    (only,) = report.latency.comparisons
    assert only.verdict == "too few samples" and only.quantiles == ()
    assert report.verdict.exit_code == 0  # no latency term: the statement is all
    # With a latency term and not one endpoint to judge it on, the gate saw nothing: inconclusive.
    gated = report_of(traffic([("/slow", 30, 2.0)]), "high,latency.p50>+20%")
    assert gated.verdict.exit_code == 2
    assert (
        gated.verdict.reason
        == "no latency term could be judged: all 1 endpoint(s) with timed pairs have too few of them"
    )
    assert gated.latency.failures == ()


def test_pairs_without_timings_are_skipped_and_counted() -> None:
    untimed = [
        Exchange(
            id=f"u{i}",
            started_at_ns=T0_NS + i,
            request=Request("GET", "/slow"),
            primary=Response(200, "OK", JSON, BODY),
            shadows={"v2": Response(200, "OK", JSON, BODY)},
        )
        for i in range(15)
    ]
    failed = timed(99_999, "/slow", 0.01, 0.02)
    failed = Exchange(
        id="failed",
        started_at_ns=T0_NS,
        request=failed.request,
        primary=failed.primary,
        shadows={"v2": Failure(FailureKind.TIMEOUT, "slow")},
        timings=failed.timings,
    )
    store = DiffStore(":memory:")
    session = DiffSession(store, DifferConfig(), RunMeta("primary", "v2", None, ("t",)))
    for exchange in [*traffic([("/slow", 60, 1.0)]), *untimed, failed]:
        session.add(exchange)
    stats = session.finish()
    assert (stats.latency_pairs, stats.latency_untimed, stats.errors) == (60, 15, 1)
    report = build_report(store, DifferConfig())
    assert (report.latency.pairs, report.latency.untimed) == (60, 15)
    # With no timed pair at all, a latency term cannot be judged anywhere.
    bare = report_of(untimed, "latency.p99>+20%")
    assert (bare.latency.pairs, bare.latency.untimed, bare.latency.comparisons) == (0, 15, ())
    assert bare.verdict.exit_code == 2 and "no compared pair has both sides timed" in bare.verdict.reason


def test_pair_latency_measures_both_sides_alike() -> None:
    ex = timed(1, "/a", 0.010, 0.013)
    assert pair_latency(ex, "primary", "v2") == (10_000_000, 13_000_000)
    # A GoReplay import knows only the first byte: both sides are then measured to it.
    first_byte_only = Exchange(
        id="g",
        started_at_ns=T0_NS,
        request=ex.request,
        primary=ex.primary,
        shadows={"replay": Response(200, "OK", JSON, BODY)},
        timings={"primary": Timing(0, 4_000_000), "replay": Timing(0, 5_000_000)},
    )
    assert pair_latency(first_byte_only, "primary", "replay") == (4_000_000, 5_000_000)
    half = Exchange(
        id="h", started_at_ns=T0_NS, request=ex.request, primary=ex.primary, shadows=ex.shadows,
        timings={"primary": ex.timings["primary"]},
    )  # fmt: skip
    assert pair_latency(half, "primary", "v2") is None


def test_a_replay_results_tape_compares_recorded_with_replayed_latency() -> None:
    exchanges = [
        Exchange(
            id=ex.id,
            started_at_ns=ex.started_at_ns,
            request=ex.request,
            primary=ex.primary,
            shadows={"replay": ex.shadows["v2"]},
            timings={"primary": ex.timings["primary"], "replay": ex.timings["v2"]},
        )
        for ex in traffic([("/slow", 300, 1.5)])
    ]
    store = DiffStore(":memory:")
    session = DiffSession(store, DifferConfig(), RunMeta("primary", "replay", None, ("results",)))
    for exchange in exchanges:
        session.add(exchange)
    session.finish()
    report = build_report(store, DifferConfig(), fail_on="latency.p90>1.2x")
    (c,) = report.latency.comparisons
    assert (c.shadow, c.verdict) == ("replay", "slower")
    assert report.verdict.failing_latency == ("latency.p90>1.2x at GET /slow",)


def test_a_window_reports_the_latency_of_its_pairs_only() -> None:
    # The first 500 exchanges the same, the next 500 at half speed.
    before = [timed(i, "/x", 0.02, 0.02) for i in range(500)]
    after = [timed(i, "/x", 0.02, 0.04) for i in range(500, 1000)]
    whole = report_of([*before, *after])
    later = report_of([*before, *after], since_ns=T0_NS + 500 * 1_000_000)
    earlier = report_of([*before, *after], until_ns=T0_NS + 500 * 1_000_000)
    assert (whole.latency.pairs, later.latency.pairs, earlier.latency.pairs) == (1000, 500, 500)
    (late,) = later.latency.comparisons
    (early,) = earlier.latency.comparisons
    assert late.verdict == "slower" and early.verdict == "no significant difference"
    p50 = late.quantile(0.5)
    assert p50 is not None and 1.97 < p50.ratio < 2.03  # histogram bins are 1 % wide


def test_the_sample_is_the_same_however_the_pairs_were_split_across_stores(tmp_path: Path) -> None:
    """Two workers' stores merged give the one store's report: histograms add, and the sample is
    the pairs of smallest priority, a hash of the exchange id (2,400 pairs: the sample is a subset)."""
    exchanges = traffic([("/slow", 2400, 1.1), ("/same", 300, 1.0)])
    one = report_of(exchanges, "latency.p99>+5%", db=tmp_path / "one.sqlite")
    meta = RunMeta("primary", "v2", None, ("t",))
    for part in (0, 1):
        store = DiffStore(tmp_path / f"part{part}.sqlite")
        session = DiffSession(store, DifferConfig(), meta)
        for exchange in exchanges[part::2]:
            session.add(exchange)
        session.finish(relearn=False)
        store.close()
    merged = DiffStore(tmp_path / "merged.sqlite")
    merged.set_meta(meta)
    for part in (0, 1):
        merged.merge_from(str(tmp_path / f"part{part}.sqlite"))
    two = build_report(merged, DifferConfig(), fail_on="latency.p99>+5%")
    merged.close()
    assert one.latency.comparisons[0].sampled_pairs == 1000
    assert [c.to_dict() for c in two.latency.comparisons] == [c.to_dict() for c in one.latency.comparisons]
    assert two.latency == one.latency
    assert two.verdict == one.verdict


def test_a_store_written_before_latencies_reads_without_them_and_gains_them_when_written(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    report_of(traffic([("/a", 60, 1.0)]), db=path)
    with closing(sqlite3.connect(path)) as db:
        for column in (
            "baseline_latency_ns",
            "candidate_latency_ns",
            "baseline_latency_bin",
            "candidate_latency_bin",
            "latency_priority",
        ):
            db.execute(f"ALTER TABLE pairs DROP COLUMN {column}")
        db.commit()
    reading = DiffStore(path, create=False)
    assert not reading.has_latency
    report = build_report(reading, DifferConfig())
    reading.close()
    assert (report.compared, report.latency.pairs, report.latency.untimed) == (60, 0, 60)
    with closing(sqlite3.connect(path)) as db:  # reading left it as it was
        assert "latency_priority" not in {row[1] for row in db.execute("PRAGMA table_info(pairs)")}
    more = report_of(traffic([("/a", 60, 1.0)], start=1000), db=path)
    assert (more.compared, more.latency.pairs, more.latency.untimed) == (120, 60, 60)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("latency.p95>+20%", "cannot read latency term 'latency.p95>+20%'"),
        ("high,latency.p99>20%", "cannot read latency term 'latency.p99>20%'"),
        ("latency.p99>+20%&high", "cannot read latency term"),
    ],
)
def test_a_bad_latency_term_is_a_config_error_naming_it(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_fail_on(spec)


def test_a_spec_of_latency_terms_only_fails_on_no_signature() -> None:
    rule = parse_fail_on("latency.p99>+20%, latency.p50>+5ms")
    assert rule.clauses == () and [t.text for t in rule.latency_terms] == ["latency.p99>+20%", "latency.p50>+5ms"]
    never = parse_fail_on("never,latency.p99>+20%")
    assert never.clauses == () and [t.text for t in never.latency_terms] == ["latency.p99>+20%"]
    with pytest.raises(ConfigError, match="cannot read condition 'never'"):
        parse_fail_on("never,high")
    with pytest.raises(ConfigError, match="diff.fail_on"):
        DifferConfig(fail_on="latency.p99>20%")


def test_an_endpoint_short_of_its_sample_under_the_bound_is_read_again_in_full() -> None:
    """The one-pass sample keeps the pairs under a bound each endpoint's count predicts; told of far
    more pairs than there are (a bound that keeps almost none), the store reads the endpoint again
    and gives the same sample."""
    store = DiffStore(":memory:")
    session = DiffSession(store, DifferConfig(), RunMeta("primary", "v2", None, ("t",)))
    for exchange in traffic([("/a", 1500, 1.0), ("/b", 40, 1.0)]):
        session.add(exchange)
    session.finish()
    honest = list(store.latency_samples(None, None, None, 1000, {"GET /a": 1500, "GET /b": 40}))
    misled = list(store.latency_samples(None, None, None, 1000, {"GET /a": 10**12, "GET /b": 40}))
    store.close()
    # Each endpoint's rows together, in priority order; the endpoints in any order.
    assert sorted(misled, key=lambda s: s.endpoint) == sorted(honest, key=lambda s: s.endpoint)
    assert [sum(1 for s in honest if s.endpoint == ep) for ep in ("GET /a", "GET /b")] == [1000, 40]
    priorities = [s.priority for s in honest if s.endpoint == "GET /a"]
    assert priorities == sorted(priorities)
