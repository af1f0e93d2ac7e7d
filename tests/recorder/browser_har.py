"""A real browser HAR: Chromium, driven by Playwright, records a page whose requests succeed, fail and
get aborted, against a local aiohttp server. The HAR importer's acceptance test reads what this writes.

Used two ways: the functional test records a fresh HAR at test time, and running this module writes
the committed fixture (``python -m tests.recorder.browser_har``, see tests/fixtures/README.md).
It never reaches past loopback: the "refused" request goes to a port that was just closed.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from aiohttp import WSMsgType, web

CHROMIUM: Final = "/usr/bin/chromium"
LAUNCH_ARGS: Final = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FIXTURE_DIR: Final = Path(__file__).resolve().parents[1] / "fixtures" / "chromium"
BINARY: Final = bytes(range(256))
GZIPPED_JSON: Final = b'{"gzipped": true}'
UPLOAD: Final = bytes([0, 255, 1, 128])

# Every request runs one after another, so the HAR lists them in this order (the blocked image
# comes from the markup, so it may land anywhere).
PAGE: Final = """<!doctype html><meta charset=utf-8><title>shop</title>
<img id=pixel src="/blocked/pixel.png">
<script>
window.results = (async () => {
  const out = {};
  out.get = (await fetch('/api/items?page=1')).status;
  const echo = await fetch('/api/echo', {method: 'POST', headers: {'content-type': 'application/json'},
                                         body: JSON.stringify({name: 'café', n: 1})});
  out.post = await echo.json();
  out.binary = (await (await fetch('/binary')).arrayBuffer()).byteLength;
  out.gzip = await (await fetch('/gzip')).json();
  const controller = new AbortController();
  const slow = fetch('/slow', {signal: controller.signal}).then(() => 'answered', e => e.name);
  setTimeout(() => controller.abort(), 100);
  out.aborted = await slow;
  out.refused = await fetch('http://127.0.0.1:CLOSED_PORT/nothing', {mode: 'no-cors'})
    .then(() => 'answered', e => e.name);
  out.blocked = await fetch('/blocked/api').then(() => 'answered', e => e.name);
  out.upload = await (await fetch('/upload', {method: 'POST', body: new Uint8Array([0, 255, 1, 128])})).text();
  out.form = await (await fetch('/form', {method: 'POST', body: new URLSearchParams({q: 'a b', lang: 'é'})})).text();
  const multipart = new FormData();
  multipart.append('name', 'v');
  multipart.append('file', new Blob(['hello'], {type: 'text/plain'}), 'h.txt');
  out.multipart = await (await fetch('/multipart', {method: 'POST', body: multipart})).text();
  out.websocket = await new Promise(resolve => {
    const ws = new WebSocket('ws://' + location.host + '/ws');
    ws.onopen = () => ws.send('ping');
    ws.onmessage = event => { ws.close(); resolve(event.data); };
  });
  out.redirected = (await fetch('/redirect')).url.endsWith('/api/items?from=redirect');
  return out;
})();
</script>
"""


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _app(closed_port: int, release: asyncio.Event) -> web.Application:
    async def index(_: web.Request) -> web.Response:
        return web.Response(text=PAGE.replace("CLOSED_PORT", str(closed_port)), content_type="text/html")

    async def items(_: web.Request) -> web.Response:
        return web.json_response({"items": [1, 2, 3]})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(await request.json())

    async def binary(_: web.Request) -> web.Response:
        return web.Response(body=BINARY, content_type="application/octet-stream")

    async def gzipped(_: web.Request) -> web.Response:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(body=gzip.compress(GZIPPED_JSON, mtime=0), headers=headers)

    async def slow(_: web.Request) -> web.Response:
        # The page aborts this fetch; the handler just waits for the server to stop.
        await release.wait()
        return web.Response(text="too late")

    async def accept(request: web.Request) -> web.Response:
        return web.Response(text=f"got {len(await request.read())} bytes")

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(f"pong:{message.data}")
        return ws

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound("/api/items?from=redirect")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/api/items", items)
    app.router.add_post("/api/echo", echo)
    app.router.add_get("/binary", binary)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/slow", slow)
    for path in ("/upload", "/form", "/multipart"):
        app.router.add_post(path, accept)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/redirect", redirect)
    return app


@contextmanager
def serving() -> Iterator[str]:
    """The page's server on 127.0.0.1 in a thread of its own; yields its base URL."""
    loop = asyncio.new_event_loop()
    release = asyncio.Event()
    runner = web.AppRunner(_app(_closed_port(), release), shutdown_timeout=1.0)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, name="browser-har-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(release.set)
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def record(har_path: Path, *, content: str = "embed") -> dict[str, Any]:
    """Record the page's traffic into ``har_path`` with Chromium; returns what the page saw.

    ``content`` is Playwright's ``record_har_content``: ``embed`` puts bodies in the HAR, ``attach``
    writes each body to a file beside it (named in ``_file``).
    """
    from playwright.sync_api import Route, sync_playwright

    def block(route: Route) -> None:
        # An image blocked the way an ad blocker does; an API call failed as by a network error.
        route.abort("blockedbyclient" if route.request.resource_type == "image" else "failed")

    with serving() as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            context = browser.new_context(record_har_path=har_path, record_har_content=content)  # type: ignore[arg-type]
            context.route("**/blocked/**", block)
            page = context.new_page()
            page.goto(base + "/")
            results: dict[str, Any] = page.evaluate("window.results")
            # Closing the context is what writes the HAR.
            context.close()
        finally:
            browser.close()
    return results


def versions() -> str:
    from importlib.metadata import version

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            return f"Playwright {version('playwright')}, Chromium {browser.version}"
        finally:
            browser.close()


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURE_DIR
    out.mkdir(parents=True, exist_ok=True)
    print(record(out / "playwright.har"))
    (out / "attach").mkdir(exist_ok=True)
    print(record(out / "attach" / "playwright.har", content="attach"))
    print(versions())
