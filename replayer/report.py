"""Replay results as data and text: the JSON document, the summary table and the SLO gates.

Pure formatting over a ``JobResult`` (no I/O: the command writes the files). The JSON field names
are documented in docs/replay.md, so renaming one is a format change. It must never compute a
latency figure of its own: every number comes from the merged HdrHistograms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from recorder.errors import ConfigError
from replayer.result import JobResult
from replayer.stats import ERROR_CLASSES, HISTOGRAMS, PERCENTILES, EndpointStats

__all__ = ["RESULTS_SCHEMA_VERSION", "SloGates", "results_document", "slo_failures", "summary_text"]

RESULTS_SCHEMA_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class SloGates:
    """Thresholds that make the replay fail (exit 1). ``None`` disables a gate."""

    max_error_rate: float | None = None
    max_p99_ms: float | None = None
    max_start_lag_ms: float | None = None

    def __post_init__(self) -> None:
        if self.max_error_rate is not None and not 0.0 <= self.max_error_rate <= 1.0:
            raise ConfigError(f"must be a fraction within 0..1, got {self.max_error_rate}", field="max-error-rate")
        for name in ("max_p99_ms", "max_start_lag_ms"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"must be > 0, got {value}", field=name.replace("_", "-"))


def slo_failures(result: JobResult, gates: SloGates) -> list[str]:
    """One sentence per failed gate; empty when the replay passed."""
    overall = result.stats.overall
    summary = result.stats.summary()
    failures: list[str] = []
    if gates.max_error_rate is not None and summary.error_rate > gates.max_error_rate:
        failures.append(f"error rate {summary.error_rate:.2%} is above {gates.max_error_rate:.2%}")
    if gates.max_p99_ms is not None:
        p99 = overall.percentile_ms("corrected", 99.0)
        if p99 > gates.max_p99_ms:
            failures.append(f"p99 response time (from the intended send) {p99:.1f} ms is above {gates.max_p99_ms:g} ms")
    if gates.max_start_lag_ms is not None:
        lag = overall.percentile_ms("start_lag", 99.0)
        if lag > gates.max_start_lag_ms:
            failures.append(f"p99 start lag {lag:.1f} ms is above {gates.max_start_lag_ms:g} ms")
    return failures


def _latency(stats: EndpointStats) -> dict[str, dict[str, float]]:
    return {name: {f"p{p:g}": round(stats.percentile_ms(name, p), 3) for p in PERCENTILES} for name in HISTOGRAMS}


def results_document(
    result: JobResult, *, target: str, tapes: tuple[str, ...], workers: int, gates: SloGates
) -> dict[str, Any]:
    """The JSON results (schema in docs/replay.md)."""
    summary = result.stats.summary()
    failures = slo_failures(result, gates)
    return {
        "schema": RESULTS_SCHEMA_VERSION,
        "target": target,
        "tapes": list(tapes),
        "workers": workers,
        "planned": result.planned,
        "plan": result.plan_stats,
        "summary": {
            "requests": summary.requests,
            "ok": summary.ok,
            "errors": summary.errors,
            "error_rate": summary.error_rate,
            "held_back": summary.held_back,
            "held_back_ms": result.stats.held_back_ns / 1e6,
            "achieved_rate_per_s": summary.achieved_rate_per_s,
            "elapsed_s": summary.elapsed_s,
        },
        "latency_ms": _latency(result.stats.overall),
        "endpoints": [
            {
                "endpoint": name,
                "requests": per.requests,
                "errors": {k: per.errors[k] for k in ERROR_CLASSES if per.errors[k]},
                "error_rate": per.error_count / per.requests if per.requests else 0.0,
                "statuses": {str(k): v for k, v in sorted(per.statuses.items())},
                "latency_ms": _latency(per),
            }
            for name, per in sorted(result.stats.endpoints.items(), key=lambda item: -item[1].requests)
        ],
        "timeline": [
            {"second": i, "planned": row[0], "sent": row[1], "ok": row[2], "errors": row[3]}
            for i, row in enumerate(result.stats.timeline)
        ],
        "results_tape": {"written": result.results_written, "dropped": result.results_dropped},
        "slo": {"passed": not failures, "failures": failures},
        "stopped": result.stopped,
        "error": result.error,
    }


def summary_text(result: JobResult, *, max_endpoints: int = 15) -> str:
    """The terminal summary: totals, the three latency rows and the busiest endpoints."""
    s = result.stats.summary()
    overall = result.stats.overall
    errors = ", ".join(f"{k} {v:,}" for k, v in s.errors.items()) or "none"
    lines = [
        f"requests {s.requests:,} in {s.elapsed_s:.1f} s ({s.achieved_rate_per_s:,.0f}/s), planned {result.planned:,}",
        f"errors   {errors} (rate {s.error_rate:.2%}); held back by the in-flight cap: {s.held_back:,}",
        "",
        f"{'latency (ms)':<28}" + "".join(f"{f'p{p:g}':>10}" for p in PERCENTILES),
    ]
    labels = {"service": "service time", "corrected": "response (from intended)", "start_lag": "start lag"}
    for name in HISTOGRAMS:
        lines.append(f"{labels[name]:<28}" + "".join(f"{overall.percentile_ms(name, p):>10.2f}" for p in PERCENTILES))
    endpoints = sorted(result.stats.endpoints.items(), key=lambda item: -item[1].requests)
    if endpoints:
        lines += ["", f"{'endpoint':<40}{'requests':>10}{'errors':>8}{'p50':>10}{'p99':>10}  (response ms)"]
        for name, per in endpoints[:max_endpoints]:
            lines.append(
                f"{name[:39]:<40}{per.requests:>10,}{per.error_count:>8,}"
                f"{per.percentile_ms('corrected', 50):>10.2f}{per.percentile_ms('corrected', 99):>10.2f}"
            )
        if len(endpoints) > max_endpoints:
            lines.append(f"... and {len(endpoints) - max_endpoints} more endpoints (see --json / --html)")
    if result.results_written or result.results_dropped:
        lines += ["", f"results tape: {result.results_written:,} written, {result.results_dropped:,} dropped"]
    return "\n".join(lines)
