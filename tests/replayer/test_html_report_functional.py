"""The replay report of a real replay, in a real headless browser (Debian's Chromium via Playwright).

A tape of four endpoints is replayed at recorded speed against an aiohttp server that answers
200, 404, 503 and slowly; the page is opened over file:// in an offline context: the charts over
time are drawn with the run's data, the endpoint table has a row per endpoint, nothing reaches the
network, and a screenshot goes to test-artifacts/ for a human to look at.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import pytest
from aiohttp import web
from playwright.async_api import async_playwright

from shadowtap.recorder import SyncTapeWriter, TapeOptions
from shadowtap.replayer.html_report import render_html
from shadowtap.replayer.job import ReplayJob, run_job
from shadowtap.replayer.report import SloGates
from tests.replayer.tapes import make_exchange

CHROMIUM: Final = "/usr/bin/chromium"
ARTIFACTS: Final = Path(__file__).resolve().parents[2] / "test-artifacts"
LAUNCH_ARGS: Final = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
KINDS: Final = ("fast", "slow", "missing", "broken")
#: 160 requests 15 ms apart: a replay of about 2.4 s, so the charts have a few one-second intervals.
REQUESTS: Final = 160
SPACING_MS: Final = 15


@pytest.fixture
async def target() -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind == "slow":
            await asyncio.sleep(0.03)
        status = {"missing": 404, "broken": 503}.get(kind, 200)
        return web.json_response({"kind": kind}, status=status)

    app = web.Application()
    app.router.add_get("/{kind}/{id}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_real_replays_report_renders_its_charts_and_table_offline(target: str, tmp_path: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-system-deps.sh chromium")
    with SyncTapeWriter(tmp_path / "tape", TapeOptions(redaction=None)) as writer:
        for i in range(REQUESTS):
            writer.write(make_exchange(i, i * SPACING_MS, target=f"/{KINDS[i % 4]}/{i}"))
    result = await run_job(ReplayJob(tapes=(str(tmp_path / "tape"),), target=target))
    assert result.error is None and result.stats.overall.requests == REQUESTS
    page_path = tmp_path / "replay.html"
    page_path.write_text(
        render_html(result, target=target, tapes=(str(tmp_path / "tape"),), gates=SloGates(max_error_rate=0.01))
    )
    intervals = len(result.stats.series.rows)
    assert intervals >= 3

    requests: list[str] = []
    console_errors: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1360, "height": 900}, offline=True)
            page = await context.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: console_errors.append(str(exc)))
            await page.goto(page_path.as_uri())

            assert await page.title() == "shadowtap replay report"
            assert await page.locator('[data-card="requests"] .num').inner_text() == f"{REQUESTS}"
            # A quarter answered 503: over the 1 % gate, said first.
            assert "SLO failed: error rate 25.00% is above 1.00%" in await page.locator(".verdict").inner_text()

            charts = page.locator("svg.chart")
            assert await charts.count() == 4
            names = [await charts.nth(i).get_attribute("data-chart") for i in range(4)]
            assert names == ["rate", "latency", "statuses", "percentiles"]
            for i in range(4):
                box = await charts.nth(i).bounding_box()
                assert box is not None and box["width"] > 600 and box["height"] > 150
            for name in ("rate", "latency", "statuses"):
                chart = page.locator(f'svg.chart[data-chart="{name}"]')
                assert await chart.get_attribute("data-points") == str(intervals)
            # Lines with a point per interval (a line breaks only where nothing completed) ...
            rate_lines = page.locator('svg.chart[data-chart="rate"] polyline')
            assert await rate_lines.count() == 3
            sent_points = await page.locator('svg.chart[data-chart="rate"] polyline.k-sent').get_attribute("points")
            assert sent_points is not None and len(sent_points.split()) == intervals
            for key in ("p50", "p90", "p99"):
                assert await page.locator(f'svg.chart[data-chart="latency"] polyline.k-{key}').count() >= 1
            # ... and stacked bars of 2xx, 4xx and 5xx, each interval's counts in its title.
            statuses = page.locator('svg.chart[data-chart="statuses"]')
            for key in ("2xx", "4xx", "5xx"):
                assert await statuses.locator(f"rect.k-{key}").count() >= intervals - 1
            titles = await statuses.locator("g > title").all_text_contents()
            counted = [int(n.replace(",", "")) for t in titles for n in re.findall(r"\b\dxx ([\d,]+)", t)]
            assert len(titles) == intervals and sum(counted) == REQUESTS
            # The bars are painted (a fill from the shared stylesheet), not black or transparent.
            fill = await statuses.locator("rect.k-2xx").first.evaluate("(el) => getComputedStyle(el).fill")
            assert fill not in ("", "none", "rgb(0, 0, 0)")

            rows = page.locator("table.endpoints tbody tr")
            assert await rows.count() == 4
            table = await page.locator("table.endpoints").inner_text()
            for kind, status in (("fast", "200"), ("slow", "200"), ("missing", "404"), ("broken", "503")):
                row = page.locator("table.endpoints tbody tr", has_text=f"/{kind}/")
                assert await row.count() == 1, table
                assert f"{status}\u00a0×{REQUESTS // 4}" in await row.inner_text()
            assert "all endpoints" in await page.locator("table.endpoints tfoot").inner_text()

            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "replay-report.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"\nreplay HTML report screenshot: {shot}")
            assert shot.stat().st_size > 10_000
            await context.close()
        finally:
            await browser.close()
    assert requests == [page_path.as_uri()]
    assert console_errors == []
