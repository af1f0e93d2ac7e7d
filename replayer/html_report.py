"""The replay report as one self-contained HTML page with inline SVG charts (works offline).

The failed requests first when there are any (counts by kind, the first examples), what the plan
left out, then latency percentile curves (service vs corrected vs start lag, both axes log; none
when every request failed), achieved vs planned rate per second, errors per second, and the
per-endpoint table. Pure string building over a
``JobResult``; it must never reference a network resource (no scripts, fonts or images from
anywhere) and never put unescaped text from a tape into the page.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Final

from shadowtap.replayer.report import SloGates, errors_lead, skipped_text, slo_failures
from shadowtap.replayer.result import JobResult
from shadowtap.replayer.stats import HISTOGRAMS, PERCENTILES, EndpointStats

__all__ = ["render_html"]

_W: Final = 760
_H: Final = 260
_PAD_L: Final = 64
_PAD_R: Final = 16
_PAD_T: Final = 16
_PAD_B: Final = 40
_COLORS: Final = {"service": "#2b6cb0", "corrected": "#c53030", "start_lag": "#718096", "planned": "#dd6b20"}
_LABELS: Final = {"service": "service time", "corrected": "response from intended send", "start_lag": "start lag"}
# Latencies below this are drawn at it: a start lag of 1 us would stretch the log axis for nothing.
_FLOOR_MS: Final = 0.01
# Percentile axis in "nines": x = log10(1 / (1 - p)), 0 .. 5 covers p0 .. p99.999.
_MAX_NINES: Final = 5.0

_CSS: Final = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:900px;color:#1a202c}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{border:1px solid #e2e8f0;border-radius:8px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:20px}.card span{color:#4a5568;font-size:12px}
.pass{color:#276749}.fail{color:#c53030}
.errors{border:2px solid #c53030;border-radius:8px;padding:10px 14px;margin:16px 0;background:#fff5f5}
.errors ul{margin:6px 0 0;padding-left:20px;font-size:13px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:right;padding:4px 8px;border-bottom:1px solid #edf2f7}th:first-child,td:first-child{text-align:left}
svg text{font-size:11px;fill:#4a5568}.legend span{margin-right:14px}.legend i{display:inline-block;width:12px;
height:3px;vertical-align:middle;margin-right:4px}
"""


def _x(value: float, lo: float, hi: float) -> float:
    return _PAD_L + (value - lo) / (hi - lo or 1.0) * (_W - _PAD_L - _PAD_R)


def _y(value: float, lo: float, hi: float) -> float:
    return _H - _PAD_B - (value - lo) / (hi - lo or 1.0) * (_H - _PAD_T - _PAD_B)


def _svg(body: list[str], title: str) -> str:
    return (
        f'<svg viewBox="0 0 {_W} {_H}" width="100%" role="img" aria-label="{html.escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg>'
    )


def _axes(x_label: str, y_label: str) -> list[str]:
    return [
        f'<line x1="{_PAD_L}" y1="{_H - _PAD_B}" x2="{_W - _PAD_R}" y2="{_H - _PAD_B}" stroke="#cbd5e0"/>',
        f'<line x1="{_PAD_L}" y1="{_PAD_T}" x2="{_PAD_L}" y2="{_H - _PAD_B}" stroke="#cbd5e0"/>',
        f'<text x="{(_W + _PAD_L) / 2}" y="{_H - 6}" text-anchor="middle">{html.escape(x_label)}</text>',
        f'<text x="12" y="{(_H - _PAD_B) / 2}" transform="rotate(-90 12 {(_H - _PAD_B) / 2})" '
        f'text-anchor="middle">{html.escape(y_label)}</text>',
    ]


def _polyline(points: Sequence[tuple[float, float]], color: str, dashed: bool = False) -> str:
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    return f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{coords}"/>'


def _legend(names: Sequence[tuple[str, str]]) -> str:
    return (
        '<div class="legend">'
        + "".join(f'<span><i style="background:{c}"></i>{html.escape(n)}</span>' for n, c in names)
        + "</div>"
    )


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
        return "<p>No requests were sent.</p>"
    lo = math.floor(math.log10(min(values)))
    hi = max(lo + 1, math.ceil(math.log10(max(values))))
    body = _axes("percentile", "latency (ms, log)")
    for decade in range(lo, hi + 1):
        y = _y(decade, lo, hi)
        body.append(f'<line x1="{_PAD_L}" y1="{y:.1f}" x2="{_W - _PAD_R}" y2="{y:.1f}" stroke="#edf2f7"/>')
        body.append(f'<text x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{10.0**decade:g}</text>')
    for nines, label in ((0, "p0"), (1, "p90"), (2, "p99"), (3, "p99.9"), (4, "p99.99"), (5, "p99.999")):
        x = _x(nines, 0, _MAX_NINES)
        anchor = "end" if nines == _MAX_NINES else "start" if nines == 0 else "middle"
        body.append(f'<text x="{x:.1f}" y="{_H - _PAD_B + 14}" text-anchor="{anchor}">{label}</text>')
    for name, points in curves.items():
        body.append(_polyline([(_x(n, 0, _MAX_NINES), _y(math.log10(ms), lo, hi)) for n, ms in points], _COLORS[name]))
    return _svg(body, "latency percentiles") + _legend([(_LABELS[n], _COLORS[n]) for n in curves])


def _time_chart(
    series: list[tuple[str, str, list[int]]], y_label: str, bars: bool = False, empty: str = "No data."
) -> str:
    length = max((len(values) for _, _, values in series), default=0)
    if length == 0 or not any(any(values) for _, _, values in series):
        return f"<p>{html.escape(empty)}</p>"
    top = max(1, max(max(values, default=0) for _, _, values in series))
    body = _axes("seconds since start", y_label)
    for frac in (0.0, 0.5, 1.0):
        y = _y(top * frac, 0, top)
        body.append(f'<text x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{top * frac:,.4g}</text>')
    for t in range(0, length, max(1, length // 8)):
        body.append(
            f'<text x="{_x(t, 0, max(1, length - 1)):.1f}" y="{_H - _PAD_B + 14}" text-anchor="middle">{t}</text>'
        )
    for name, color, values in series:
        if bars:
            width = max(1.0, (_W - _PAD_L - _PAD_R) / max(1, length) - 1)
            for t, v in enumerate(values):
                if v:
                    x, y = _x(t, 0, max(1, length)), _y(v, 0, top)
                    height = _H - _PAD_B - y
                    body.append(
                        f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}" fill="{color}"/>'
                    )
        else:
            points = [(_x(t, 0, max(1, length - 1)), _y(v, 0, top)) for t, v in enumerate(values)]
            body.append(_polyline(points, color, dashed=name == "planned"))
    return _svg(body, y_label) + _legend([(name, color) for name, color, _ in series])


def _endpoint_table(result: JobResult) -> str:
    rows = []
    for name, per in sorted(result.stats.endpoints.items(), key=lambda item: -item[1].requests):
        rate = per.error_count / per.requests if per.requests else 0.0
        # An endpoint where nothing succeeded has only times of failures: none are shown.
        times = [per.percentile_ms("corrected", p) for p in (50.0, 90.0, 99.0, 100.0)]
        times.append(per.percentile_ms("service", 99))
        cells = "".join(f"<td>{t:,.2f}</td>" if per.ok else "<td>-</td>" for t in times)
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{per.requests:,}</td><td>{rate:.2%}</td>{cells}</tr>")
    head = (
        "<tr><th>endpoint</th><th>requests</th><th>errors</th><th>p50</th><th>p90</th><th>p99</th><th>max</th>"
        "<th>service p99</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def render_html(result: JobResult, *, target: str, tapes: tuple[str, ...], gates: SloGates) -> str:
    """The whole report page."""
    s = result.stats.summary()
    overall = result.stats.overall
    failures = slo_failures(result, gates)
    checked = gates.describe()
    if failures:
        verdict = 'SLO <b class="fail">failed</b>: ' + "; ".join(html.escape(f) for f in failures)
    elif checked:
        verdict = f'SLO <b class="pass">passed</b> ({html.escape(", ".join(checked))})'
    else:
        verdict = "no SLO gates were set"
    lead = errors_lead(result)
    errors_box = ""
    if lead:
        examples = "".join(f"<li>{html.escape(line)}</li>" for line in lead[1:])
        errors_box = (
            f'<div class="errors"><b class="fail">{html.escape(lead[0])}</b>'
            + (f"<ul>{examples}</ul>" if examples else "")
            + "</div>"
        )
    skipped = skipped_text(result)
    skipped_line = f"<p>Not replayed: {html.escape(skipped)}.</p>" if skipped else ""
    cards = [
        (f"{s.requests:,}", "requests"),
        (f"{s.achieved_rate_per_s:,.0f}/s", "achieved rate"),
        (f"{s.error_rate:.2%}", "error rate"),
        (f"{overall.percentile_ms('corrected', 99):,.1f} ms", "p99 response (from intended)"),
        (f"{overall.percentile_ms('service', 99):,.1f} ms", "p99 service time"),
        (f"{overall.percentile_ms('start_lag', 99):,.2f} ms", "p99 start lag"),
        (f"{s.held_back:,}", "held back by the cap"),
    ]
    timeline = result.stats.timeline
    errors_by_class = ", ".join(f"{k}: {v:,}" for k, v in s.errors.items()) or "none"
    pct_rows = "".join(
        f"<tr><td>{_LABELS[name]}</td>"
        + "".join(f"<td>{overall.percentile_ms(name, p):,.2f}</td>" for p in PERCENTILES)
        + "</tr>"
        for name in HISTOGRAMS
    )
    pct_head = "<tr><th>ms</th>" + "".join(f"<th>p{p:g}</th>" for p in PERCENTILES) + "</tr>"
    # Sent first, then the plan dashed on top: where they coincide both stay visible.
    rate_chart = _time_chart(
        [
            ("sent", _COLORS["service"], [r[1] for r in timeline]),
            ("planned", _COLORS["planned"], [r[0] for r in timeline]),
        ],
        "requests per second",
    )
    error_chart = _time_chart(
        [("errors", _COLORS["corrected"], [r[3] for r in timeline])], "errors per second", bars=True, empty="No errors."
    )
    problem = f"<p class='fail'>Stopped early: {html.escape(result.error)}</p>" if result.error else ""
    if s.requests and not s.ok:
        latency = "<p>No request succeeded: the times would be those of the failures, so none are shown.</p>"
    else:
        latency = (
            "<p>Response time is measured from when each request was due, so time spent waiting behind a "
            "stall (coordinated omission) is counted; service time starts when the request was sent; start "
            "lag is the replayer's own delay."
            + (" Failed requests are included." if s.ok < s.requests else "")
            + f"</p>\n{_percentile_chart(overall)}\n<table>{pct_head}{pct_rows}</table>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shadowtap replay report</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head><body>
<h1>Replay of {html.escape(", ".join(tapes))}</h1>
<div>against {html.escape(target)} &middot; {verdict}</div>{problem}{errors_box}{skipped_line}
<div class="cards">{"".join(f"<div class='card'><b>{v}</b><span>{k}</span></div>" for v, k in cards)}</div>
<h2>Latency percentiles</h2>
{latency}
<h2>Achieved vs planned rate</h2>
{rate_chart}
<h2>Errors over time</h2>
<p>By class: {html.escape(errors_by_class)}.</p>
{error_chart}
<h2>Endpoints</h2>
<p>Response time (ms, from the intended send) per endpoint template.</p>
{_endpoint_table(result)}
</body></html>
"""
