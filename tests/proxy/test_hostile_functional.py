"""Hostile clients and faulty primaries against the real data path: every wait a client controls has a
deadline, open connections are capped (the admin API stays reachable), slow clients cannot hold
memory or primary connections without bound, an early answer reaches a client that is still
uploading, and requests or responses nginx refuses are refused here too."""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

from shadowtap.proxy.app import ProxyApp
from shadowtap.proxy.config import ProxyConfig
from shadowtap.proxy.forward import ForwardSettings
from shadowtap.proxy.server import ProxyServer
from shadowtap.recorder.model import FailureKind
from tests.proxy.conftest import (
    RecordingStage,
    logging_primary,
    raw_head_request,
    raw_request,
    running_proxy,
    serve_app,
)
from tests.proxy.test_upstream_functional import raw_primary


async def _read_all(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout_s)


def _ok_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.Response(text="slow")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (8 * 1024 * 1024))

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_post("/slow", slow)
    app.router.add_get("/big", big)
    app.router.add_route("*", "/{tail:.*}", ok)
    return app


# --- slowloris: the request head and body have deadlines ------------------------------------------


async def test_a_head_sent_a_byte_at_a_time_is_cut_at_the_header_deadline() -> None:
    async with serve_app(_ok_app()) as port, running_proxy(port, client_header_timeout_s=0.5) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        started = time.monotonic()
        try:
            raw = b""
            for byte in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: 1" * 10:
                writer.write(bytes([byte]))
                try:  # each byte well within any idle timer; stop at the first answer
                    raw = await asyncio.wait_for(reader.read(), 0.02)
                    break
                except TimeoutError:
                    pass
        finally:
            writer.close()
        assert raw.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert time.monotonic() - started < 3
        assert proxy.stats.client_timeouts == {"head": 1}


async def test_an_idle_keep_alive_connection_is_not_cut_by_the_header_deadline() -> None:
    # The head deadline starts at the head's first byte, not at the last answer.
    async with (
        serve_app(_ok_app()) as port,
        running_proxy(port, client_header_timeout_s=0.3, keepalive_timeout_s=5) as proxy,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            for _ in range(2):
                writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200")
                await asyncio.wait_for(reader.readexactly(2), 5)
                await asyncio.sleep(0.6)
        finally:
            writer.close()
        assert proxy.stats.client_timeouts == {}


async def test_a_stalled_request_body_gets_408_and_frees_the_primary_connection() -> None:
    stage = RecordingStage()
    async with (
        serve_app(_ok_app()) as port,
        running_proxy(port, stages=[stage], client_body_timeout_s=0.4) as proxy,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
            raw = await _read_all(reader, 5)
        finally:
            writer.close()
        assert raw.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert proxy.stats.client_timeouts == {"body": 1}
        assert proxy.stats.pool.reuses == 0
        (ex,) = stage.exchanges
        assert ex.failure is not None and ex.failure.kind == FailureKind.CANCELLED
        assert "request body stalled" in ex.failure.message


async def test_a_client_that_never_reads_its_response_is_disconnected_at_the_send_deadline() -> None:
    async with serve_app(_ok_app()) as port, running_proxy(port, send_timeout_s=0.5) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=1024)
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        async with asyncio.timeout(5):
            while proxy.stats.connections:
                await asyncio.sleep(0.05)
        writer.close()
        assert proxy.stats.client_timeouts == {"send": 1}
        assert proxy.stats.in_flight == 0


async def test_a_primary_silent_mid_body_times_out_and_is_taped_incomplete() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
        await writer.drain()
        await reader.read()

    stage = RecordingStage()
    async with (
        raw_primary(stall) as (port, _),
        running_proxy(port, stages=[stage], primary_read_timeout_s=0.3, total_timeout_s=30) as proxy,
    ):
        started = time.monotonic()
        raw = await raw_head_request(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert time.monotonic() - started < 3
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\nfirst")  # cut: closed early
    assert proxy.stats.primary_failures == {FailureKind.TIMEOUT: 1}
    (ex,) = stage.exchanges
    assert ex.response is None
    assert ex.failure is not None and ex.failure.kind == FailureKind.INCOMPLETE
    assert ex.failure.message == "200 response cut after 5 body bytes: primary read timed out after 0.3 s"


# --- the connection cap --------------------------------------------------------------------------


async def _slowloris(port: int, count: int) -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")  # a head that never ends
        writers.append(writer)
    return writers


async def test_a_flood_of_half_open_heads_cannot_lock_out_clients_or_the_admin_api() -> None:
    async with serve_app(_ok_app()) as port:
        app = ProxyApp(
            ProxyConfig.from_mapping(
                {
                    "listen": "127.0.0.1:0",
                    "primary": f"http://127.0.0.1:{port}",
                    "forward": {"max_client_connections": 20},
                }
            )
        )
        await app.start()
        writers: list[asyncio.StreamWriter] = []
        try:
            writers = await _slowloris(app.port, 100)
            await asyncio.sleep(0.1)
            assert app.server is not None
            assert app.server.stats.connections <= 20
            async with aiohttp.ClientSession() as session:
                for _ in range(5):
                    async with session.get(f"http://127.0.0.1:{app.port}/x") as resp:
                        assert resp.status == 200 and await resp.text() == "ok"
                assert app.admin_url is not None
                async with session.get(f"{app.admin_url}/healthz") as resp:
                    assert resp.status == 200
                async with session.get(f"{app.admin_url}/stats") as resp:
                    server = (await resp.json())["server"]
            assert server["connections_evicted"] >= 80
            assert server["connections"] <= 20
        finally:
            for writer in writers:
                writer.close()
            await app.shutdown()


async def test_at_the_cap_with_every_connection_busy_a_new_one_is_closed_and_counted() -> None:
    async with serve_app(_ok_app()) as port, running_proxy(port, max_client_connections=2) as proxy:
        busy = [
            asyncio.create_task(raw_request(proxy.port, b"GET /slow?s=1 HTTP/1.1\r\nHost: a\r\n\r\n")) for _ in range(2)
        ]
        await asyncio.sleep(0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert await _read_all(reader, 5) == b""
        except ConnectionResetError:
            pass
        finally:
            writer.close()
        assert [r[0].status for r in await asyncio.gather(*busy)] == [200, 200]
        assert proxy.stats.connections_refused == 1


# --- memory held for slow clients ----------------------------------------------------------------


async def test_copies_beyond_the_capture_budget_are_cut_never_the_requests() -> None:
    stage = RecordingStage()
    body = b"b" * 60_000
    async with (
        serve_app(_ok_app()) as port,
        running_proxy(port, stages=[stage], capture_budget_bytes=100_000) as proxy,
    ):
        async with aiohttp.ClientSession() as session:

            async def upload() -> int:
                async with session.post(f"http://127.0.0.1:{proxy.port}/slow?s=0.3", data=body) as resp:
                    await resp.read()
                    return resp.status

            assert await asyncio.gather(*(upload() for _ in range(4))) == [200] * 4
        await asyncio.sleep(0.05)
        server = proxy._ctx
        assert server is not None and server.capture_held == 0
        assert proxy.stats.capture_budget_cuts >= 2
    bodies = [ex.request_body for ex in stage.exchanges]
    assert bodies.count(body) <= 1  # 100 kB holds one copy of 60 kB
    assert all(b in (body, None) for b in bodies)
    assert all(ex.request_body_size == len(body) for ex in stage.exchanges)


# --- an early answer reaches a client that is still sending --------------------------------------


def _posts(port: int, count: int, size: int) -> list[str]:
    """http.client sends the whole body before it reads, as requests does: what each one got."""
    body = b"u" * size
    seen = []
    for _ in range(count):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("POST", "/upload", body=body)
            resp = conn.getresponse()
            seen.append(f"{resp.status} {resp.read().decode()}")
        except OSError as exc:
            seen.append(type(exc).__name__)
        finally:
            conn.close()
    return seen


async def test_an_answer_before_the_upload_ends_reaches_the_client() -> None:
    async def refuse_early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n")
        await writer.drain()

    async with raw_primary(refuse_early) as (port, _), running_proxy(port) as proxy:
        seen = await asyncio.to_thread(_posts, proxy.port, 10, 8 * 1024 * 1024)
    assert seen == ["413 too big\n"] * 10


async def test_lingering_is_bounded_in_bytes() -> None:
    async def refuse_early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()

    async with raw_primary(refuse_early) as (port, _), running_proxy(port, lingering_max_bytes=1024 * 1024) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 413")
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(10):
                while True:
                    writer.write(b"z" * 65536)
                    await writer.drain()
        writer.close()
        assert proxy.stats.client_timeouts == {"linger": 1}


# --- HTTP hygiene, as nginx does it --------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 501),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,  # llhttp refuses it first
        ),
        (b"GET /../admin HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /x/../../admin HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /%2e%2e/admin HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /..%2fadmin HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
        (b"OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ],
)
async def test_requests_nginx_refuses_never_reach_the_primary(request_bytes: bytes, status: int) -> None:
    async with logging_primary() as (port, primary), prefixed_proxy(port) as proxy:
        responses = await raw_request(proxy.port, request_bytes)
    assert [r.status for r in responses] == [status]
    assert primary.received == b""
    assert proxy.stats.client_errors == {status: 1}


@asynccontextmanager
async def prefixed_proxy(port: int) -> AsyncIterator[ProxyServer]:
    """A proxy whose primary URL has a path prefix (``/api``), which a request must not escape."""
    server = ProxyServer(ForwardSettings(primary=f"http://127.0.0.1:{port}/api"))
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.shutdown(1)


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [(b"/a/../b", b"/api/a/../b"), (b"/a/./b", b"/api/a/./b"), (b"/..x/y", b"/api/..x/y"), (b"/", b"/api/")],
)
async def test_dot_segments_that_stay_under_the_prefix_pass(target: bytes, forwarded: bytes) -> None:
    async with logging_primary() as (port, primary), prefixed_proxy(port) as proxy:
        (response,) = await raw_request(proxy.port, b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % target)
    assert response.status == 200
    assert primary.paths == [forwarded]


async def test_an_asterisk_target_gets_no_prefix() -> None:
    async with logging_primary() as (port, primary), prefixed_proxy(port) as proxy:
        (response,) = await raw_request(proxy.port, b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert response.status == 200
    assert primary.paths == [b"*"]


async def test_an_http10_request_without_host_is_fine() -> None:
    async with serve_app(_ok_app()) as port, running_proxy(port) as proxy:
        raw = await asyncio.wait_for(_http10(proxy.port), 5)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")


async def _http10(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        return await reader.read()
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n", "status 0"),
        (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n", "status 101"),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", "204 response with a body"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"y" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n", "head larger"),
    ],
)
async def test_responses_nginx_refuses_are_502(answer: bytes, why: str) -> None:
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        await reader.read()

    stage = RecordingStage()
    async with raw_primary(respond) as (port, _), running_proxy(port, stages=[stage]) as proxy:
        (response,) = await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert response.status == 502
    assert response.header(b"X-Shadowtap-Error") == b"1"
    assert why in response.body.decode()
    assert proxy.stats.primary_failures == {FailureKind.BAD_RESPONSE: 1}
    assert stage.exchanges[0].response is None
