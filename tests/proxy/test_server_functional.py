"""ProxyServer over real sockets: forwarding, stages at the seam, failures, limits, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import aiohttp
from aiohttp import web

from shadowtap.proxy.forward import ForwardSettings
from shadowtap.proxy.server import ProxyServer
from shadowtap.proxy.stages import ProxiedExchange
from shadowtap.recorder.model import FailureKind
from tests.proxy.conftest import (
    RecordingStage,
    Setup,
    build_primary_app,
    raw_head_request,
    raw_request,
    running_proxy,
    serve_app,
)


def setup_failures(proxy: ProxyServer) -> dict[str, int]:
    return dict(proxy.stats.primary_failures)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_forwards_and_calls_stages_in_order(setup: Setup) -> None:
    async with aiohttp.ClientSession() as session:
        for i in range(3):
            async with session.post(f"http://127.0.0.1:{setup.proxy_port}/echo?i={i}", data=b"body%d" % i) as resp:
                assert resp.status == 200
                assert (await resp.read()).endswith(b"\n\nbody%d" % i)
    stage = setup.stage
    assert [ex.target for ex in stage.requests] == ["/echo?i=0", "/echo?i=1", "/echo?i=2"]
    assert stage.request_bodies == [b"body0", b"body1", b"body2"]
    assert [ex.id for ex in stage.exchanges] == [ex.id for ex in stage.requests]
    assert len({ex.id for ex in stage.exchanges}) == 3
    for ex in stage.exchanges:
        assert ex.method == "POST"
        assert ex.failure is None
        assert ex.response is not None and ex.response.status == 200
        assert ex.response.body.endswith(ex.request_body or b"-")
        assert ex.timing.sent_ns is not None and ex.timing.first_byte_ns is not None
        assert ex.timing.done_ns is not None
        assert 0 <= ex.timing.sent_ns <= ex.timing.first_byte_ns <= ex.timing.done_ns
        assert ex.client_addr.startswith("127.0.0.1:")
        assert ex.authority == f"127.0.0.1:{setup.proxy_port}"
    # One client connection, one keep-alive primary connection reused for all three.
    assert len({ex.connection_id for ex in stage.exchanges}) == 1
    assert setup.proxy.stats.pool.connects == 1
    assert setup.proxy.stats.pool.reuses == 2
    assert setup.proxy.stats.requests == 3
    assert setup.proxy.stats.in_flight == 0


async def test_capture_limit_cuts_copies_not_the_wire() -> None:
    stage = RecordingStage()
    async with (
        serve_app(build_primary_app()) as primary,
        running_proxy(primary, stages=[stage], capture_limit_bytes=1000) as proxy,
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{proxy.port}/echo", data=b"u" * 5000) as resp,
    ):
        body = await resp.read()
    assert body.endswith(b"u" * 5000)
    (ex,) = stage.exchanges
    assert ex.request_body is None  # more than the capture limit: streamed, not kept
    assert ex.request_body_size == 5000
    assert ex.response is not None
    assert len(ex.response.body) == 1000
    assert ex.response.truncated_from == len(body)
    assert body.startswith(ex.response.body)


async def test_pipelined_requests_are_answered_in_order(setup: Setup) -> None:
    request = (
        b"".join(b"GET /echo?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
        + b"POST /echo?n=5 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    )
    responses = await raw_request(setup.proxy_port, request, responses=6)
    assert [r.body.split(b"\n", 1)[0] for r in responses] == [
        b"GET /echo?n=0",
        b"GET /echo?n=1",
        b"GET /echo?n=2",
        b"GET /echo?n=3",
        b"GET /echo?n=4",
        b"POST /echo?n=5",
    ]
    assert responses[-1].body.endswith(b"\n\nabc")
    assert responses[-1].header(b"Connection") == b"close"


async def test_primary_down_gives_502_fast() -> None:
    stage = RecordingStage()
    port = _free_port()  # nothing listens there
    async with running_proxy(port, stages=[stage]) as proxy:
        started = time.monotonic()
        (resp,) = await raw_request(proxy.port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        elapsed = time.monotonic() - started
        assert resp.status == 502
        assert resp.header(b"Content-Type") == b"text/plain; charset=utf-8"
        assert b"cannot connect to primary" in resp.body
        assert elapsed < 1.0
        # The connection stays usable: a second request on it also gets its 502.
        two = await raw_request(
            proxy.port, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n", responses=2
        )
        assert [r.status for r in two] == [502, 502]
        assert proxy.stats.primary_failures[FailureKind.CONNECT_ERROR] == 3
    ex = stage.exchanges[0]
    assert ex.failure is not None and ex.failure.kind == FailureKind.CONNECT_ERROR
    assert ex.response is None


async def test_first_byte_timeout_gives_504() -> None:
    app = web.Application()
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    app.router.add_get("/slow", slow)
    stage = RecordingStage()
    async with serve_app(app) as primary, running_proxy(primary, stages=[stage], first_byte_timeout_s=0.3) as proxy:
        started = time.monotonic()
        (resp,) = await raw_request(proxy.port, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        assert resp.status == 504
        assert b"first byte timed out" in resp.body
        assert time.monotonic() - started < 2.0
        release.set()
    assert stage.exchanges[0].failure is not None
    assert stage.exchanges[0].failure.kind == FailureKind.TIMEOUT


async def test_reset_after_head_closes_the_client_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stage = RecordingStage()
    try:
        async with running_proxy(port, stages=[stage]) as proxy:
            raw = await raw_head_request(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
            assert raw.endswith(b"partial")  # cut short: the client sees the connection end early
    finally:
        server.close()
        await server.wait_closed()
    # Cut after its head: an incomplete answer, never a response to compare or replay.
    ex = stage.exchanges[0]
    assert ex.failure is not None and ex.failure.kind == FailureKind.INCOMPLETE
    assert ex.failure.message.startswith("200 response cut after 7 body bytes: primary closed the connection")
    assert ex.response is None
    assert setup_failures(proxy) == {FailureKind.RESET: 1}


async def test_garbage_from_primary_gives_502() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await reader.read()  # the proxy hangs up on garbage
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_proxy(port) as proxy:
            (resp,) = await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert resp.status == 502
            assert b"malformed response" in resp.body
            assert proxy.stats.primary_failures == {FailureKind.BAD_RESPONSE: 1}
    finally:
        server.close()
        await server.wait_closed()


async def test_bad_requests_get_400_and_431(setup: Setup) -> None:
    (bad,) = await raw_request(setup.proxy_port, b"GET / HTTP/1.1\r\nHost a\r\n\r\n")
    assert bad.status == 400
    assert bad.header(b"Connection") == b"close"
    huge = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    (too_large,) = await raw_request(setup.proxy_port, huge)
    assert too_large.status == 431
    # A good request before the bad one still gets its answer, in order.
    two = await raw_request(setup.proxy_port, b"GET /utf8 HTTP/1.1\r\nHost: a\r\n\r\nBROKEN\r\n\r\n", responses=2)
    assert [r.status for r in two] == [200, 400]
    assert setup.proxy.stats.client_errors == {400: 2, 431: 1}
    assert setup.stage.exchanges[-1].target == "/utf8"


async def test_stage_that_raises_costs_no_request(setup: Setup) -> None:
    class Broken:
        name = "broken"

        def request_complete(self, exchange: object) -> None:
            raise RuntimeError("boom")

        def exchange_complete(self, exchange: object) -> None:
            raise RuntimeError("boom")

        async def aclose(self, timeout_s: float) -> None:
            return None

    async with running_proxy(setup.primary_port, stages=[Broken()]) as proxy:
        (resp,) = await raw_request(proxy.port, b"GET /utf8 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert resp.status == 200
        assert proxy.stats.stage_errors.by_stage == {"broken": 2}


async def test_http10_client_gets_close_delimited_body(setup: Setup) -> None:
    raw = await raw_head_request(setup.proxy_port, b"GET /chunked HTTP/1.0\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert b"Connection: close" in head
    assert body == b"".join(f"piece {i}\n".encode() for i in range(5))


async def test_shutdown_finishes_in_flight_and_refuses_new() -> None:
    app = web.Application()

    async def slowish(request: web.Request) -> web.Response:
        await asyncio.sleep(0.4)
        return web.Response(text="done")

    app.router.add_get("/slowish", slowish)
    stage = RecordingStage()
    async with serve_app(app) as primary:
        proxy = ProxyServer(ForwardSettings(primary=f"http://127.0.0.1:{primary}"), [stage])
        await proxy.start("127.0.0.1", 0)
        port = proxy.port
        in_flight = asyncio.ensure_future(raw_request(port, b"GET /slowish HTTP/1.1\r\nHost: a\r\n\r\n"))
        await asyncio.sleep(0.1)
        await proxy.shutdown(5.0)
        (resp,) = await in_flight
        assert resp.status == 200 and resp.body == b"done"
        assert resp.header(b"Connection") == b"close"
        assert [ex.response.status for ex in stage.exchanges if ex.response] == [200]
        try:
            await raw_request(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", timeout_s=1)
        except OSError:
            pass
        else:
            raise AssertionError("a new connection was accepted after shutdown")


async def test_shutdown_deadline_cuts_what_does_not_finish() -> None:
    app = web.Application()
    release = asyncio.Event()

    async def forever(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="never")

    app.router.add_get("/forever", forever)
    stage = RecordingStage()
    async with serve_app(app) as primary:
        proxy = ProxyServer(ForwardSettings(primary=f"http://127.0.0.1:{primary}"), [stage])
        await proxy.start("127.0.0.1", 0)
        stuck = asyncio.ensure_future(raw_head_request(proxy.port, b"GET /forever HTTP/1.1\r\nHost: a\r\n\r\n"))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await proxy.shutdown(0.3)
        assert time.monotonic() - started < 2.0
        assert await stuck == b""
        release.set()
    assert [ex.failure.kind for ex in stage.exchanges if ex.failure] == [FailureKind.CANCELLED]


async def test_reuse_port_lets_two_servers_share_a_port(setup: Setup) -> None:
    settings = ForwardSettings(primary=f"http://127.0.0.1:{setup.primary_port}")
    first = ProxyServer(settings)
    await first.start("127.0.0.1", 0, reuse_port=True)
    second = ProxyServer(settings)
    try:
        await second.start("127.0.0.1", first.port, reuse_port=True)
        assert second.port == first.port
        (resp,) = await raw_request(first.port, b"GET /utf8 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert resp.status == 200
    finally:
        await second.shutdown(1)
        await first.shutdown(1)


async def test_half_closed_client_still_gets_its_answer_then_the_connection_closes(setup: Setup) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", setup.proxy_port)
    try:
        writer.write(b"GET /utf8 HTTP/1.1\r\nHost: a\r\n\r\n")
        writer.write_eof()
        raw = await asyncio.wait_for(reader.read(), 5)  # EOF comes right after the response
    finally:
        writer.close()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert raw.endswith("héllo wörld ✓ 日本".encode())


async def test_forwarded_headers_and_via() -> None:
    async with (
        serve_app(build_primary_app()) as primary,
        running_proxy(primary, via="shadowtap-test") as proxy,
    ):
        (resp,) = await raw_request(
            proxy.port, b"GET /echo HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"
        )
    seen = resp.body.split(b"\n\n", 1)[0].split(b"\n")
    assert b"Host: shop.example" in seen  # the client's Host is kept by default
    assert b"X-Forwarded-For: 203.0.113.7, 127.0.0.1" in seen
    assert b"X-Forwarded-Proto: http" in seen
    assert b"X-Forwarded-Host: shop.example" in seen
    assert b"Via: 1.1 shadowtap-test" in seen
    assert resp.header(b"Via") == b"1.1 shadowtap-test"


async def test_an_absolute_form_targets_authority_is_the_host_the_primary_and_the_tape_get() -> None:
    # RFC 9112 3.2.2: the request target's authority wins over Host, and a proxy sends a Host made
    # from it; HTTP/1.0 may come without a Host at all.
    stage = RecordingStage()
    async with (
        serve_app(build_primary_app()) as primary,
        running_proxy(primary, stages=[stage]) as proxy,
    ):
        (resp,) = await raw_request(
            proxy.port, b"GET http://shop.example:8080/echo?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n"
        )
        (old,) = await raw_request(proxy.port, b"GET http://legacy.example/echo HTTP/1.0\r\n\r\n")
        (bad,) = await raw_request(proxy.port, b"GET http://user@evil.example/echo HTTP/1.1\r\nHost: x\r\n\r\n")
    seen = resp.body.split(b"\n\n", 1)[0].split(b"\n")
    assert resp.status == 200
    assert b"Host: shop.example:8080" in seen and b"Host: other.example" not in seen
    assert b"X-Forwarded-Host: shop.example:8080" in seen
    assert b"Host: legacy.example" in old.body.split(b"\n\n", 1)[0].split(b"\n")
    assert bad.status == 400
    assert [(ex.target, ex.authority) for ex in stage.requests] == [
        ("/echo?q=1", "shop.example:8080"),
        ("/echo", "legacy.example"),
    ]
    assert proxy.stats.client_errors == {400: 1}


async def test_pipelined_upload_waits_for_its_turn_with_bounded_buffering(setup: Setup) -> None:
    body = bytes(range(256)) * 2400  # 600 KiB: more than max_buffered_body_bytes (256 KiB)
    request = (
        b"GET /streaming HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    first, second = await raw_request(setup.proxy_port, request, responses=2)
    assert first.body == b"".join(f"tick {i}\n".encode() for i in range(4))
    assert second.body.endswith(b"\n\n" + body)
    assert second.header(b"X-Echo-Length") == str(len(body)).encode()
    assert setup.stage.request_bodies[1] == body


async def test_garbage_after_a_bad_request_gets_one_error_only(setup: Setup) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", setup.proxy_port)
    try:
        writer.write(b"NOT HTTP\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        with contextlib.suppress(ConnectionError):
            writer.write(b"more garbage\r\n\r\n" * 100)
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert raw.count(b"HTTP/1.1 400 Bad Request") == 1


async def test_concurrent_mixed_requests_all_complete(setup: Setup) -> None:
    paths = ["/utf8", "/chunked", "/gzip", "/204", "/big", "/echo?x=1", "/teapot"]
    connector = aiohttp.TCPConnector(limit=20)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def one(i: int) -> tuple[int, int]:
            path = paths[i % len(paths)]
            if i % 5 == 0:
                async with session.post(f"http://127.0.0.1:{setup.proxy_port}/echo", data=b"p" * (i * 997)) as r:
                    body = await r.read()
                    assert body.endswith(b"p" * (i * 997))
                    return r.status, len(body)
            async with session.get(f"http://127.0.0.1:{setup.proxy_port}{path}") as r:
                return r.status, len(await r.read())

        results = await asyncio.gather(*(one(i) for i in range(200)))
    statuses = {status for status, _ in results}
    assert statuses <= {200, 204, 418}
    assert len(setup.stage.exchanges) == 200
    assert all(ex.failure is None for ex in setup.stage.exchanges)
    assert setup.proxy.stats.in_flight == 0
    assert setup.proxy.stats.pool.connects <= 20  # keep-alive reuse, bounded by client concurrency


async def test_observers_see_every_outcome_without_stages(setup: Setup) -> None:
    seen: list[tuple[int | None, bool, int | None]] = []

    class Observer:
        name = "observer"

        def observe_primary(self, status: int | None, failed: bool, done_ns: int | None) -> None:
            seen.append((status, failed, done_ns))

    class Broken:
        name = "broken-observer"

        def observe_primary(self, status: int | None, failed: bool, done_ns: int | None) -> None:
            raise RuntimeError("boom")

    async with running_proxy(setup.primary_port, observers=[Broken(), Observer()]) as proxy:
        (resp,) = await raw_request(proxy.port, b"GET /utf8 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert resp.status == 200
        assert proxy.stats.stage_errors.by_stage == {"broken-observer": 1}
    ((status, failed, done_ns),) = seen
    assert status == 200 and not failed and done_ns is not None and done_ns > 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    async with running_proxy(closed_port, observers=[Observer()]) as proxy:
        (resp,) = await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert resp.status == 502
    # Never reached the primary: no status and no duration, but counted as failed.
    assert seen[1] == (None, True, None)


async def test_stage_that_does_not_watch_completion_is_only_told_of_requests(setup: Setup) -> None:
    calls: list[str] = []

    class RequestOnly:
        name = "request-only"
        watches_completion = False

        def request_complete(self, exchange: object) -> None:
            calls.append("request")

        def exchange_complete(self, exchange: object) -> None:
            calls.append("complete")

        async def aclose(self, timeout_s: float) -> None:
            return None

    async with running_proxy(setup.primary_port, stages=[RequestOnly()]) as proxy:
        (resp,) = await raw_request(proxy.port, b"GET /utf8 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert resp.status == 200
    assert calls == ["request"]
    # A stage that does not say (RecordingStage) is told of both, with the response built.
    (resp,) = await raw_request(setup.proxy_port, b"GET /utf8 HTTP/1.1\r\nHost: a\r\n\r\n")
    (ex,) = setup.stage.exchanges
    assert ex.response is not None and ex.response.status == resp.status and ex.timing.done_ns is not None


async def test_stage_that_does_not_watch_requests_is_only_told_of_completion(setup: Setup) -> None:
    calls: list[str] = []

    class CompletionOnly:
        name = "completion-only"
        watches_requests = False

        def request_complete(self, exchange: object) -> None:
            calls.append("request")

        def exchange_complete(self, exchange: ProxiedExchange) -> None:
            assert exchange.response is not None
            calls.append(f"complete {exchange.response.status}")

        async def aclose(self, timeout_s: float) -> None:
            return None

    async with running_proxy(setup.primary_port, stages=[CompletionOnly()]) as proxy:
        (resp,) = await raw_request(proxy.port, b"GET /utf8 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert resp.status == 200
    assert calls == ["complete 200"]
