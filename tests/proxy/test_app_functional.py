"""The assembled proxy on real sockets: forward, mirror, record, admin API, token, graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from shadowtap.proxy.app import ProxyApp
from shadowtap.proxy.config import ProxyConfig
from shadowtap.recorder import TapeReader
from shadowtap.recorder.model import Failure, Response
from tests.proxy.conftest import AppUpstream

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Upstream(AppUpstream):
    """A real aiohttp server that remembers the requests it saw."""

    def __init__(self, handler: Handler | None = None) -> None:
        super().__init__()
        self.seen: list[web.Request] = []
        self.bodies: list[bytes] = []
        self._handler = handler

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        self.bodies.append(await request.read())
        if self._handler is not None:
            return await self._handler(request)
        return web.Response(text=f"{request.method} {request.path_qs}", headers={"X-From": "upstream"})




@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[Upstream, Upstream]]:
    primary, shadow = await Upstream().start(), await Upstream().start()
    yield primary, shadow
    await primary.close()
    await shadow.close()


async def start_proxy(config: dict[str, Any]) -> ProxyApp:
    app = ProxyApp(ProxyConfig.from_mapping({"listen": "127.0.0.1:0", **config}))
    await app.start()
    return app


async def test_forward_mirror_record_and_admin(upstreams: tuple[Upstream, Upstream], tmp_path: Path) -> None:
    primary, shadow = upstreams
    events = tmp_path / "events.jsonl"
    app = await start_proxy(
        {
            "primary": primary.url,
            "shadows": {"v2": shadow.url},
            "record": {"tape": str(tmp_path / "tape"), "join_timeout_s": 5},
            "events": {"path": str(events)},
        }
    )
    admin = app.admin_url
    assert admin is not None
    async with aiohttp.ClientSession() as client:
        for i in range(5):
            async with client.get(f"{app.listen_url}/items/{i}?q=1") as resp:
                assert resp.status == 200 and await resp.text() == f"GET /items/{i}?q=1"
        async with client.post(f"{app.listen_url}/orders", data=b"{}") as resp:
            assert resp.status == 200
        async with client.get(f"{admin}/healthz") as resp:
            assert resp.status == 200
        async with client.get(f"{admin}/readyz") as resp:
            assert resp.status == 200
        for _ in range(100):  # mirrors are asynchronous: wait until the shadow has all five
            if len(shadow.seen) == 5:
                break
            await asyncio.sleep(0.02)
        async with client.get(f"{admin}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        async with client.get(f"{admin}/stats") as resp:
            stats = await resp.json()
    await app.shutdown()

    assert len(primary.seen) == 6
    assert [r.path_qs for r in shadow.seen] == [f"/items/{i}?q=1" for i in range(5)]
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert values["shadowtap_proxy_requests_total", (("status", "2xx"),)] == 6
    assert values["shadowtap_mirror_outcomes_total", (("outcome", "mirrored"), ("shadow", "v2"))] == 5
    assert values["shadowtap_mirror_outcomes_total", (("outcome", "method-not-allowed"), ("shadow", "v2"))] == 1
    assert ("shadowtap_mirror_queue_depth", (("shadow", "v2"),)) in values
    assert stats["server"]["requests"] == 6 and stats["mirror"]["v2"]["outcomes"]["ok"] == 5

    taped = list(TapeReader(tmp_path / "tape"))
    assert len(taped) == 6
    by_target = {ex.request.target: ex for ex in taped}
    got = by_target["/items/3?q=1"]
    assert isinstance(got.primary, Response) and got.primary.body == b"GET /items/3?q=1"
    assert isinstance(got.shadows["v2"], Response) and got.shadows["v2"].status == 200
    assert by_target["/orders"].decisions == {"v2": "method-not-allowed"} and not by_target["/orders"].shadows
    assert len(events.read_text().splitlines()) == 6


async def test_admin_token_and_flags(upstreams: tuple[Upstream, Upstream], monkeypatch: pytest.MonkeyPatch) -> None:
    primary, shadow = upstreams
    monkeypatch.setenv("TEST_ADMIN_TOKEN", "s3cret")
    app = await start_proxy(
        {"primary": primary.url, "shadows": {"v2": shadow.url}, "admin": {"token_env": "TEST_ADMIN_TOKEN"}}
    )
    admin = app.admin_url
    good = {"Authorization": "Bearer s3cret"}
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{admin}/healthz") as resp:
            assert resp.status == 200  # probes need no token
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with client.get(f"{admin}/flags", headers=headers) as resp:
                assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
            async with client.get(f"{admin}/metrics", headers=headers) as resp:
                assert resp.status == 401
        async with client.put(f"{admin}/flags", headers=good, json={"shadows": {"v2": {"sample_percent": 7}}}) as resp:
            assert resp.status == 200
            assert (await resp.json())["shadows"]["v2"]["sample_percent"] == 7.0
        async with client.put(f"{admin}/flags", headers=good, json={"shadows": {"v9": {}}}) as resp:
            assert resp.status == 400 and "v9" in (await resp.json())["error"]
        async with client.put(f"{admin}/flags", headers=good, data=b"{nope") as resp:
            assert resp.status == 400
        async with client.put(f"{admin}/flags", headers=good, json={"shadows": {"v2": {"recording": False}}}) as resp:
            assert resp.status == 200
        async with client.get(f"{admin}/flags", headers=good) as resp:
            assert (await resp.json())["shadows"]["v2"] == {
                "mirroring": True,
                "sample_percent": 7.0,
                "recording": False,
            }
    await app.shutdown()


async def test_shutdown_finishes_in_flight_and_tapes_it(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(0.5)
        return web.Response(text="slow but done")

    primary = await Upstream(slow).start()
    app = await start_proxy({"primary": primary.url, "record": {"tape": str(tmp_path / "tape")}})
    url = app.listen_url
    async with aiohttp.ClientSession() as client:
        request = asyncio.ensure_future(client.get(f"{url}/slow"))
        await started.wait()
        shutdown = asyncio.ensure_future(app.shutdown())
        async with await request as resp:
            assert resp.status == 200 and await resp.text() == "slow but done"
        await shutdown
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.get(f"{url}/after")
    await primary.close()
    (taped,) = TapeReader(tmp_path / "tape")
    assert taped.request.target == "/slow" and isinstance(taped.primary, Response)


def make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-days", "1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def test_tls_listener_and_verified_https_shadow(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    primary = await Upstream().start()
    shadow_app = web.Application()
    shadow_seen: list[str] = []

    async def shadow_handler(request: web.Request) -> web.Response:
        shadow_seen.append(request.path)
        return web.Response(text="tls shadow")

    shadow_app.router.add_get("/{tail:.*}", shadow_handler)
    runner = web.AppRunner(shadow_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls).start()
    shadow_url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    app = await start_proxy(
        {
            "primary": primary.url,
            "tls": {"cert_file": str(cert), "key_file": str(key)},
            # Verification is on by default: the self-signed shadow is refused unless its CA is given.
            "shadows": [{"name": "untrusted", "url": shadow_url}, {"name": "trusted", "url": shadow_url,
                                                                    "ca_file": str(cert)}],
        }
    )  # fmt: skip
    assert app.listen_url.startswith("https://")
    client_tls = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{app.listen_url}/secure", ssl=client_tls) as resp:
            assert resp.status == 200 and await resp.text() == "GET /secure"
        for _ in range(100):
            if app.metrics.mirror_outcomes.get(("untrusted", "connect-error")) and shadow_seen:
                break
            await asyncio.sleep(0.02)
    await app.shutdown()
    await runner.cleanup()
    await primary.close()
    assert shadow_seen == ["/secure"]
    assert app.metrics.mirror_outcomes["untrusted", "connect-error"] == 1
    assert app.metrics.mirror_outcomes["trusted", "ok"] == 1


async def test_websocket_passes_through_is_never_mirrored_and_is_taped(tmp_path: Path) -> None:
    async def ws_echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(f"echo {message.data}")
        return ws

    primary = await Upstream(ws_echo).start()
    shadow = await Upstream().start()
    app = await start_proxy(
        {"primary": primary.url, "shadows": {"v2": shadow.url}, "record": {"tape": str(tmp_path / "tape")}}
    )
    async with aiohttp.ClientSession() as client, client.ws_connect(f"{app.listen_url}/ws") as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo hi"
        await ws.close()
    await app.shutdown()
    await primary.close()
    await shadow.close()
    assert shadow.seen == []
    (taped,) = TapeReader(tmp_path / "tape")
    assert taped.tags.get("upgraded") == "1" and taped.decisions == {"v2": "method-not-allowed"}
    assert isinstance(taped.primary, Response) and taped.primary.status == 101


async def test_primary_down_is_a_fast_502_counted_and_taped(tmp_path: Path) -> None:
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    app = await start_proxy({"primary": dead, "record": {"tape": str(tmp_path / "tape")}})
    async with aiohttp.ClientSession() as client:
        started = time.monotonic()
        async with client.get(f"{app.listen_url}/anything") as resp:
            assert resp.status == 502
        assert time.monotonic() - started < 2.0
        async with client.get(f"{app.admin_url}/metrics") as resp:
            text = await resp.text()
    await app.shutdown()
    # Counted as a failed primary (the client's 502 came from the proxy, not from the primary).
    assert 'shadowtap_proxy_requests_total{status="error"} 1.0' in text
    assert 'shadowtap_primary_failures_total{kind="connect-error"} 1.0' in text
    (taped,) = TapeReader(tmp_path / "tape")
    assert taped.request.target == "/anything"
    assert isinstance(taped.primary, Failure) and taped.primary.kind == "connect-error"


async def test_shutdown_waits_for_copies_in_flight_and_tapes_their_answers(tmp_path: Path) -> None:
    async def slow_shadow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.Response(text="shadow, late but in time")

    primary = await Upstream().start()
    shadow = await Upstream(slow_shadow).start()
    app = await start_proxy(
        {"primary": primary.url, "shadows": {"v2": shadow.url}, "record": {"tape": str(tmp_path / "tape")}}
    )
    async with aiohttp.ClientSession() as client:
        for i in range(5):
            async with client.get(f"{app.listen_url}/d/{i}") as resp:
                assert resp.status == 200
    await app.shutdown()  # right away: the five copies are still at the shadow
    await primary.close()
    await shadow.close()
    taped = list(TapeReader(tmp_path / "tape"))
    assert len(taped) == 5
    for ex in taped:
        answer = ex.shadows["v2"]
        assert isinstance(answer, Response) and answer.body == b"shadow, late but in time"


@pytest.mark.parametrize("writer", ["process", "thread"])
async def test_either_tape_writer_records_the_same_exchanges(
    upstreams: tuple[Upstream, Upstream], tmp_path: Path, writer: str
) -> None:
    primary, shadow = upstreams
    tape = tmp_path / "tape"
    app = await start_proxy(
        {"primary": primary.url, "shadows": {"v2": shadow.url}, "record": {"tape": str(tape), "writer": writer}}
    )
    assert app.tape is not None
    assert (getattr(app.tape, "pid", None) is not None) == (writer == "process")
    async with aiohttp.ClientSession() as client:
        for i in range(40):
            async with client.get(f"{app.listen_url}/orders/{i}") as resp:
                assert resp.status == 200
    tape_writer = app.tape
    await app.shutdown()
    stats = tape_writer.stats
    assert (stats.written, stats.write_errors, stats.queue_depth) == (40, 0, 0)
    taped = sorted(TapeReader(tape), key=lambda ex: int(ex.request.target.rsplit("/", 1)[1]))
    assert [ex.request.target for ex in taped] == [f"/orders/{i}" for i in range(40)]
    assert [ex.shadows["v2"] for ex in taped] == [ex.primary for ex in taped]


async def test_a_killed_tape_writer_costs_no_primary_request(
    upstreams: tuple[Upstream, Upstream], tmp_path: Path
) -> None:
    primary, shadow = upstreams
    tape = tmp_path / "tape"
    app = await start_proxy({"primary": primary.url, "shadows": {"v2": shadow.url}, "record": {"tape": str(tape)}})
    writer = app.tape
    assert writer is not None
    first = getattr(writer, "pid", None)
    assert first is not None
    statuses: list[int] = []
    async with aiohttp.ClientSession() as client:

        async def get(i: int) -> None:
            async with client.get(f"{app.listen_url}/k/{i}") as resp:
                await resp.read()
                statuses.append(resp.status)

        await asyncio.gather(*(get(i) for i in range(30)))
        for _ in range(500):  # joined, batched, sent and written
            if writer.stats.written == 30:
                break
            await asyncio.sleep(0.01)
        os.kill(first, signal.SIGKILL)
        await asyncio.gather(*(get(i) for i in range(30, 60)))
        for _ in range(500):  # a new writer is started about a second later
            if getattr(writer, "pid", None) not in (None, first):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        await asyncio.gather(*(get(i) for i in range(60, 90)))
    await app.shutdown()
    assert statuses == [200] * 90
    stats = writer.stats
    # The ones while no writer ran are counted; the ones before the kill and after the restart are
    # on the tape.
    assert (stats.written, stats.write_errors) == (60, 30)
    targets = {ex.request.target for ex in TapeReader(tape)}
    assert targets == {f"/k/{i}" for i in [*range(30), *range(60, 90)]}
