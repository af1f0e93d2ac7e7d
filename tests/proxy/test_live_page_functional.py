"""The live page in a real headless browser (Debian's Chromium driven by Playwright) against a real
proxy process (``shadowtap proxy`` with an admin token) and real upstreams.

The page asks for the token, shows the planted change as traffic flows, highlights it in an example
side by side, keeps a recorded ``<script>`` inert, throws the kill switch (``/flags`` says mirroring
is off), never sends a request anywhere but the admin server, and breaks no rule of its
Content-Security-Policy. A screenshot goes to test-artifacts/.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Route, expect, sync_playwright

from tests.proxy.test_live_functional import Service

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
TOKEN: Final = "live-page-test-token"
#: Bounds on waiting for the page (never asserted as durations).
_WAIT_MS: Final = 45_000


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


class Upstreams:
    """The primary (v1) and the shadow (v2) on an event loop of their own, in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="upstreams", daemon=True)
        self.thread.start()
        self.primary = self._run(Service(1, "primary-host").start())
        self.v2 = self._run(Service(2, "v2-host").start())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self._run(self.primary.close())
        self._run(self.v2.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[str, str]]:
    upstreams = Upstreams()
    process = subprocess.Popen(
        [sys.executable, "-m", "shadowtap", "proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
         "--admin-token-env", "LIVE_PAGE_TOKEN", "--primary", upstreams.primary.url,
         "--shadow", f"v2={upstreams.v2.url}", "--tape", str(tmp_path / "tape"),
         # (idle by default; the test waits for it on a machine shared with other tests)
         "--set", "live.priority=normal"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "LIVE_PAGE_TOKEN": TOKEN},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"listening on (\S+) admin (\S+)", line)
        assert match, line + (process.stderr.read() if process.stderr else "")
        yield match.group(1), match.group(2)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=60)
        finally:
            upstreams.close()


def admin_get(admin: str, path: str) -> Any:
    request = urllib.request.Request(admin + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def send_traffic(proxy_url: str, count: int) -> None:
    for i in range(count):
        with urllib.request.urlopen(f"{proxy_url}/items/{i}", timeout=10) as response:
            assert response.status == 200


class PageWatch:
    """Every request the page made, those sent anywhere but the admin server (aborted), and errors
    (a Content-Security-Policy violation is one)."""

    def __init__(self, page: Page, admin: str) -> None:
        self.admin = admin
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
        if message.type == "error" and "401" not in message.text:  # the token's first ask is expected
            self.console_errors.append(message.text)

    def _route(self, route: Route) -> None:
        if route.request.url.startswith(self.admin + "/"):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()


def test_live_page_shows_the_change_and_throws_the_kill_switch(browser: Browser, proxy: tuple[str, str]) -> None:
    proxy_url, admin = proxy
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    watch = PageWatch(page, admin)
    try:
        response = page.goto(f"{admin}/live")
        assert response is not None and response.status == 200
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "unsafe" not in policy
        expect(page).to_have_title("shadowtap live")

        # The admin API has a token: the page asks for it, and keeps it for the tab.
        expect(page.locator("#token-box")).to_be_visible(timeout=_WAIT_MS)
        page.fill("#token", TOKEN)
        page.click("#token-save")
        expect(page.locator("#token-box")).to_be_hidden()
        expect(page.locator("#mirroring")).to_contain_text("v2", timeout=_WAIT_MS)

        send_traffic(proxy_url, 30)
        endpoints = page.locator("#endpoints tbody tr")
        expect(endpoints.first).to_contain_text("GET /items/{id}", timeout=_WAIT_MS)
        expect(endpoints.first).to_contain_text("high")
        signatures = page.locator("#signatures tbody tr")
        expect(signatures.filter(has_text="body.price").first).to_contain_text("int->str")
        example = page.locator("#example")
        expect(example.locator("mark").filter(has_text='"price"').first).to_be_visible()
        expect(example).to_contain_text("GET /items/")
        # The recorded body's script is shown as text, and never ran.
        expect(example).to_contain_text("<script>document.title='owned'</script>")
        expect(page).to_have_title("shadowtap live")
        assert page.evaluate("document.querySelectorAll('#example script').length") == 0

        # Updates keep coming as traffic flows: the counts follow.
        send_traffic(proxy_url, 10)
        expect(endpoints.first.locator("td").nth(2)).to_have_text("40", timeout=_WAIT_MS)
        assert float(page.evaluate("document.body.dataset.renderMs")) >= 0.0

        # The latency comparison: no verdict below the minimum of pairs, and says so; past it, the
        # percentiles side by side (primary -> shadow, ratio) and a verdict.
        latency = page.locator("#latency tbody tr")
        expect(latency.first).to_contain_text("GET /items/{id}", timeout=_WAIT_MS)
        expect(latency.first).to_contain_text("too few samples (40 of 50)")
        send_traffic(proxy_url, 20)
        expect(endpoints.first.locator("td").nth(2)).to_have_text("60", timeout=_WAIT_MS)
        expect(latency.first).not_to_contain_text("too few samples", timeout=_WAIT_MS)
        side_by_side = re.compile(r"[\d.]+ → [\d.]+ ms \([\d.]+×\)")
        for column in (2, 3, 4):  # p50, p90, p99
            expect(latency.first.locator("td").nth(column)).to_contain_text(side_by_side)
        expect(latency.first.locator("td").nth(5)).to_contain_text(
            re.compile("slower|faster|no significant difference")
        )

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "live-page.png"), full_page=True)

        # The kill switch, from the page: mirroring stops.
        kill = page.locator("#kill")
        expect(kill).to_have_text("Stop mirroring")
        kill.click()
        expect(kill).to_have_text("Resume mirroring", timeout=_WAIT_MS)
        assert admin_get(admin, "/flags")["mirroring"] is False
        expect(page.locator("#mirroring")).to_contain_text("off")
        kill.click()
        expect(kill).to_have_text("Stop mirroring", timeout=_WAIT_MS)
        assert admin_get(admin, "/flags")["mirroring"] is True

        assert watch.blocked == [], watch.blocked
        assert all(url.startswith(admin + "/") for url in watch.requests), watch.requests
        assert watch.console_errors == [], watch.console_errors
    finally:
        context.close()
