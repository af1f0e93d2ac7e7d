"""A deploy that changes nothing passes the gate over HTTP/2 too, whatever HTTP each copy speaks.

One JSON service, served twice over: by a plain HTTP/2 server (h2c, tests/wire/h2peer.py, which also
sends a trailer) and by aiohttp over HTTP/1.1 (which adds Content-Length, Date and Server, in its own
header case). The primary and the ``secondary`` are h2c copies; the candidate is the HTTP/1.1 copy
(an ``http://`` shadow of an HTTP/2 primary). Its answers carry the noise real ones do: the time,
a request id in the body and in a header, an object whose keys come in a random order. The real
proxy (a subprocess) takes the calls from an HTTP/2 client (h2, prior knowledge) and from an HTTP/1.1
client (aiohttp: the proxy turns them into HTTP/2 streams to the primary), records a tape, and
``shadowtap diff`` and the live ``/diff`` must find nothing. A candidate that changed one field's
type still fails on exactly that.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shadowtap.recorder import TapeReader
from tests.wire.h2peer import H2TestClient, H2TestServer, Responder

pytestmark = pytest.mark.slow

LINE_RE = re.compile(r"listening on (\S+) admin (\S+)")
_WAIT_S = 60.0
Header = tuple[bytes, bytes]


def answer(method: str, path: str, body: bytes, planted: bool) -> tuple[int, dict[str, str], bytes]:
    """The service: (status, headers, body) for one request, from the request alone but for noise."""
    noise = {"served_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "request_id": str(uuid.uuid4())}
    headers = {"content-type": "application/json", "x-request-id": noise["request_id"], "x-api-version": "1"}
    route, _, query = path.partition("?")
    if method == "GET" and route.startswith("/orders/"):
        n = int(route.rsplit("/", 1)[1])
        if n >= 1000:
            return 404, headers, json.dumps({"error": f"no order {n}", **noise}).encode()
        labels = {"customer": f"c-{n % 3}", "channel": "web", "region": "eu-west", "tier": "gold"}
        keys = random.sample(list(labels), len(labels))
        items = [{"sku": f"s-{n}-{i}", "qty": str(i + 1) if planted and n % 2 else i + 1} for i in range(n % 3 + 1)]
        document = {"id": n, "items": items, "labels": {k: labels[k] for k in keys}, "total": n * 2.5, **noise}
        return 200, headers, json.dumps(document).encode()
    if method == "POST" and route == "/orders":
        sent = json.loads(body)
        return 201, headers, json.dumps({"accepted": sent, "count": len(sent.get("lines", [])), **noise}).encode()
    if method == "GET" and route == "/search":
        return 200, {**headers, "content-type": "text/plain; charset=utf-8"}, f"results for {query}\n".encode()
    return 404, headers, b'{"error": "no route"}'


async def start_h2(planted: bool) -> H2TestServer:
    async def handler(headers: list[Header], body: bytes, trailers: list[Header], reply: Responder) -> None:
        fields = dict(headers)
        status, out, data = answer(fields[b":method"].decode(), fields[b":path"].decode(), body, planted)
        reply.head(status, [(k.encode(), v.encode()) for k, v in out.items()])
        await reply.data(data)
        reply.trailers([(b"x-checksum", b"%d" % len(data))])  # trailers only HTTP/2 carries here

    return await H2TestServer(handler).start()


async def start_h1(planted: bool) -> tuple[web.AppRunner, int]:
    async def handler(request: web.Request) -> web.Response:
        status, out, data = answer(request.method, request.path_qs, await request.read(), planted)
        out = {"Content-Type": out.pop("content-type"), "X-Request-Id": out.pop("x-request-id"), **out}
        response = web.Response(status=status, body=data, headers=out)
        response.headers["Date"] = formatdate(usegmt=True)
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def services() -> AsyncIterator[dict[str, str]]:
    """primary and secondary (h2c), v1 (the same over HTTP/1.1) and v2 (HTTP/1.1, one change)."""
    primary, secondary = await start_h2(False), await start_h2(False)
    v1, v1_port = await start_h1(False)
    v2, v2_port = await start_h1(True)
    try:
        yield {
            "primary": f"h2c://127.0.0.1:{primary.port}",
            "secondary": f"h2c://127.0.0.1:{secondary.port}",
            "v1": f"http://127.0.0.1:{v1_port}",
            "v2": f"http://127.0.0.1:{v2_port}",
        }
    finally:
        await primary.close()
        await secondary.close()
        await v1.cleanup()
        await v2.cleanup()


def requests(i: int) -> list[tuple[str, str, bytes]]:
    order = json.dumps({"customer": f"c-{i}", "lines": [{"sku": "a", "qty": i}]}).encode()
    return [
        ("GET", f"/orders/{i}", b""),
        ("GET", f"/orders/{1000 + i}", b""),
        ("POST", "/orders", order),
        ("GET", f"/search?q=lamp+{i}", b""),
    ]


async def drive_h2(url: str) -> int:
    port = int(url.rsplit(":", 1)[1])
    client = await H2TestClient.connect(port)
    sent = 0
    try:
        for i in range(8):
            for method, path, body in requests(i):
                headers = [(b"content-type", b"application/json")] if body else []
                response = await client.response(client.request(method, path, headers, body))
                assert response.status in (200, 201, 404), (path, response.status)
                sent += 1
    finally:
        await client.close()
    return sent


async def drive_h1(url: str) -> int:
    sent = 0
    async with aiohttp.ClientSession() as client:
        for i in range(8):
            for method, path, body in requests(i):
                headers = {"Content-Type": "application/json"} if body else {}
                async with client.request(method, url + path, data=body or None, headers=headers) as response:
                    await response.read()
                    assert response.status in (200, 201, 404), (path, response.status)
                sent += 1
    return sent


async def record(services: dict[str, str], shadows: tuple[str, ...], client: str, tape: Path) -> tuple[int, Any]:
    shadow_args = [arg for name in shadows for arg in ("--shadow", f"{name}={services[name]}")]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowtap", "proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
        "--primary", services["primary"], *shadow_args, "--tape", str(tape), "--set", "live.priority=normal",
        "--route", "path=/orders;methods=POST;mirror_methods=POST",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), _WAIT_S)).decode()
        match = LINE_RE.search(line)
        assert match, line
        proxy, admin = match.groups()
        sent = await (drive_h2(proxy) if client == "h2" else drive_h1(proxy))
        async with aiohttp.ClientSession() as session:
            loop = asyncio.get_running_loop()
            end = loop.time() + _WAIT_S
            while True:
                async with session.get(f"{admin}/diff?since=10m") as resp:
                    assert resp.status == 200, await resp.text()
                    live = await resp.json()
                if live["compared"] >= sent or loop.time() > end:
                    break
                await asyncio.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), _WAIT_S)
    assert process.returncode == 0, err.decode()
    return sent, live


def diff(tape: Path, candidate: str, report: Path) -> tuple[subprocess.CompletedProcess[str], Any]:
    result = subprocess.run(
        [sys.executable, "-m", "shadowtap", "diff", str(tape), "--candidate", candidate, "--json", str(report)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    return result, json.loads(report.read_text()) if report.exists() else {}


def unsuppressed(report: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    return {
        (e["endpoint"], s["path"], s["kind"], s["transition"])
        for e in report["endpoints"]
        for s in e["signatures"]
        if not s["suppressed"]
    }


@pytest.mark.timeout(240)
@pytest.mark.parametrize("client", ["h2", "http1"])
@pytest.mark.parametrize("shadows", [("v1", "secondary"), ("v1",)], ids=["with-secondary", "without-secondary"])
async def test_an_http1_copy_of_an_http2_service_passes_the_gate(
    services: dict[str, str], tmp_path: Path, client: str, shadows: tuple[str, ...]
) -> None:
    tape = tmp_path / "tape"
    sent, live = await record(services, shadows, client, tape)
    # What crossed: the client's HTTP, HTTP/2 from the primary, HTTP/1.1 from the candidate.
    exchanges = list(TapeReader(tape))
    assert {ex.request.http_version for ex in exchanges} == {"2" if client == "h2" else "1.1"}
    assert {(ex.primary.http_version, ex.shadows["v1"].http_version) for ex in exchanges} == {("2", "1.1")}  # type: ignore[union-attr]
    assert any(ex.primary.trailers for ex in exchanges)  # type: ignore[union-attr]
    assert live["compared"] == sent and unsuppressed(live) == set(), unsuppressed(live)
    result, report = await asyncio.to_thread(diff, tape, "v1", tmp_path / "report.json")
    assert result.returncode == 0, (result.stdout, result.stderr, report and unsuppressed(report))
    assert report["compared"] == sent and unsuppressed(report) == set()
    assert report["secondary_name"] == ("secondary" if "secondary" in shadows else None)
    reasons = {s["reason"] for s in report["suppressions"]}
    assert "volatile:uuid" in reasons, reasons  # the noise was there, and explained


@pytest.mark.timeout(240)
@pytest.mark.parametrize("client", ["h2", "http1"])
async def test_an_http1_candidate_with_one_change_still_fails(
    services: dict[str, str], tmp_path: Path, client: str
) -> None:
    tape = tmp_path / "tape"
    sent, live = await record(services, ("v2", "secondary"), client, tape)
    planted = {("GET /orders/{id}", "body.items[*].qty", "type", "int->str")}
    assert unsuppressed(live) == planted
    result, report = await asyncio.to_thread(diff, tape, "v2", tmp_path / "report.json")
    assert result.returncode == 1, result.stdout + result.stderr
    assert unsuppressed(report) == planted
    assert {(e["endpoint"], s["path"], s["kind"], s["transition"]) for e in report["endpoints"]
            for s in e["signatures"] if s["id"] in report["verdict"]["failing_signatures"]} == planted  # fmt: skip
