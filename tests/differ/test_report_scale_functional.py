"""A report of 5,000 endpoint templates: built from the store in one pass, bounded in size, and a
page a real headless browser (Chromium, as in test_html_report_functional) opens whole."""

from __future__ import annotations

import json
from pathlib import Path

from playwright.sync_api import Browser, expect

from shadowtap.differ import DifferConfig, DiffSession, DiffStore, RunMeta, build_report
from shadowtap.differ.aggregate import EXAMPLES_PER_REPORT
from shadowtap.differ.reports import write_html, write_json
from shadowtap.differ.reports.html import DETAILED_ENDPOINTS
from tests.differ.scale_tape import shop_exchange, shop_templates
from tests.differ.test_html_report_functional import PageWatch, browser  # noqa: F401 (a fixture)

TEMPLATES = 5_000
HTML_LIMIT_BYTES = 8 * 2**20
JSON_LIMIT_BYTES = 32 * 2**20


def test_five_thousand_templates_make_a_bounded_report_a_browser_opens(browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    paths = list(shop_templates())
    assert len(paths) == TEMPLATES
    store = DiffStore(tmp_path / "r.sqlite")
    session = DiffSession(store, DifferConfig(), RunMeta("primary", "v2", None, ("shop",)))
    for i in range(2 * TEMPLATES):
        session.add(shop_exchange(i, paths))
    session.finish()
    report = build_report(store, DifferConfig())
    store.close()
    assert len(report.endpoints) == TEMPLATES
    signatures = [s for e in report.endpoints for s in e.signatures]
    assert len(signatures) >= 3 * TEMPLATES
    assert sum(len(s.examples) for s in signatures) == EXAMPLES_PER_REPORT
    # The budget goes to the most severe signatures first (thousands of removed fields here), one
    # example each before any second.
    assert {s.severity for s in signatures if s.examples} == {"high"}
    assert max(len(s.examples) for s in signatures) == 1

    write_html(report, tmp_path / "r.html")
    write_json(report, tmp_path / "r.json")
    assert (tmp_path / "r.html").stat().st_size < HTML_LIMIT_BYTES
    assert (tmp_path / "r.json").stat().st_size < JSON_LIMIT_BYTES
    assert len(json.loads((tmp_path / "r.json").read_text())["endpoints"]) == TEMPLATES

    context = browser.new_context(viewport={"width": 1360, "height": 900}, offline=True)
    try:
        page = context.new_page()
        watch = PageWatch(page, (tmp_path / "r.html").as_uri())
        page.goto((tmp_path / "r.html").as_uri())
        expect(page.locator("#endpoints h2")).to_have_text(f"Endpoints ({TEMPLATES})")
        endpoints = page.locator("details.endpoint")
        expect(endpoints).to_have_count(TEMPLATES)
        # The most important endpoints in full, the rest one line each with where to find them.
        expect(page.locator("details.endpoint table.fields")).to_have_count(DETAILED_ENDPOINTS)
        last = endpoints.last
        last.locator("summary").first.click()
        expect(last).to_contain_text("shadowtap report --endpoint")
        page.locator("#filter").fill("/shop/ko-kr/skirts/outdoor/")
        expect(page.locator("details.endpoint:not([hidden])")).to_have_count(5)
        assert watch.console_errors == [] and watch.foreign_requests == [] and watch.blocked == []
    finally:
        context.close()
