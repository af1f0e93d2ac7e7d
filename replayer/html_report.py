"""The replay report as one self-contained HTML page with inline SVG charts (works offline).

The failed requests first when there are any (counts by kind, the first examples), what the plan
left out and the overview cards; then what Locust and k6 users look for first: requests per second,
response-time percentiles (p50, p90, p99) and statuses and errors over time, and the per-endpoint
table; last the latency percentile curves of the whole run (service vs corrected vs start lag,
both axes log; none when every request failed). It has the diff report's look: the same inlined
stylesheet (``shadowtap.differ.reports.html.report_stylesheet``) and the same locked-down
Content-Security-Policy, with no script at all: every chart is SVG drawn here and readable as is.

Pure string building over a ``JobResult``; it must never reference a network resource (no scripts,
fonts or images from anywhere) and never put unescaped text from a tape into the page.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Final

from shadowtap.differ.reports.html import content_security_policy, report_stylesheet
from shadowtap.replayer.report import (
    MAX_ENDPOINTS,
    SloGates,
    busiest_endpoints,
    errors_lead,
    overflow_text,
    skipped_text,
    slo_failures,
)
from shadowtap.replayer.result import JobResult
from shadowtap.replayer.stats import (
    FAILURE_KINDS,
    HISTOGRAMS,
    PERCENTILES,
    SERIES_PERCENTILES,
    STATUS_CLASSES,
    EndpointStats,
    Series,
    error_counts,
)

__all__ = ["render_html"]

_W: Final = 1000
_H: Final = 260
_PAD_L: Final = 64
_PAD_R: Final = 16
_PAD_T: Final = 16
_PAD_B: Final = 40
_LABELS: Final = {"service": "service time", "corrected": "response from intended send", "start_lag": "start lag"}
# Latencies below this are drawn at it: a start lag of 1 us would stretch the log axis for nothing.
_FLOOR_MS: Final = 0.01
# Percentile axis in "nines": x = log10(1 / (1 - p)), 0 .. 5 covers p0 .. p99.999.
_MAX_NINES: Final = 5.0
#: Endpoint rows in the table, busiest first; the JSON results list every endpoint.
ENDPOINT_ROWS: Final = 500
#: Statuses named per endpoint (most frequent first); the rest are summed as "others".
_STATUSES_SHOWN: Final = 4
# Time-axis tick steps in seconds: at most about eight ticks, at a round number.
_TICK_STEPS_S: Final = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _x(value: float, lo: float, hi: float) -> float:
    return _PAD_L + (value - lo) / (hi - lo or 1.0) * (_W - _PAD_L - _PAD_R)


def _y(value: float, lo: float, hi: float) -> float:
    return _H - _PAD_B - (value - lo) / (hi - lo or 1.0) * (_H - _PAD_T - _PAD_B)


def _svg(chart: str, body: list[str], title: str, points: int) -> str:
    return (
        f'<svg class="chart" data-chart="{chart}" data-points="{points}" viewBox="0 0 {_W} {_H}" '
        f'role="img" aria-label="{_e(title)}" xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg>'
    )


def _axes(x_label: str, y_label: str) -> list[str]:
    return [
        f'<line class="axis" x1="{_PAD_L}" y1="{_H - _PAD_B}" x2="{_W - _PAD_R}" y2="{_H - _PAD_B}"/>',
        f'<line class="axis" x1="{_PAD_L}" y1="{_PAD_T}" x2="{_PAD_L}" y2="{_H - _PAD_B}"/>',
        f'<text x="{(_W + _PAD_L) / 2}" y="{_H - 6}" text-anchor="middle">{_e(x_label)}</text>',
        f'<text x="12" y="{(_H - _PAD_B) / 2}" transform="rotate(-90 12 {(_H - _PAD_B) / 2})" '
        f'text-anchor="middle">{_e(y_label)}</text>',
    ]


def _polyline(points: Sequence[tuple[float, float]], key: str) -> str:
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline class="line k-{key}" points="{coords}"/>'


def _legend(names: Sequence[tuple[str, str]]) -> str:
    return (
        '<p class="legend">'
        + "".join(f'<span><i class="k-{key}"></i>{_e(label)}</span>' for key, label in names)
        + "</p>"
    )


def _y_scale(value: float) -> tuple[float, float]:
    """(top, step) of a linear axis from 0 to at least ``value``: four or five gridlines at a round
    step (1, 2, 2.5 or 5 times a power of ten)."""
    raw = max(value, 1e-9) / 4
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if raw <= m * magnitude * (1 + 1e-9))
    return step * max(1, math.ceil(value / step - 1e-9)), step


def _fmt_number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or value == int(value) else f"{value:,.3g}"


def _fmt_s(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min" + (f" {seconds % 60} s" if seconds % 60 else "")
    return f"{seconds // 3600} h" + (f" {seconds % 3600 // 60} min" if seconds % 3600 // 60 else "")


def _y_grid(top: float, step: float) -> list[str]:
    body = []
    for k in range(round(top / step) + 1):
        y = _y(k * step, 0, top)
        if k:
            body.append(f'<line class="grid" x1="{_PAD_L}" y1="{y:.1f}" x2="{_W - _PAD_R}" y2="{y:.1f}"/>')
        body.append(f'<text x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt_number(k * step)}</text>')
    return body


def _time_ticks(span_s: int) -> list[str]:
    step = next((s for s in _TICK_STEPS_S if span_s / s <= 8), _TICK_STEPS_S[-1])
    return [
        f'<text x="{_x(t, 0, span_s):.1f}" y="{_H - _PAD_B + 14}" text-anchor="middle">{_e(_fmt_s(t))}</text>'
        for t in range(0, span_s + 1, step)
    ]


def _lines_over_time(
    chart: str,
    series: Series,
    lines: Sequence[tuple[str, str, list[float | None]]],
    y_label: str,
    empty: str,
) -> str:
    """One line per ``(key, label, value per interval)``, drawn at each interval's middle; a
    ``None`` value (an interval where nothing completed) breaks the line."""
    length = len(series.rows)
    values = [v for _, _, line in lines for v in line if v is not None]
    if length == 0 or not any(values):
        return f'<p class="muted">{_e(empty)}</p>'
    interval_s = series.interval_s
    span_s = length * interval_s
    top, step = _y_scale(max(values))
    body = _axes(f"time since start ({_fmt_s(interval_s)} intervals)", y_label) + _y_grid(top, step)
    body += _time_ticks(span_s)
    for key, _, line in lines:
        run: list[tuple[float, float]] = []
        for i, value in enumerate([*line, None]):
            if value is None:
                if len(run) == 1:  # a lone interval: a dot, or it would not show at all
                    run.append((run[0][0] + 0.1, run[0][1]))
                if run:
                    body.append(_polyline(run, key))
                run = []
            else:
                run.append((_x((i + 0.5) * interval_s, 0, span_s), _y(value, 0, top)))
    return _svg(chart, body, y_label, length) + _legend([(key, label) for key, label, _ in lines])


def _rate_chart(series: Series) -> str:
    per_s = 1.0 / series.interval_s
    return _lines_over_time(
        "rate",
        series,
        [
            # Sent first, then the plan dashed on top: where they coincide both stay visible.
            ("sent", "sent", [row[1] * per_s for row in series.rows]),
            ("planned", "planned", [row[0] * per_s for row in series.rows]),
            ("failed", "failed (5xx and no response)", [row[3] * per_s for row in series.rows]),
        ],
        "requests per second",
        "No requests were sent.",
    )


def _latency_chart(series: Series) -> str:
    keys = {50.0: "p50", 90.0: "p90", 99.0: "p99"}
    lines: list[tuple[str, str, list[float | None]]] = [
        (
            keys[p],
            keys[p],
            [series.percentile_ms(i, p) if series.latency[i] else None for i in range(len(series.rows))],
        )
        for p in SERIES_PERCENTILES
    ]
    return _lines_over_time("latency", series, lines, "response time (ms)", "No request completed.")


def _status_chart(series: Series) -> str:
    """Stacked bars per interval: responses by status class, then requests without a response by
    failure kind, each bar titled with its counts."""
    length = len(series.rows)
    keys = [*STATUS_CLASSES, *FAILURE_KINDS]
    first = 4  # the counters after planned, sent, ok, errors: statuses then failures (Series' row)
    totals = [sum(row[first:]) for row in series.rows]
    if length == 0 or not any(totals):
        return '<p class="muted">No request completed.</p>'
    interval_s = series.interval_s
    span_s = length * interval_s
    per_s = 1.0 / interval_s
    top, step = _y_scale(max(totals) * per_s)
    body = _axes(f"time since start ({_fmt_s(interval_s)} intervals)", "completed per second")
    body += _y_grid(top, step)
    body += _time_ticks(span_s)
    width = (_W - _PAD_L - _PAD_R) / length
    gap = 1.0 if width > 3 else 0.0
    used: set[str] = set()
    for i, row in enumerate(series.rows):
        if not totals[i]:
            continue
        x = _x(i * interval_s, 0, span_s)
        base = 0.0
        rects = []
        named = []
        for k, key in enumerate(keys):
            count = row[first + k]
            if not count:
                continue
            used.add(key)
            named.append(f"{key} {count:,}")
            y_top, y_base = _y((base + count) * per_s, 0, top), _y(base * per_s, 0, top)
            rects.append(
                f'<rect class="bar k-{key}" x="{x:.1f}" y="{y_top:.1f}" width="{max(0.5, width - gap):.1f}" '
                f'height="{max(0.5, y_base - y_top):.1f}"/>'
            )
            base += count
        start = i * interval_s
        title = f"{_fmt_s(start)} to {_fmt_s(start + interval_s)}: {', '.join(named)}"
        body.append(f"<g><title>{_e(title)}</title>{''.join(rects)}</g>")
    legend = [(key, key if key in STATUS_CLASSES else f"{key} (no response)") for key in keys if key in used]
    return _svg("statuses", body, "completed per second by status and error", length) + _legend(legend)


def _percentile_chart(stats: EndpointStats) -> str:
    curves: dict[str, list[tuple[float, float]]] = {}
    values: list[float] = []
    steps = 100
    for name in HISTOGRAMS:
        hist = stats.histogram(name)
        if hist.get_total_count() == 0:
            continue
        points = []
        for i in range(steps + 1):
            nines = _MAX_NINES * i / steps
            percentile = 100.0 * (1.0 - 10.0**-nines)
            ms = max(_FLOOR_MS, hist.get_value_at_percentile(percentile) / 1000.0)
            points.append((nines, ms))
            values.append(ms)
        curves[name] = points
    if not curves:
        return '<p class="muted">No requests were sent.</p>'
    lo = math.floor(math.log10(min(values)))
    hi = max(lo + 1, math.ceil(math.log10(max(values))))
    body = _axes("percentile", "latency (ms, log)")
    for decade in range(lo, hi + 1):
        y = _y(decade, lo, hi)
        body.append(f'<line class="grid" x1="{_PAD_L}" y1="{y:.1f}" x2="{_W - _PAD_R}" y2="{y:.1f}"/>')
        body.append(f'<text x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{10.0**decade:g}</text>')
    for nines, label in ((0, "p0"), (1, "p90"), (2, "p99"), (3, "p99.9"), (4, "p99.99"), (5, "p99.999")):
        x = _x(nines, 0, _MAX_NINES)
        anchor = "end" if nines == _MAX_NINES else "start" if nines == 0 else "middle"
        body.append(f'<text x="{x:.1f}" y="{_H - _PAD_B + 14}" text-anchor="{anchor}">{label}</text>')
    for name, points in curves.items():
        body.append(_polyline([(_x(n, 0, _MAX_NINES), _y(math.log10(ms), lo, hi)) for n, ms in points], name))
    return _svg("percentiles", body, "latency percentiles", steps + 1) + _legend([(n, _LABELS[n]) for n in curves])


def _statuses_cell(per: EndpointStats) -> str:
    ranked = sorted(per.statuses.items(), key=lambda item: (-item[1], item[0]))
    shown = [f"{status}&nbsp;&times;{count:,}" for status, count in ranked[:_STATUSES_SHOWN]]
    others = sum(count for _, count in ranked[_STATUSES_SHOWN:])
    if others:
        shown.append(f"others&nbsp;&times;{others:,}")
    # Failures and failed gRPC calls (grpc-NOT_FOUND ...); a 5xx shows as its status.
    failures = [f"{kind}&nbsp;&times;{count:,}" for kind, count in error_counts(per.errors).items() if kind != "5xx"]
    return ", ".join(shown + [f'<span class="fail">{f}</span>' for f in failures]) or "-"


def _endpoint_row(name: str, per: EndpointStats, elapsed_s: float, css: str = "") -> str:
    rate = per.error_count / per.requests if per.requests else 0.0
    # An endpoint where nothing succeeded has only times of failures: none are shown.
    times = [per.percentile_ms("corrected", p) for p in (50.0, 90.0, 99.0, 100.0)]
    times.append(per.percentile_ms("service", 99))
    cells = "".join(f'<td class="num">{t:,.2f}</td>' if per.ok else '<td class="num">-</td>' for t in times)
    per_s = f"{per.requests / elapsed_s:,.1f}" if elapsed_s > 0 else "-"
    error_css = ' class="num fail"' if per.error_count else ' class="num"'
    return (
        f'<tr{css}><td><code class="path">{_e(name)}</code></td><td class="num">{per.requests:,}</td>'
        f'<td class="num">{per_s}</td><td{error_css}>{per.error_count:,}</td><td{error_css}>{rate:.2%}</td>'
        f"<td>{_statuses_cell(per)}</td>{cells}</tr>"
    )


def _endpoint_table(result: JobResult, elapsed_s: float) -> str:
    endpoints = busiest_endpoints(result)
    if not endpoints:
        return '<p class="muted">No requests were sent.</p>'
    rows = "".join(_endpoint_row(name, per, elapsed_s) for name, per in endpoints[:ENDPOINT_ROWS])
    more = len(endpoints) - ENDPOINT_ROWS
    head = (
        "<thead><tr><th>endpoint</th><th class=num>requests</th><th class=num>per second</th>"
        "<th class=num>failed</th><th class=num>failed %</th><th>statuses</th><th class=num>p50</th>"
        "<th class=num>p90</th><th class=num>p99</th><th class=num>max</th><th class=num>service p99</th></tr></thead>"
    )
    total = _endpoint_row("all endpoints", result.stats.overall, elapsed_s, ' class="total"')
    overflow = overflow_text(result)
    return (
        f'<table class="endpoints">{head}<tbody>{rows}</tbody><tfoot>{total}</tfoot></table>'
        + (
            f'<p class="muted">{more:,} quieter endpoint templates not shown (the JSON results list the busiest '
            f"{MAX_ENDPOINTS:,})</p>"
            if more > 0
            else ""
        )
        + (f'<p class="muted">Past the template cap: {_e(overflow)}.</p>' if overflow else "")
    )


def render_html(result: JobResult, *, target: str, tapes: tuple[str, ...], gates: SloGates) -> str:
    """The whole report page."""
    css = report_stylesheet()
    s = result.stats.summary()
    overall = result.stats.overall
    series = result.stats.series
    failures = slo_failures(result, gates)
    checked = gates.describe()
    if failures:
        verdict_css, verdict = "fail", 'SLO <b class="fail">failed</b>: ' + "; ".join(_e(f) for f in failures)
    elif checked:
        verdict_css, verdict = "pass", f'SLO <b class="pass">passed</b> ({_e(", ".join(checked))})'
    else:
        verdict_css, verdict = "inconclusive", "no SLO gates were set"
    lead = errors_lead(result)
    errors_box = ""
    if lead:
        examples = "".join(f"<li><code>{_e(line)}</code></li>" for line in lead[1:])
        errors_box = (
            f'<section class="alert" id="errors"><b>{_e(lead[0])}</b>'
            + (f"<ul>{examples}</ul>" if examples else "")
            + "</section>"
        )
    skipped = skipped_text(result)
    skipped_line = f"<p>Not replayed: {_e(skipped)}.</p>" if skipped else ""
    cards = [
        ("requests", f"{s.requests:,}", "requests"),
        ("rate", f"{s.achieved_rate_per_s:,.0f}/s", "achieved rate"),
        ("error-rate", f"{s.error_rate:.2%}", "error rate"),
        ("p99", f"{overall.percentile_ms('corrected', 99):,.1f} ms", "p99 response (from intended)"),
        ("service-p99", f"{overall.percentile_ms('service', 99):,.1f} ms", "p99 service time"),
        ("start-lag-p99", f"{overall.percentile_ms('start_lag', 99):,.2f} ms", "p99 start lag"),
        ("held-back", f"{s.held_back:,}", "held back by the cap"),
    ]
    cards_html = "".join(
        f'<div class="card" data-card="{key}"><span class="num">{value}</span><span class="label">{label}</span></div>'
        for key, value, label in cards
    )
    errors_line = "Errors by class: " + ", ".join(f"{k}: {v:,}" for k, v in s.errors.items()) + "."
    if not s.errors:
        errors_line = "No errors."
    pct_rows = "".join(
        f"<tr><td>{_LABELS[name]}</td>"
        + "".join(f'<td class="num">{overall.percentile_ms(name, p):,.2f}</td>' for p in PERCENTILES)
        + "</tr>"
        for name in HISTOGRAMS
    )
    pct_head = "<thead><tr><th>ms</th>" + "".join(f'<th class="num">p{p:g}</th>' for p in PERCENTILES) + "</tr></thead>"
    problem = f'<p class="alert">Stopped early: {_e(result.error)}</p>' if result.error else ""
    if s.requests and not s.ok:
        latency = (
            '<p class="muted">No request succeeded: the times would be those of the failures, so none are shown.</p>'
        )
        latency_over_time = latency
    else:
        latency = (
            "<p>Response time is measured from when each request was due, so time spent waiting behind a "
            "stall (coordinated omission) is counted; service time starts when the request was sent; start "
            "lag is the replayer's own delay."
            + (" Failed requests are included." if s.ok < s.requests else "")
            + f"</p>\n{_percentile_chart(overall)}\n<table>{pct_head}<tbody>{pct_rows}</tbody></table>"
        )
        latency_over_time = (
            '<p class="muted">Per interval, of the requests that completed in it, from when each was due '
            "(read from log buckets: at most 6.25 % high).</p>" + _latency_chart(series)
        )
    meta = [f"against <code>{_e(target)}</code>", f"{_e(', '.join(tapes))}"]
    meta.append(f"{s.elapsed_s:,.1f} s, {result.planned:,} planned")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_e(content_security_policy(css))}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>shadowtap replay report</title>
<style>{css}</style>
</head>
<body>
<header>
<h1>Replay of {_e(", ".join(tapes))}</h1>
<p class="verdict {verdict_css}">{verdict}</p>
<p class="meta">{" &middot; ".join(meta)}</p>
</header>
<main>
{problem}{errors_box}{skipped_line}
<section class="cards">{cards_html}</section>
<section id="over-time">
<h2>Requests per second</h2>
{_rate_chart(series)}
<h2>Response time over time</h2>
{latency_over_time}
<h2>Statuses and errors over time</h2>
<p>{_e(errors_line)}</p>
{_status_chart(series)}
</section>
<section id="endpoints">
<h2>Endpoints ({len(result.stats.endpoints):,})</h2>
<p class="muted">Response time in ms from the intended send, per endpoint template; busiest first.</p>
{_endpoint_table(result, s.elapsed_s)}
</section>
<section id="latency">
<h2>Latency percentiles</h2>
{latency}
</section>
</main>
<footer><p class="muted">shadowtap replay report. This file makes no network requests.</p></footer>
</body>
</html>
"""
