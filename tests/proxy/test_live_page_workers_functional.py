"""The live page with ``shadowtap proxy --workers 2`` (real processes, an admin token) in a real
headless Chromium: one view of both workers' mirroring, not two.

Traffic reaches both workers; the page shows the mirrored count the two workers' own ``/stats``
add up to, and says "2 workers". The kill switch thrown from the page switches mirroring off in
each worker (each worker's own ``/stats`` says so, and the copies of later traffic are counted
``disabled`` in both). A worker that stops answering is named on the page, never a hang, and its
figures are left out. A screenshot goes to test-artifacts/.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from playwright.sync_api import Browser, expect

from tests.proxy.test_live_page_functional import (
    ARTIFACTS,
    TOKEN,
    PageWatch,
    Upstreams,
    admin_get,
    browser,
)

__all__ = ["browser"]  # the fixture, imported to be used here

_WAIT_MS: Final = 45_000
#: Requests in a batch, and the most sent while waiting for the kernel to give both workers some.
_BATCH: Final = 10
_MOST: Final = 400
_POLLS: Final = 300


@contextlib.contextmanager
def workers_proxy(primary: str, shadow: str, *extra: str) -> Iterator[tuple[str, str]]:
    """``shadowtap proxy --workers 2`` with an admin token: its proxy and admin URLs."""
    process = subprocess.Popen(
        [sys.executable, "-m", "shadowtap", "proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
         "--workers", "2", "--admin-token-env", "LIVE_PAGE_TOKEN", "--primary", primary, "--shadow", f"v2={shadow}",
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "LIVE_PAGE_TOKEN": TOKEN},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"listening on (\S+) admin (\S+) workers 2", line)
        assert match, line + (process.stderr.read() if process.stderr else "")
        yield match.group(1), match.group(2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[str, str]]:
    upstreams = Upstreams()
    try:
        # (the live differ is idle by default; the test waits for it on a machine shared with others)
        tape = ("--tape", str(tmp_path / "tape"), "--set", "live.priority=normal")
        with workers_proxy(upstreams.primary.url, upstreams.v2.url, *tape) as urls:
            yield urls
    finally:
        upstreams.close()


def workers_stats(admin: str) -> list[dict[str, Any]]:
    """Each worker's own ``/stats``, asked of its own admin server (not the parent's merge)."""
    urls = [entry["admin"] for entry in admin_get(admin, "/stats")["workers"]]
    assert len(urls) == 2, urls
    return [admin_get(url, "/stats") for url in urls]


def traffic_through_both(proxy_url: str, admin: str, first: int) -> int:
    """Batches of requests, a connection each, until each worker has served some since ``first``
    was sent; the next request number."""
    served_before = [w["server"]["requests"] for w in workers_stats(admin)]
    sent = first
    while sent - first < _MOST:
        for i in range(sent, sent + _BATCH):
            with urllib.request.urlopen(f"{proxy_url}/items/{i}", timeout=10) as response:  # Connection: close
                assert response.status == 200
        sent += _BATCH
        served = [w["server"]["requests"] for w in workers_stats(admin)]
        if all(now > before for now, before in zip(served, served_before, strict=True)):
            return sent
    raise AssertionError(f"{_MOST} connections and one worker served none of them: {served_before} -> {served}")


def wait_for(read: Callable[[], Any], done: Callable[[Any], bool], what: str) -> Any:
    """``read()`` once ``done`` says so (a copy is counted as its request ends, maybe just after the
    client has its answer), asked at most a bounded number of times."""
    for _ in range(_POLLS):
        value = read()
        if done(value):
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: still {value}")


def shown(name: str, count: int) -> re.Pattern[str]:
    """An outcome's count as the page's outcomes cell lists it ("mirrored 10, ok 10")."""
    return re.compile(rf"(^|, ){name} {count}(,|$)")


def outcome(worker: dict[str, Any], name: str) -> int:
    return int(worker["mirror"]["v2"]["outcomes"].get(name, 0))


def test_the_live_page_shows_both_workers_mirroring_as_one_and_the_kill_switch_reaches_both(
    browser: Browser, proxy: tuple[str, str]
) -> None:
    proxy_url, admin = proxy
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    watch = PageWatch(page, admin)
    stopped: list[int] = []
    try:
        response = page.goto(f"{admin}/live")
        assert response is not None and response.status == 200
        expect(page.locator("#token-box")).to_be_visible(timeout=_WAIT_MS)
        page.fill("#token", TOKEN)
        page.click("#token-save")
        row = page.locator('#mirroring tr[data-shadow="v2"]')
        expect(row.locator("td").nth(1)).to_have_text("on", timeout=_WAIT_MS)
        expect(page.locator("#workers-note")).to_have_text("— 2 workers", timeout=_WAIT_MS)

        sent = traffic_through_both(proxy_url, admin, 0)
        per_worker = wait_for(
            lambda: [outcome(w, "mirrored") for w in workers_stats(admin)],
            lambda counts: sum(counts) == sent,
            f"the workers' mirrored counts adding up to the {sent} requests sent",
        )
        assert all(n > 0 for n in per_worker), per_worker
        # The page's figure is the two workers' added up (each GET mirrored: sampling is 100%).
        outcomes = row.locator("td").nth(4)
        expect(outcomes).to_have_text(shown("mirrored", sent), timeout=_WAIT_MS)
        expect(row).to_contain_text("closed")
        merged = admin_get(admin, "/stats")
        assert merged["mirror"]["v2"]["outcomes"]["mirrored"] == sent
        assert merged["mirror"]["v2"]["breakers"] == {"0": "closed", "1": "closed"}
        assert merged["merged"] == {"workers": 2, "answered": [0, 1], "unanswered": []}
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "live-page-workers.png"), full_page=True)

        # The kill switch, from the page: mirroring off in each worker.
        kill = page.locator("#kill")
        kill.click()
        expect(kill).to_have_text("Resume mirroring", timeout=_WAIT_MS)
        assert [w["flags"]["mirroring"] for w in workers_stats(admin)] == [False, False]
        expect(row.locator("td").nth(1)).to_have_text("off", timeout=_WAIT_MS)
        before = workers_stats(admin)
        more = traffic_through_both(proxy_url, admin, sent)
        after = wait_for(
            lambda: workers_stats(admin),
            lambda stats: sum(outcome(w, "disabled") for w in stats) == more - sent,
            "every later request counted disabled",
        )
        for old, new in zip(before, after, strict=True):
            assert outcome(new, "mirrored") == outcome(old, "mirrored")  # no copy since the switch
            assert outcome(new, "disabled") > outcome(old, "disabled")
        expect(outcomes).to_have_text(shown("disabled", more - sent), timeout=_WAIT_MS)
        expect(outcomes).to_have_text(shown("mirrored", sent))
        kill.click()
        expect(kill).to_have_text("Stop mirroring", timeout=_WAIT_MS)
        assert [w["flags"]["mirroring"] for w in workers_stats(admin)] == [True, True]

        # A worker that does not answer is named, its figures left out; the page keeps updating.
        silent = after[1]
        os.kill(silent["pid"], signal.SIGSTOP)
        stopped.append(silent["pid"])
        note = page.locator("#workers-note")
        expect(note).to_contain_text("1 of 2 workers answered (worker 1: ", timeout=_WAIT_MS)
        expect(outcomes).to_have_text(shown("mirrored", outcome(after[0], "mirrored")), timeout=_WAIT_MS)
        os.kill(stopped.pop(), signal.SIGCONT)
        expect(note).to_have_text("— 2 workers", timeout=_WAIT_MS)

        assert watch.blocked == [], watch.blocked
        assert all(url.startswith(admin + "/") for url in watch.requests), watch.requests
        assert watch.console_errors == [], watch.console_errors
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        context.close()


def dead_port_url() -> str:
    """A loopback URL nothing listens on: every copy sent there fails to connect."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_the_live_page_shows_the_workers_breakers_and_a_trip_merged(browser: Browser) -> None:
    upstreams = Upstreams()
    rule = "shadow.errors>20%/2s;min=5"
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    try:
        with workers_proxy(upstreams.primary.url, dead_port_url(), "--trip", rule) as (proxy_url, admin):
            page = context.new_page()
            watch = PageWatch(page, admin)
            page.goto(f"{admin}/live")
            expect(page.locator("#token-box")).to_be_visible(timeout=_WAIT_MS)
            page.fill("#token", TOKEN)
            page.click("#token-save")
            expect(page.locator("#workers-note")).to_have_text("— 2 workers", timeout=_WAIT_MS)

            sent = 0
            while admin_get(admin, "/flags")["shadows"]["v2"]["tripped"] != rule:
                assert sent < 20 * _MOST, f"{sent} requests and the rule never tripped"
                for i in range(sent, sent + _BATCH):
                    with urllib.request.urlopen(f"{proxy_url}/items/{i}", timeout=10) as response:
                        assert response.status == 200  # the primary's answer, whatever the shadow does
                sent += _BATCH
            # Mirroring is off now: no copy is sent, so no breaker moves and no rule changes state.
            workers = workers_stats(admin)
            breakers = [w["mirror"]["v2"]["breaker"] for w in workers]
            not_closed = [b for b in breakers if b != "closed"]
            tripped_in = [str(i) for i, w in enumerate(workers) if w["trips"][0]["state"] == "tripped"]
            assert tripped_in, [w["trips"] for w in workers]

            row = page.locator('#mirroring tr[data-shadow="v2"]')
            expect(row.locator("td").nth(1)).to_have_text(f"off (tripped: {rule})", timeout=_WAIT_MS)
            breaker = ("open" if "open" in not_closed else not_closed[0]) if not_closed else "closed"
            if not_closed:
                breaker += f" in {len(not_closed)} of 2 workers"
            opened = sum(w["mirror"]["v2"]["breaker_opened"] for w in workers)
            breaker += f" (opened {opened}×)" if opened else ""
            expect(row.locator("td").nth(3)).to_have_text(breaker, timeout=_WAIT_MS)
            trip = page.locator("#mirroring ul.trips li")
            expect(trip).to_have_count(1)  # one rule on one shadow, however many workers judge it
            expect(trip).to_contain_text(f"{rule} on v2: tripped")
            expect(trip).to_contain_text(f"tripped in worker {', '.join(tripped_in)}")
            page.screenshot(path=str(ARTIFACTS / "live-page-workers-tripped.png"), full_page=True)
            assert watch.blocked == [] and watch.console_errors == [], (watch.blocked, watch.console_errors)
    finally:
        context.close()
        upstreams.close()
