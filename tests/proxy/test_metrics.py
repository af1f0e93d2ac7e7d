"""Metrics render as Prometheus text from a per-process registry, with live sources read on scrape."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from shadowtap.proxy.metrics import LatencyHistogram, MetricsStage, ProxyMetrics
from shadowtap.proxy.stages import ProxiedExchange
from shadowtap.recorder.model import Failure, FailureKind, Response, Timing


def samples(metrics: ProxyMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_histogram_buckets_are_cumulative() -> None:
    h = LatencyHistogram()
    for seconds in (0.0001, 0.0007, 0.003, 100.0):
        h.observe(seconds)
    cumulative = dict(h.cumulative())
    assert cumulative["0.0005"] == 1 and cumulative["0.001"] == 2 and cumulative["0.005"] == 3
    assert cumulative["30.0"] == 3 and cumulative["+Inf"] == 4 and h.count == 4


def test_stage_counts_and_registries_are_separate() -> None:
    metrics = ProxyMetrics()
    stage = MetricsStage(metrics)
    ok = ProxiedExchange("a", "c", "x", 0, 0, "GET", "/", "1.1", ())
    ok.response = Response(204)
    ok.timing = Timing(0, 1_000_000, 2_000_000)
    failed = ProxiedExchange("b", "c", "x", 0, 0, "GET", "/", "1.1", ())
    failed.failure = Failure(FailureKind.CONNECT_ERROR)
    for ex in (ok, ok, failed):
        stage.exchange_complete(ex)
    metrics.count_mirror("v2", "mirrored")
    metrics.count_mirror("v2", FailureKind.QUEUE_FULL)
    metrics.observe_shadow("v2", 0.2)
    depth = {"v2": 3.0}
    metrics.add_source("gauge", "shadowtap_test_depth", "depth", "shadow", lambda: depth)
    got = samples(metrics)
    assert got["shadowtap_proxy_requests_total", (("status", "2xx"),)] == 2
    assert got["shadowtap_proxy_requests_total", (("status", "error"),)] == 1
    assert got["shadowtap_primary_latency_seconds_count", ()] == 2
    assert got["shadowtap_mirror_outcomes_total", (("outcome", "queue-full"), ("shadow", "v2"))] == 1
    assert got["shadowtap_shadow_latency_seconds_bucket", (("le", "0.25"), ("shadow", "v2"))] == 1
    assert got["shadowtap_test_depth", (("shadow", "v2"),)] == 3
    depth["v2"] = 7.0
    assert samples(metrics)["shadowtap_test_depth", (("shadow", "v2"),)] == 7
    assert "shadowtap_proxy_requests_total" not in str(samples(ProxyMetrics()))


def test_observer_side_counts_like_the_stage_side() -> None:
    metrics = ProxyMetrics()
    stage = MetricsStage(metrics)
    stage.observe_primary(503, False, 3_000_000)
    stage.observe_primary(200, True, 1_000_000)  # failed after the head: counted by its status
    stage.observe_primary(None, True, None)
    stage.observe_primary(None, False, None)
    stage.observe_primary(999, False, 1)  # llhttp accepts any three digits
    assert metrics.requests_by_status == {"5xx": 1, "2xx": 1, "error": 1, "unknown": 1, "9xx": 1}
    assert metrics.primary_latency.count == 3
