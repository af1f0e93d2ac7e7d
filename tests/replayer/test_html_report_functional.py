"""The HTML report renders in a real browser (Debian's chromium), offline, with its charts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shadowtap.replayer.html_report import render_html
from shadowtap.replayer.report import SloGates
from shadowtap.replayer.result import JobResult
from shadowtap.replayer.stats import ReplayStats

MS = 1_000_000
CHROMIUM = "/usr/bin/chromium"


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


def test_report_is_self_contained_and_escapes_tape_text() -> None:
    page = render_html(sample_result(), target="http://t", tapes=("t",), gates=SloGates(max_p99_ms=10))
    assert page.count("<svg") == 3 and "<script>" not in page and "&lt;script&gt;" in page
    assert "http://" not in page.replace("http://t", "").replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "failed" in page and "&lt;b&gt;corrupt&lt;/b&gt;" in page


@pytest.mark.skipif(shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists(), reason="needs chromium")
def test_report_renders_in_chromium_without_network(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    out = tmp_path / "report.html"
    out.write_text(render_html(sample_result(), target="http://t", tapes=("t",), gates=SloGates()))
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(out.as_uri())
            charts = page.locator("svg")
            assert charts.count() == 3
            for i in range(3):
                box = charts.nth(i).bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 80
            assert page.locator("polyline").count() >= 4  # three percentile curves and the rate lines
            assert page.locator("table tr").count() >= 4
        finally:
            browser.close()
    assert requests == [out.as_uri()]


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
    assert "No request succeeded" in everything_failed and everything_failed.count("<svg") == 2
