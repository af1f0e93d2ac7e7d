"""`shadowtap export --to har` read by real consumers: mitmdump (subprocess) and Chromium (Playwright).

Chromium loads the HAR through Playwright's ``route_from_har``, which answers the page's requests
from the HAR's entries: the page must see the recorded statuses, headers and bodies, including a
response that was gzip-encoded on the wire (HAR holds it decoded).
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest
from playwright.sync_api import sync_playwright

from shadowtap.cli import main
from shadowtap.recorder import Exchange, Request, Response, SyncTapeWriter, TapeOptions

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MITMDUMP = Path(sys.executable).parent / "mitmdump"
CHROMIUM: Final = "/usr/bin/chromium"
LAUNCH_ARGS: Final = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
PAGE = b"<!doctype html><title>shop</title><h1 id=h>Recorded shop</h1>"
ITEMS = b'{"items": [1, 2, 3]}'


def shop_tape(directory: Path) -> None:
    def exchange(i: int, target: str, headers: tuple[tuple[bytes, bytes], ...], body: bytes) -> Exchange:
        return Exchange(
            id=f"shop-{i}",
            started_at_ns=1_700_000_000_000_000_000 + i * 10**6,
            request=Request("GET", target, ((b"Host", b"shop.test"),), authority="shop.test"),
            primary=Response(200, "OK", headers, body),
        )

    zipped = gzip.compress(ITEMS)
    exchanges = [
        exchange(0, "/", ((b"Content-Type", b"text/html"), (b"Content-Length", b"%d" % len(PAGE))), PAGE),
        exchange(
            1,
            "/api/items?page=1",
            (
                (b"Content-Type", b"application/json"),
                (b"Content-Encoding", b"gzip"),
                (b"Content-Length", b"%d" % len(zipped)),
                (b"X-Recorded", b"yes"),
            ),
            zipped,
        ),
    ]
    with SyncTapeWriter(directory, TapeOptions(fsync="none")) as writer:
        writer.write_many(exchanges)


def test_chromium_serves_the_exported_har(tmp_path: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-system-deps.sh chromium")
    shop_tape(tmp_path / "tape")
    har = tmp_path / "shop.har"
    assert main(["export", str(tmp_path / "tape"), "--out", str(har)]) == 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            context = browser.new_context()
            # not_found="abort": anything not in the HAR fails instead of reaching a network.
            context.route_from_har(har, not_found="abort")
            page = context.new_page()
            response = page.goto("http://shop.test/")
            assert response is not None and response.status == 200
            assert page.inner_text("#h") == "Recorded shop"
            fetched = page.evaluate(
                """async () => {
                    const r = await fetch('/api/items?page=1');
                    return {status: r.status, header: r.headers.get('x-recorded'), json: await r.json()};
                }"""
            )
            assert fetched == {"status": 200, "header": "yes", "json": {"items": [1, 2, 3]}}
        finally:
            browser.close()


def test_mitmdump_reads_the_exported_har(tmp_path: Path) -> None:
    assert main(["import", str(FIXTURES / "mitmproxy" / "httpbin.mitm"), "--out", str(tmp_path / "tape")]) == 0
    har = tmp_path / "httpbin.har"
    assert main(["export", "--to", "har", str(tmp_path / "tape"), "--out", str(har)]) == 0
    result = subprocess.run(
        [str(MITMDUMP), "-n", "-r", str(har), "--set", f"confdir={tmp_path / 'conf'}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    requests = [line for line in result.stdout.splitlines() if line.startswith("127.0.0.1:0: ")]
    responses = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("<< ")]
    assert len(requests) == 14 and len(responses) == 14
    assert "GET http://127.0.0.1:8001/get?i=1" in requests[0]
    assert responses[0] == "<< 200 OK 226b" and any(r.startswith("<< 503") for r in responses)
