"""The HTML report in a real headless browser (Debian's Chromium driven by Playwright).

Opens the file over file://, checks the overview renders, expands an endpoint and a signature, sees
the highlighted paths, proves hostile bodies stay inert and that the page never touches the network,
and saves a screenshot to test-artifacts/ for a human to look at.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Route, expect, sync_playwright

from shadowtap.differ.reports import write_html
from shadowtap.recorder.model import Response
from tests.differ.report_fixtures import SECRETS, rich_report
from tests.differ.test_reports_html import many_pairs_report

CHROMIUM: Final = "/usr/bin/chromium"
ARTIFACTS: Final = Path(__file__).resolve().parents[2] / "test-artifacts"
LAUNCH_ARGS: Final = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-system-deps.sh chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class PageWatch:
    """Everything the page tried to do that a self-contained report must not."""

    def __init__(self, page: Page, own_url: str) -> None:
        self.own_url = own_url
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.console_errors: list[str] = []
        page.on("request", self._on_request)
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.console_errors.append(f"pageerror: {exc}"))
        page.route("**/*", self._route)

    def _on_request(self, request: Request) -> None:
        self.requests.append(request.url)

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _route(self, route: Route) -> None:
        if route.request.url == self.own_url:
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    @property
    def foreign_requests(self) -> list[str]:
        return [url for url in self.requests if url != self.own_url]


@pytest.fixture
def report_page(browser: Browser, tmp_path: Path) -> Iterator[tuple[Page, PageWatch]]:
    path = tmp_path / "report.html"
    write_html(rich_report(), path)
    context = browser.new_context(viewport={"width": 1360, "height": 900}, offline=True)
    page = context.new_page()
    watch = PageWatch(page, path.as_uri())
    page.goto(path.as_uri())
    try:
        yield page, watch
    finally:
        context.close()


def test_report_renders_expands_highlights_and_stays_offline(report_page: tuple[Page, PageWatch]) -> None:
    page, watch = report_page
    expect(page).to_have_title("shadowtap diff: FAIL (primary vs v2)")
    for card, number in {
        "pairs": "1300",
        "compared": "1280",
        "equal": "1015",
        "differing": "260",
        "noise-suppressed": "1110",
        "errors": "7",
        "verdict": "FAIL",
    }.items():
        expect(page.locator(f'[data-card="{card}"] .num')).to_have_text(number)

    endpoints = page.locator("details.endpoint")
    expect(endpoints).to_have_count(7)
    expect(endpoints.first).to_have_attribute("data-endpoint", "GET /users/{id}")
    # The endpoints failing the gate are open from the start; the others wait for a click.
    users = endpoints.first
    expect(users).to_have_attribute("open", "")
    expect(users.locator("table.fields")).to_be_visible()
    expect(users.locator("table.fields")).to_contain_text("body.orders[*].total")
    search = page.locator('details.endpoint[data-endpoint="GET /search"]')
    expect(search).not_to_have_attribute("open", "")
    expect(search.locator("table.fields")).not_to_be_visible()
    search.locator("summary").first.click()
    expect(search.locator("table.fields")).to_be_visible()

    signature = page.locator("#sig-sig-removed")
    expect(signature.locator("mark.hl").first).not_to_be_visible()
    signature.locator(":scope > summary").click()
    # The baseline still has the removed field (highlighted); the candidate has the changed total.
    baseline, candidate = signature.locator(".side").nth(0), signature.locator(".side").nth(1)
    expect(baseline.locator('mark.hl[title="body.email"]')).to_be_visible()
    expect(baseline.locator('mark.hl[title="body.email"]')).to_contain_text("ann@example.com")
    expect(candidate.locator('mark.hl[title="body.orders[1].total"]')).to_have_text('"total": 26')
    expect(candidate.locator('mark.absent[title="body.email"]')).to_have_text('"email": (absent)')
    expect(candidate).to_contain_text("decoded from gzip")
    expect(signature.locator("table.paths")).to_contain_text("(absent)")

    # Expanding a signature also shows the request, with its secrets redacted; headers are folded
    # behind the bodies until asked for.
    request_block = signature.locator(".request")
    expect(request_block).to_contain_text("/users/8?api_key=[redacted]")
    request_headers = request_block.locator("details.hdrs")
    expect(request_headers.locator("table.headers")).not_to_be_visible()
    request_headers.locator("summary").click()
    expect(request_headers.locator("table.headers")).to_be_visible()
    expect(request_headers).to_contain_text("Bearer [redacted]")
    page_html = page.content()
    for secret in SECRETS:
        assert secret not in page_html

    # Hostile bodies are text, not markup: no script ran, no image element was created from them.
    page.locator("#expand-all").click()
    expect(page.locator("details[open]")).to_have_count(page.locator("details").count())
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img").count() == 0
    expect(page.locator("#sig-sig-status .side").nth(1)).to_contain_text('<img src="http://127.0.0.1:9/x.png"')

    # The page's own script works under its Content-Security-Policy (no console errors) ...
    page.locator("#filter").fill("orders")
    expect(page.locator("details.endpoint:visible")).to_have_count(2)
    page.locator("#filter").fill("")
    page.locator("#hide-suppressed").check()
    expect(page.locator("#sig-sig-updated")).to_be_hidden()
    page.locator("#hide-suppressed").uncheck()
    assert watch.console_errors == []
    # ... and the policy itself (not just the offline context) refuses any script reaching out.
    violated = page.evaluate(
        """() => new Promise((resolve) => {
            document.addEventListener('securitypolicyviolation', (e) => resolve(e.effectiveDirective));
            fetch('http://127.0.0.1:9/beacon').catch(() => {});
        })"""
    )
    assert violated == "connect-src"
    watch.console_errors.clear()  # the violation we just provoked is logged as a console error

    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#collapse-all").click()
    page.locator("details.endpoint").first.locator("summary").first.click()
    page.locator("#sig-sig-removed > summary").click()
    shot = ARTIFACTS / "html-report.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nHTML report screenshot: {shot}")
    assert shot.stat().st_size > 10_000

    assert watch.console_errors == []
    assert watch.foreign_requests == []
    assert watch.blocked == []


def test_deep_link_to_a_signature_opens_it_and_its_endpoint(browser: Browser, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    write_html(rich_report(), path)
    context = browser.new_context(offline=True)
    try:
        page = context.new_page()
        # GET /search passes the gate: closed until the link opens it.
        page.goto(path.as_uri() + "#sig-sig-text")
        expect(page.locator("#sig-sig-text")).to_have_attribute("open", "")
        expect(page.locator("details.endpoint", has=page.locator("#sig-sig-text"))).to_have_attribute("open", "")
        expect(page.locator("#sig-sig-text .side").nth(1).locator("mark.hl").first).to_be_visible()
        # sig-type sampled the exchange sig-currency shows in full: it links there, and the link opens it.
        page.locator("#sig-sig-type > summary").click()
        link = page.locator("#sig-sig-type .seen a")
        expect(link).to_have_text("POST /orders removed body.currency")
        anchor = link.get_attribute("href")
        assert anchor == "#sig-sig-currency"
        page.locator("#sig-sig-currency").evaluate("(d) => { d.open = false; }")
        link.click()
        expect(page.locator("#sig-sig-currency")).to_have_attribute("open", "")
        expect(page.locator(f"{anchor} .side").nth(1).locator('mark.hl[title="body.total"]')).to_be_visible()
    finally:
        context.close()


def test_a_change_deep_in_a_long_body_is_scrolled_into_view(browser: Browser, tmp_path: Path) -> None:
    report = rich_report()
    search = report.endpoints[3]
    (signature,) = search.signatures
    (example,) = signature.examples
    items = [{"id": i, "name": f"item {i}"} for i in range(300)]
    changed = [dict(item, name="renamed") if item["id"] == 250 else item for item in items]
    long_example = dataclasses.replace(
        example,
        baseline=Response(200, "OK", ((b"Content-Type", b"application/json"),), json.dumps(items).encode()),
        candidate=Response(200, "OK", ((b"Content-Type", b"application/json"),), json.dumps(changed).encode()),
        paths=("body[250].name",),
    )
    long_search = dataclasses.replace(search, signatures=(dataclasses.replace(signature, examples=(long_example,)),))
    endpoints = tuple(long_search if e is search else e for e in report.endpoints)
    path = tmp_path / "report.html"
    write_html(dataclasses.replace(report, endpoints=endpoints), path)
    context = browser.new_context(viewport={"width": 1360, "height": 900}, offline=True)
    try:
        page = context.new_page()
        page.goto(path.as_uri())
        page.locator('details.endpoint[data-endpoint="GET /search"] > summary').click()
        page.locator("#sig-sig-text > summary").click()
        for side in (0, 1):
            mark = page.locator("#sig-sig-text .side").nth(side).locator('mark.hl[title="body[250].name"]')
            expect(mark).to_have_count(1)
            # The body box scrolled itself so that the change shows inside it.
            shown = mark.evaluate(
                """(el) => {
                    const pre = el.closest('pre'), box = pre.getBoundingClientRect(), at = el.getBoundingClientRect();
                    return pre.scrollTop > 0 && at.top >= box.top && at.bottom <= box.bottom;
                }"""
            )
            assert shown
    finally:
        context.close()


def test_a_few_hundred_pairs_open_what_fails_the_gate_and_fold_the_rest(browser: Browser, tmp_path: Path) -> None:
    report = many_pairs_report()
    failing = {s.endpoint for e in report.endpoints for s in e.signatures if s.id in report.verdict.failing_signatures}
    path = tmp_path / "report.html"
    write_html(report, path)
    assert path.stat().st_size < 200_000
    context = browser.new_context(viewport={"width": 1360, "height": 900}, offline=True)
    try:
        page = context.new_page()
        watch = PageWatch(page, path.as_uri())
        page.goto(path.as_uri())
        endpoints = page.locator("details.endpoint")
        expect(endpoints).to_have_count(20)
        opened = page.locator("details.endpoint[open]")
        expect(opened).to_have_count(len(failing))
        names = {opened.nth(i).get_attribute("data-endpoint") for i in range(opened.count())}
        assert names == failing
        failing_one = opened.first
        expect(failing_one.locator("table.fields")).to_be_visible()
        expect(failing_one.locator("details.signature > summary").first).to_contain_text("fails the gate")
        passing = page.locator("details.endpoint:not([open])").first
        assert passing.get_attribute("data-endpoint") not in failing
        expect(passing.locator("table.fields")).not_to_be_visible()
        # A signature shows its example's bodies side by side; the headers wait behind a fold.
        signature = failing_one.locator("details.signature").first
        signature.locator(":scope > summary").click()
        side = signature.locator(".side").nth(1)
        expect(side.locator("pre.body")).to_be_visible()
        expect(side.locator("details.hdrs > summary")).to_have_text("8 headers")
        expect(side.locator("table.headers")).not_to_be_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "html-report-many-pairs.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\nHTML report (300 differing pairs) screenshot: {shot}")
        assert shot.stat().st_size > 10_000
        assert watch.console_errors == [] and watch.foreign_requests == [] and watch.blocked == []
    finally:
        context.close()
