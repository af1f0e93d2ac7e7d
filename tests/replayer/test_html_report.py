"""The replay HTML report as a document (no browser): self-contained, escaped, the diff report's
stylesheet and policy, and charts over time that carry the series' data."""

from __future__ import annotations

import base64
import hashlib
import re

from shadowtap.differ.reports.html import report_stylesheet
from shadowtap.replayer.html_report import ENDPOINT_ROWS, render_html
from shadowtap.replayer.report import SloGates
from shadowtap.replayer.result import JobResult
from shadowtap.replayer.stats import SERIES_MAX_POINTS, ReplayStats

MS = 1_000_000


def sample_result() -> JobResult:
    stats = ReplayStats()
    for i in range(3000):
        ms = 2 + (i % 50) + (400 if i % 300 == 0 else 0)
        stats.record_planned(i * MS)
        stats.record_done(
            f"GET /<script>alert({i % 3})</script>",
            t0_ns=0,
            due_ns=i * MS,
            released_ns=i * MS + 100_000,
            sent_ns=i * MS + 100_000,
            done_ns=(i + ms) * MS,
            status=503 if i % 97 == 0 else 200,
            error=None,
        )
    return JobResult(stats, {}, planned=3000, error="tape.stape at byte 12: <b>corrupt</b>")


def chart_svgs(page: str) -> dict[str, str]:
    """Each chart's SVG by its ``data-chart`` name, in page order."""
    return {
        m.group(1): m.group(0) for m in re.finditer(r'<svg class="chart" data-chart="([a-z]+)".*?</svg>', page, re.S)
    }


def test_report_is_self_contained_and_escapes_tape_text() -> None:
    page = render_html(sample_result(), target="http://t", tapes=("t",), gates=SloGates(max_p99_ms=10))
    assert page.count("<svg") == 4 and "<script>" not in page and "&lt;script&gt;" in page
    assert "http://" not in page.replace("http://t", "").replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "failed" in page and "&lt;b&gt;corrupt&lt;/b&gt;" in page
    # No script, no inline style attribute (the policy admits the one stylesheet by hash only).
    assert "<script" not in page and " style=" not in page and "src=" not in page


def test_the_page_has_the_diff_reports_stylesheet_and_a_locked_down_policy() -> None:
    page = render_html(sample_result(), target="http://t", tapes=("t",), gates=SloGates())
    css = report_stylesheet()
    assert page.count("<style>") == 1 and f"<style>{css}</style>" in page
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert policy is not None
    assert policy.group(1) == (
        f"default-src &#x27;none&#x27;; style-src &#x27;sha256-{digest}&#x27;; script-src &#x27;none&#x27;; "
        "img-src data:; base-uri &#x27;none&#x27;; form-action &#x27;none&#x27;"
    )
    # The diff report's building blocks: cards with numbers and labels, numeric table cells.
    assert '<div class="card" data-card="requests"><span class="num">3,000</span>' in page
    assert '<td class="num">' in page


def test_charts_over_time_carry_rate_percentiles_and_statuses_per_second() -> None:
    page = render_html(sample_result(), target="http://t", tapes=("t",), gates=SloGates())
    svgs = chart_svgs(page)
    assert list(svgs) == ["rate", "latency", "statuses", "percentiles"]
    # 3,000 requests at 1 ms spacing: 4 one-second intervals (the last holds the stragglers).
    for name in ("rate", "latency", "statuses"):
        assert 'data-points="4"' in svgs[name], name
    assert svgs["rate"].count("<polyline") == 3  # sent, planned, failed
    assert all(f'class="line k-{key}"' in svgs["latency"] for key in ("p50", "p90", "p99"))
    # One bar group per interval with completed requests, titled with its counts.
    assert svgs["statuses"].count("<g><title>") == 4
    assert "0 s to 1 s: 2xx 9" in svgs["statuses"] and ", 5xx " in svgs["statuses"]
    assert 'class="bar k-2xx"' in svgs["statuses"] and 'class="bar k-5xx"' in svgs["statuses"]


def test_a_long_run_is_drawn_from_the_coarsened_series() -> None:
    stats = ReplayStats()
    for second in range(0, 3 * 3600, 3):
        due = second * 1000 * MS
        stats.record_planned(due)
        stats.record_done(
            "GET /", t0_ns=0, due_ns=due, released_ns=due, sent_ns=due, done_ns=due + 5 * MS, status=200, error=None
        )
    page = render_html(JobResult(stats, {}, planned=3600), target="http://t", tapes=("t",), gates=SloGates())
    svgs = chart_svgs(page)
    points = int(re.search(r'data-points="(\d+)"', svgs["rate"]).group(1))  # type: ignore[union-attr]
    assert points == len(stats.series.rows) <= SERIES_MAX_POINTS and stats.series.interval_s == 32
    assert "(32 s intervals)" in svgs["rate"] and ">1 h<" in svgs["rate"]
    assert len(page) < 400_000


def test_the_endpoint_table_has_a_row_per_endpoint_a_total_and_a_cap() -> None:
    stats = ReplayStats()
    for i in range(ENDPOINT_ROWS + 20):
        for k in range(1 + (i == 7) * 5):
            status, error = (None, "reset") if k == 1 else (404 if k == 2 else 200, None)
            stats.record_done(
                f"GET /e{i}", t0_ns=0, due_ns=0, released_ns=0, sent_ns=0, done_ns=MS, status=status, error=error
            )
    page = render_html(JobResult(stats, {}, planned=1), target="http://t", tapes=("t",), gates=SloGates())
    table = page[page.index('<table class="endpoints">') : page.index("</table>", page.index('class="endpoints"'))]
    assert table.count("<tr>") == ENDPOINT_ROWS + 1  # the head row, then the busiest endpoints
    assert "20 quieter endpoint templates not shown" in page
    busiest = table.split("<tbody>")[1].split("</tr>")[0]
    assert "GET /e7" in busiest and "200&nbsp;&times;4, 404&nbsp;&times;1" in busiest
    assert '<span class="fail">reset&nbsp;&times;1</span>' in busiest
    assert '<tr class="total"><td><code class="path">all endpoints</code></td><td class="num">525</td>' in table


def test_without_gates_the_page_never_says_the_slo_passed() -> None:
    page = render_html(sample_result(), target="http://t", tapes=("t",), gates=SloGates())
    assert "no SLO gates were set" in page and "passed" not in page
    page = render_html(sample_result(), target="http://t", tapes=("t",), gates=SloGates(max_error_rate=0.5))
    assert 'SLO <b class="pass">passed</b> (error rate &lt;= 50.00%)' in page


def test_the_page_leads_with_the_errors_and_says_what_was_skipped() -> None:
    from tests.replayer.test_report import failing_result

    page = render_html(failing_result(10, 3), target="http://t", tapes=("t",), gates=SloGates())
    errors = page.index("3 of 10 requests failed (30.00%): timeout 3")
    assert errors < page.index('class="cards"')
    assert page.index("GET /r/0") < page.index("<h2>Latency percentiles</h2>")
    assert "Not replayed: 4 with unsafe methods (--allow-writes replays them), 2 by filters." in page
    everything_failed = render_html(failing_result(8, 8), target="http://t", tapes=("t",), gates=SloGates())
    # Rates and statuses over time still show; no latency chart made of failures' times.
    assert "No request succeeded" in everything_failed
    assert list(chart_svgs(everything_failed)) == ["rate", "statuses"]


def test_an_empty_replay_still_renders_a_page() -> None:
    page = render_html(JobResult(ReplayStats(), {}), target="http://t", tapes=("t",), gates=SloGates())
    assert "<svg" not in page and "No requests were sent." in page and "No errors." in page
