"""Replay results as data and text: the JSON document, the summary table and the SLO gates.

Failed requests lead every report (counts by kind, the first examples), and what the plan left out
is said where the totals are.

Pure formatting over a ``JobResult`` (no I/O: the command writes the files). The JSON field names
are documented in docs/replay.md, so renaming one is a format change. It must never compute a
latency figure of its own: every number comes from the merged HdrHistograms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from shadowtap.recorder.errors import ConfigError
from shadowtap.replayer.result import JobResult
from shadowtap.replayer.stats import HISTOGRAMS, PERCENTILES, SERIES_PERCENTILES, EndpointStats, Series, error_counts

__all__ = [
    "DEFAULT_MAX_ERROR_RATE",
    "MAX_ENDPOINTS",
    "RESULTS_SCHEMA_VERSION",
    "SloGates",
    "busiest_endpoints",
    "errors_lead",
    "overflow_text",
    "results_document",
    "skipped_text",
    "slo_failures",
    "summary_text",
]

RESULTS_SCHEMA_VERSION: Final = 1
#: Endpoint templates the JSON results list (the busiest); the rest are counted in ``endpoints_more``.
MAX_ENDPOINTS: Final = 200
#: The error-rate gate of `shadowtap replay` unless --max-error-rate says otherwise: a replay with
#: more than 1 % failed requests (a target down fails them all) is not a load test that passed.
DEFAULT_MAX_ERROR_RATE: Final = 0.01
#: What the plan leaves out, and how the summaries say so (PlanStats field -> words).
_SKIPPED: Final = (
    ("skipped_unsafe_method", "with unsafe methods (--allow-writes replays them)"),
    ("skipped_filter", "by filters"),
    ("skipped_window", "outside --since/--until"),
    ("skipped_sample", "by --sample-percent"),
)


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

    def describe(self) -> list[str]:
        """The gates that can fail, as short conditions (``error rate <= 1.00%``); empty when none."""
        gates: list[str] = []
        # An error rate cannot exceed 1: that gate is off.
        if self.max_error_rate is not None and self.max_error_rate < 1.0:
            gates.append(f"error rate <= {self.max_error_rate:.2%}")
        if self.max_p99_ms is not None:
            gates.append(f"p99 <= {self.max_p99_ms:g} ms")
        if self.max_start_lag_ms is not None:
            gates.append(f"start lag p99 <= {self.max_start_lag_ms:g} ms")
        return gates

    def as_dict(self) -> dict[str, float | None]:
        return {
            "max_error_rate": self.max_error_rate,
            "max_p99_ms": self.max_p99_ms,
            "max_start_lag_ms": self.max_start_lag_ms,
        }


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


def errors_lead(result: JobResult) -> list[str]:
    """What failed, for the top of a report: a count line, then the first examples; empty when
    nothing failed."""
    s = result.stats.summary()
    failed = s.requests - s.ok
    if not failed:
        return []
    kinds = ", ".join(f"{k} {v:,}" for k, v in s.errors.items())
    lines = [f"{failed:,} of {s.requests:,} requests failed ({s.error_rate:.2%}): {kinds}"]
    for example in result.stats.error_examples:
        lines.append(f"{example.kind:<8} {example.request}  {example.detail}  (at {example.at_ns / 1e9:.2f} s)")
    return lines


def skipped_text(result: JobResult) -> str:
    """What the plan left out (``4 with unsafe methods (--allow-writes ...), 2 by filters``), or ''."""
    return ", ".join(f"{result.plan_stats[key]:,} {words}" for key, words in _SKIPPED if result.plan_stats.get(key, 0))


def _latency(stats: EndpointStats) -> dict[str, dict[str, float]]:
    return {name: {f"p{p:g}": round(stats.percentile_ms(name, p), 3) for p in PERCENTILES} for name in HISTOGRAMS}


def _timeline(series: Series) -> list[dict[str, Any]]:
    interval_s = series.interval_s
    rows = []
    for i in range(len(series.rows)):
        row: dict[str, Any] = {"second": i * interval_s, **series.row_counts(i)}
        row["latency_ms"] = (
            {f"p{p:g}": round(series.percentile_ms(i, p), 3) for p in SERIES_PERCENTILES} if series.latency[i] else None
        )
        rows.append(row)
    return rows


def busiest_endpoints(result: JobResult) -> list[tuple[str, EndpointStats]]:
    """Endpoint templates by traffic, busiest first (ties by name, so reports are stable)."""
    return sorted(result.stats.endpoints.items(), key=lambda item: (-item[1].requests, item[0]))


def overflow_text(result: JobResult) -> str:
    """``GET {overflow} holds 1,234 distinct paths`` per method past the template cap, or ''."""
    return "; ".join(
        f"{method} {{overflow}} holds {'' if exact else 'about '}{count:,} distinct paths"
        for method, (count, exact) in result.stats.overflow().items()
    )


def results_document(
    result: JobResult,
    *,
    target: str,
    tapes: tuple[str, ...],
    workers: int,
    gates: SloGates,
    max_endpoints: int = MAX_ENDPOINTS,
) -> dict[str, Any]:
    """The JSON results (schema in docs/replay.md)."""
    summary = result.stats.summary()
    failures = slo_failures(result, gates)
    endpoints = busiest_endpoints(result)
    return {
        "schema": RESULTS_SCHEMA_VERSION,
        # First, because it is the first thing to know about a replay.
        "errors": {
            "requests": summary.requests,
            "failed": summary.requests - summary.ok,
            "rate": summary.error_rate,
            "by_kind": summary.errors,
            "examples": [
                {"kind": e.kind, "at_s": round(e.at_ns / 1e9, 6), "request": e.request, "detail": e.detail}
                for e in result.stats.error_examples
            ],
        },
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
                "errors": error_counts(per.errors),
                "error_rate": per.error_count / per.requests if per.requests else 0.0,
                "statuses": {str(k): v for k, v in sorted(per.statuses.items())},
                "latency_ms": _latency(per),
            }
            for name, per in endpoints[:max_endpoints]
        ],
        "endpoints_more": max(0, len(endpoints) - max_endpoints),
        "endpoints_overflow": {
            method: {"distinct_paths": count, "exact": exact}
            for method, (count, exact) in result.stats.overflow().items()
        },
        "timeline_interval_s": result.stats.series.interval_s,
        "timeline": _timeline(result.stats.series),
        "results_tape": {"written": result.results_written, "dropped": result.results_dropped},
        "slo": {"passed": not failures, "failures": failures, "gates": gates.as_dict()},
        "stopped": result.stopped,
        "error": result.error,
    }


def summary_text(result: JobResult, *, max_endpoints: int = 15) -> str:
    """The terminal summary: the errors first when there are any, totals, what the plan left out,
    the three latency rows (unless every request failed: those would be times of failures) and the
    busiest endpoints."""
    s = result.stats.summary()
    overall = result.stats.overall
    lead = errors_lead(result)
    lines = [f"ERRORS   {lead[0]}", *(f"  {line}" for line in lead[1:]), ""] if lead else []
    errors = ", ".join(f"{k} {v:,}" for k, v in s.errors.items()) or "none"
    lines += [
        f"requests {s.requests:,} in {s.elapsed_s:.1f} s ({s.achieved_rate_per_s:,.0f}/s), planned {result.planned:,}",
        f"errors   {errors} (rate {s.error_rate:.2%}); held back by the in-flight cap: {s.held_back:,}",
    ]
    skipped = skipped_text(result)
    if skipped:
        lines.append(f"skipped  {skipped}")
    lines.append("")
    if s.requests and not s.ok:
        lines.append("latency: not shown, no request succeeded (the times would be those of the failures)")
    else:
        label = "latency (ms, failures included)" if s.ok < s.requests else "latency (ms)"
        lines.append(f"{label:<32}" + "".join(f"{f'p{p:g}':>10}" for p in PERCENTILES))
        labels = {"service": "service time", "corrected": "response (from intended)", "start_lag": "start lag"}
        for name in HISTOGRAMS:
            lines.append(
                f"{labels[name]:<32}" + "".join(f"{overall.percentile_ms(name, p):>10.2f}" for p in PERCENTILES)
            )
    endpoints = busiest_endpoints(result)
    if endpoints:
        lines += ["", f"{'endpoint':<40}{'requests':>10}{'errors':>8}{'p50':>10}{'p99':>10}  (response ms)"]
        for name, per in endpoints[:max_endpoints]:
            # An endpoint where nothing succeeded has only times of failures: none are shown.
            p50, p99 = (
                (f"{per.percentile_ms('corrected', 50):>10.2f}", f"{per.percentile_ms('corrected', 99):>10.2f}")
                if per.ok
                else (f"{'-':>10}", f"{'-':>10}")
            )
            lines.append(f"{name[:39]:<40}{per.requests:>10,}{per.error_count:>8,}{p50}{p99}")
        if len(endpoints) > max_endpoints:
            lines.append(f"... and {len(endpoints) - max_endpoints:,} more templates (see --json / --html)")
        overflow = overflow_text(result)
        if overflow:
            lines.append(f"past the template cap: {overflow}")
    if result.results_written or result.results_dropped:
        lines += ["", f"results tape: {result.results_written:,} written, {result.results_dropped:,} dropped"]
    return "\n".join(lines)
