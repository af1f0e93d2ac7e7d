"""HTTP/2 through the proxy, against real peers: grpcio servers and clients over h2c (unary and every
streaming kind, status errors, large messages, a primary that is down), and a plain HTTP/2 client
and server on ``h2`` (tests/wire/h2peer.py) for trailers, resets, 502, flow control, ALPN over TLS,
an HTTP/1 primary behind an HTTP/2 client, and bad input."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
from aiohttp import web

from shadowtap.proxy.forward import ForwardSettings
from shadowtap.proxy.h2server import CLIENT_CONNECTION_WINDOW, CLIENT_STREAM_WINDOW, PREFACE
from shadowtap.proxy.server import ProxyServer
from shadowtap.wire.h2 import STREAM_WINDOW_BYTES
from tests.grpc_fixtures import CompiledShop, compile_shop
from tests.grpc_fixtures.server import start_catalog
from tests.proxy.conftest import raw_request
from tests.proxy.test_server_tls_functional import Pki, pki  # noqa: F401  (the fixture)
from tests.wire.h2peer import H2Response, H2TestClient, H2TestServer, Responder

Header = tuple[bytes, bytes]
BIG_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> CompiledShop:
    return compile_shop(tmp_path_factory.mktemp("shop"))


@pytest.fixture
async def catalog(shop: CompiledShop) -> AsyncIterator[int]:
    server, port = await start_catalog(shop)
    try:
        yield port
    finally:
        await server.stop(None)


async def _proxy(primary: str, ssl_context: ssl.SSLContext | None = None, **settings: Any) -> ProxyServer:
    proxy = ProxyServer(ForwardSettings(primary=primary, **settings), ssl_context=ssl_context)
    await proxy.start("127.0.0.1", 0)
    return proxy


@pytest.fixture
async def grpc_proxy(catalog: int) -> AsyncIterator[ProxyServer]:
    proxy = await _proxy(f"h2c://127.0.0.1:{catalog}")
    try:
        yield proxy
    finally:
        await proxy.shutdown(1)


@pytest.fixture
async def stub(shop: CompiledShop, grpc_proxy: ProxyServer) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_proxy.port}", options=BIG_OPTIONS) as channel:
        yield shop.pb2_grpc.CatalogStub(channel)


# --- gRPC ----------------------------------------------------------------------------------------------


async def test_grpc_unary_through_h2c(shop: CompiledShop, stub: Any, grpc_proxy: ProxyServer) -> None:
    product = await stub.GetProduct(shop.pb2.GetProductRequest(id="p1"), timeout=10)
    assert product.name == "p1 (v1)"
    assert [v.sku for v in product.variants] == ["p1-0", "p1-1"]
    assert product.availability == shop.pb2.IN_STOCK
    stats = grpc_proxy.stats
    assert stats.h2_connections == 1 and stats.h2_streams == 1 and stats.in_flight == 0


async def test_grpc_error_status_passes_through_trailers_only(shop: CompiledShop, stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetProduct(shop.pb2.GetProductRequest(id="missing"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "no product missing"


async def test_grpc_server_streaming(shop: CompiledShop, stub: Any) -> None:
    call = stub.ListProducts(shop.pb2.ListProductsRequest(category="c", limit=200), timeout=10)
    ids = [product.id async for product in call]
    assert ids == [f"c-{i}" for i in range(200)]
    assert await call.code() == grpc.StatusCode.OK


async def test_grpc_client_streaming(shop: CompiledShop, stub: Any) -> None:
    async def updates() -> AsyncIterator[Any]:
        for i in range(300):
            yield shop.pb2.PriceUpdate(sku="" if i % 10 == 0 else f"s{i}", at_unix_ms=i)

    summary = await stub.UploadPrices(updates(), timeout=10)
    assert (summary.accepted, summary.rejected) == (270, 30)


async def test_grpc_bidi_streaming(shop: CompiledShop, stub: Any) -> None:
    call = stub.Chat(timeout=10)
    for text in ("hello", "over", "http2"):
        await call.write(shop.pb2.ChatMessage(text=text, sent_at_unix_ms=7))
        answer = await call.read()
        assert (answer.text, getattr(answer, "from"), answer.sent_at_unix_ms) == (text.upper(), "v1", 7)
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


async def test_grpc_large_messages_both_ways(shop: CompiledShop, stub: Any) -> None:
    product = await stub.GetProduct(shop.pb2.GetProductRequest(id="big-8000000"), timeout=30)
    assert product.blob == bytes(range(256)) * (8_000_000 // 256)

    async def big_updates() -> AsyncIterator[Any]:
        for i in range(3):
            yield shop.pb2.PriceUpdate(sku=f"{i}" * 3_000_000)

    summary = await stub.UploadPrices(big_updates(), timeout=30)
    assert summary.accepted == 3


async def test_many_concurrent_grpc_calls_share_a_few_primary_connections(
    shop: CompiledShop, stub: Any, grpc_proxy: ProxyServer
) -> None:
    answers = await asyncio.gather(*(stub.GetProduct(shop.pb2.GetProductRequest(id=f"p{i}"), timeout=20)
                                     for i in range(300)))  # fmt: skip
    assert [a.id for a in answers] == [f"p{i}" for i in range(300)]
    pool = grpc_proxy._ctx.h2_pool  # type: ignore[union-attr]
    assert 1 <= pool.connects <= 4


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_primary_down_gives_grpc_unavailable_and_502_to_others(shop: CompiledShop) -> None:
    proxy = await _proxy(f"h2c://127.0.0.1:{_unused_port()}")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await shop.pb2_grpc.CatalogStub(channel).GetProduct(shop.pb2.GetProductRequest(id="x"), timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "cannot connect to primary" in (raised.value.details() or "")
        client = await H2TestClient.connect(proxy.port)
        response = await client.get("/plain")
        await client.close()
        assert response.status == 502
        assert response.header(b"x-shadowtap-error") == b"1"
        assert b"cannot connect to primary" in response.body
        assert proxy.stats.primary_failures == {"connect-error": 2}
    finally:
        await proxy.shutdown(1)


# --- plain HTTP/2 against an h2 server -------------------------------------------------------------------


@pytest.fixture
async def h2_primary() -> AsyncIterator[H2TestServer]:
    async def handler(headers: list[Header], body: bytes, trailers: list[Header], reply: Responder) -> None:
        fields = dict(headers)
        path = fields[b":path"]
        if path == b"/reset":
            reply.reset(0x2)
        elif path == b"/goaway-once" and not goaway_sent:
            # Refuse this stream by a GOAWAY whose last stream is below it: it was never processed.
            goaway_sent.append(reply.stream_id)
            reply.goaway(last_stream_id=max(0, reply.stream_id - 2))
        elif path == b"/uppercase":
            reply.head(200, [(b"X-Upper", b"1")], end=True)
        elif path == b"/silent":
            await asyncio.Event().wait()
        elif path == b"/trailers":
            reply.head(200, [(b"content-type", b"text/plain")])
            await reply.data(b"body-" + body)
            reply.trailers([(b"x-checksum", b"abc"), (b"x-request-trailer", dict(trailers).get(b"x-up", b"-"))])
        elif path.startswith(b"/big/"):
            size = int(path[5:])
            reply.head(200, [(b"content-length", b"%d" % size)])
            await reply.data(bytes(range(256)) * (size // 256), end=True)
        else:
            echo = [(b"x-path", path), (b"x-method", fields[b":method"]), (b"x-authority", fields[b":authority"]),
                    (b"x-forwarded-for", fields.get(b"x-forwarded-for", b"")),
                    (b"x-te", fields.get(b"te", b""))]  # fmt: skip
            reply.head(200, echo)
            await reply.data(b"echo:" + body, end=True)

    goaway_sent: list[int] = []
    server = await H2TestServer(handler).start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def h2_proxy(h2_primary: H2TestServer) -> AsyncIterator[ProxyServer]:
    proxy = await _proxy(f"h2c://127.0.0.1:{h2_primary.port}", client_body_timeout_s=0.5)
    try:
        yield proxy
    finally:
        await proxy.shutdown(1)


async def test_plain_h2_request_and_forwarding_fields(h2_proxy: ProxyServer) -> None:
    client = await H2TestClient.connect(h2_proxy.port)
    try:
        stream = client.request("POST", "/echo?q=1", [(b"te", b"trailers")], b"payload")
        response = await client.response(stream)
    finally:
        await client.close()
    assert response.status == 200 and response.body == b"echo:payload"
    assert response.header(b"x-path") == b"/echo?q=1"
    assert response.header(b"x-method") == b"POST"
    assert response.header(b"x-authority") == b"test.local"
    assert response.header(b"x-forwarded-for") == b"127.0.0.1"
    assert response.header(b"x-te") == b"trailers"


async def test_trailers_pass_through_both_ways(h2_proxy: ProxyServer) -> None:
    client = await H2TestClient.connect(h2_proxy.port)
    try:
        stream = client.request("POST", "/trailers", body=b"abc", end=False)
        client.end(stream, [(b"x-up", b"sent-as-trailer")])
        response = await client.response(stream)
    finally:
        await client.close()
    assert response.body == b"body-abc"
    assert response.trailers == [(b"x-checksum", b"abc"), (b"x-request-trailer", b"sent-as-trailer")]


async def test_primary_reset_becomes_client_reset_not_a_hang(h2_proxy: ProxyServer) -> None:
    client = await H2TestClient.connect(h2_proxy.port)
    try:
        reset = client.request("GET", "/reset")
        fine = client.request("GET", "/fine")
        reset_response, fine_response = await client.response(reset), await client.response(fine)
    finally:
        await client.close()
    assert reset_response.reset_code is not None and reset_response.status == 0
    assert fine_response.status == 200 and fine_response.body == b"echo:"
    assert h2_proxy.stats.primary_failures == {"reset": 1}


async def test_a_malformed_primary_response_gives_502(h2_proxy: ProxyServer) -> None:
    client = await H2TestClient.connect(h2_proxy.port)
    try:
        response = await client.get("/uppercase")
    finally:
        await client.close()
    assert response.status == 502 and b"malformed response" in response.body
    assert h2_proxy.stats.primary_failures == {"bad-response": 1}


async def test_a_stream_the_primary_refused_by_goaway_is_sent_again(h2_proxy: ProxyServer) -> None:
    client = await H2TestClient.connect(h2_proxy.port)
    try:
        response = await client.get("/goaway-once")
    finally:
        await client.close()
    assert response.status == 200 and response.header(b"x-path") == b"/goaway-once"
    assert h2_proxy._ctx.h2_pool.connects == 2  # type: ignore[union-attr]
    assert h2_proxy.stats.primary_failures == {}


async def test_a_silent_primary_times_out_as_504_or_deadline_exceeded(h2_primary: H2TestServer) -> None:
    proxy = await _proxy(f"h2c://127.0.0.1:{h2_primary.port}", first_byte_timeout_s=0.3)
    client = await H2TestClient.connect(proxy.port)
    try:
        plain = await client.get("/silent")
        grpc_call = await client.get("/silent", [(b"content-type", b"application/grpc")])
    finally:
        await client.close()
        await proxy.shutdown(1)
    assert plain.status == 504 and b"first byte timed out" in plain.body
    assert grpc_call.status == 200 and grpc_call.header(b"grpc-status") == b"4"
    assert grpc_call.ended and grpc_call.body == b""
    assert proxy.stats.primary_failures == {"timeout": 2}


async def test_a_client_that_does_not_read_holds_the_primary_back(h2_proxy: ProxyServer) -> None:
    size = 8 * 1024 * 1024
    client = await H2TestClient.connect(h2_proxy.port, auto_ack=False)
    try:
        stream = client.request("GET", f"/big/{size}")
        # The client's initial window (65,535 bytes) fills; nothing more comes until it acknowledges.
        while len(client.responses[stream].body) < 65535:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert len(client.responses[stream].body) == 65535
        session = next(iter(h2_proxy._ctx.h2_sessions))  # type: ignore[union-attr]
        held = sum(len(piece) for forward in session.streams.values() for piece in forward._out)
        # What the proxy holds for the stream is bounded by the window it gave the primary.
        assert held <= STREAM_WINDOW_BYTES
        while not client._done[stream].done():
            client.ack(stream)
            await asyncio.sleep(0.005)
        response = await client.response(stream)
    finally:
        await client.close()
    assert response.body == bytes(range(256)) * (size // 256)


async def test_a_stream_that_never_ends_is_reset_alone(h2_proxy: ProxyServer) -> None:
    client = await H2TestClient.connect(h2_proxy.port)
    try:
        stalled = client.request("POST", "/echo", body=b"part", end=False)
        reset = await client.response(stalled)
        after = await client.get("/after")
    finally:
        await client.close()
    assert reset.reset_code == 0x8 and reset.status == 0
    assert after.status == 200
    assert h2_proxy.stats.h2_errors == {"stream body timeout": 1}
    assert h2_proxy.stats.client_timeouts == {"body": 1}


async def test_malformed_frames_end_their_connection_only(h2_proxy: ProxyServer) -> None:
    bystander = await H2TestClient.connect(h2_proxy.port)
    bad = await H2TestClient.connect(h2_proxy.port, preface=False)
    try:
        # The preface, then a HEADERS frame on stream 0 (a connection error, RFC 9113 6.2).
        bad.send_raw(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x00\x00\x05\x01\x05\x00\x00\x00\x00hello")
        await asyncio.wait_for(bad.closed, 10)
        assert (await bystander.get("/still-here")).status == 200
    finally:
        await bad.close()
        await bystander.close()
    assert h2_proxy.stats.h2_errors == {"protocol error": 1}


async def test_headers_flood_ends_that_connection_only(h2_proxy: ProxyServer) -> None:
    bystander = await H2TestClient.connect(h2_proxy.port)
    flood = await H2TestClient.connect(h2_proxy.port)
    try:
        # The proxy allows 128 open streams; a client ignoring that loses its connection.
        flood.conn.remote_settings.max_concurrent_streams = 10_000
        for _ in range(300):
            flood.request("POST", "/echo", end=False)
        await asyncio.wait_for(flood.closed, 10)
        assert flood.terminated is not None and flood.terminated.error_code == 0xB
        assert (await bystander.get("/still-here")).status == 200
    finally:
        await flood.close()
        await bystander.close()
    assert h2_proxy.stats.h2_errors == {"too many concurrent streams": 1}


@contextlib.asynccontextmanager
async def _client_through_proxy_to(
    primary: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[H2TestClient]:
    """An h2c client of a proxy whose ``h2c://`` primary is ``primary``, a raw server of the test's."""
    server = await asyncio.start_server(primary, "127.0.0.1", 0)
    proxy = await _proxy(f"h2c://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    client = await H2TestClient.connect(proxy.port)
    try:
        yield client
    finally:
        await client.close()
        await proxy.shutdown(1)
        server.close()


async def test_request_bytes_held_for_a_stream_the_primary_resets_go_back_to_the_clients_window() -> None:
    # A primary that takes one window of an upload, acknowledges none of it, and resets the stream:
    # what the proxy held for it (past the primary's window) never leaves, and the client's
    # connection window gets it back; else each such reset would shrink that window for good.
    async def primary(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        # A stream window of 16 KiB: of the 64 KiB the client may send, the proxy holds the rest.
        conn.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16_384}
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        received: dict[int, int] = {}
        with contextlib.suppress(ConnectionError, h2.exceptions.ProtocolError):
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        received[event.stream_id] = received.get(event.stream_id, 0) + event.flow_controlled_length
                        if received[event.stream_id] >= 16_000 and not conn.streams[event.stream_id].closed:
                            conn.reset_stream(event.stream_id, 0x2)
                            # The connection's window reopens (the next stream gets as far), the
                            # stream's never did.
                            conn.acknowledge_received_data(received[event.stream_id], event.stream_id)
                writer.write(conn.data_to_send())
        writer.close()

    async with _client_through_proxy_to(primary) as client:
        before = client.conn.outbound_flow_control_window  # the proxy's connection window, 1 MiB
        # The proxy announces what it gives back once half its window is (h2's rule): at most that
        # much may be owed at a time. Without the credit, the first reset kept 48 KiB for good.
        floor = before - before // 2
        for _ in range(5):
            stream_id = client.request("POST", "/upload", end=False)
            upload = asyncio.ensure_future(client.upload(stream_id, b"u" * 200_000, end=False))
            for _ in range(1000):  # the primary's reset, passed on
                if client.responses[stream_id].reset_code is not None:
                    break
                await asyncio.sleep(0.01)
            assert client.responses[stream_id].reset_code is not None
            upload.cancel()
            with contextlib.suppress(asyncio.CancelledError, h2.exceptions.StreamClosedError):
                await upload
            for _ in range(200):
                if client.conn.outbound_flow_control_window >= floor:
                    break
                await asyncio.sleep(0.01)
            assert client.conn.outbound_flow_control_window >= floor


async def test_a_client_may_have_four_streams_windows_in_flight_on_one_connection_and_no_more() -> None:
    # A primary that reads every upload and acknowledges none of it: past what the primary's own
    # windows took (64 KiB for the connection), every byte the client sent is held by the proxy. The
    # client's connection window is four streams' windows (1 MiB), not HTTP/2's 64 KiB, and it is the
    # bound: four streams of 300,000 bytes each stall at about 1 MiB plus the primary's 64 KiB.
    async def primary(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        with contextlib.suppress(ConnectionError, h2.exceptions.ProtocolError):
            while data := await reader.read(65536):
                conn.receive_data(data)
                writer.write(conn.data_to_send())
        writer.close()

    async with _client_through_proxy_to(primary) as client:
        for _ in range(200):
            if client.conn.outbound_flow_control_window > 65_535:
                break
            await asyncio.sleep(0.01)
        assert client.conn.outbound_flow_control_window == CLIENT_CONNECTION_WINDOW
        streams = [client.request("POST", "/upload", end=False) for _ in range(4)]
        left = dict.fromkeys(streams, 300_000)
        sent = 0
        idle_rounds = 0
        while idle_rounds < 30:  # 0.3 s with nothing more to send: the windows are shut
            moved = 0
            for stream_id in streams:
                size = min(left[stream_id], client.conn.local_flow_control_window(stream_id), 16_384)
                if size > 0:
                    client.send_data(stream_id, b"u" * size)
                    left[stream_id] -= size
                    moved += size
            sent += moved
            idle_rounds = 0 if moved else idle_rounds + 1
            await asyncio.sleep(0.01)
        # Far past RFC 9113's 64 KiB for the connection; within the proxy's window and what the
        # primary's connection window let through.
        assert 4 * CLIENT_STREAM_WINDOW - 65_535 <= sent <= CLIENT_CONNECTION_WINDOW + 65_535


async def test_a_rapid_reset_flood_ends_that_connection_only(h2_proxy: ProxyServer) -> None:
    canceller = await H2TestClient.connect(h2_proxy.port)
    flood = await H2TestClient.connect(h2_proxy.port)
    try:
        # A client that cancels as many calls as it lets finish keeps its connection.
        for _ in range(150):
            assert (await canceller.get("/echo")).status == 200
            canceller.reset(canceller.request("GET", "/echo"))
        # Each stream opened and reset at once (CVE-2023-44487): never more than one open, so
        # MAX_CONCURRENT_STREAMS never stops it, yet each one started a request to the primary.
        for _ in range(1000):
            if flood.terminated is not None or flood.closed.done():
                break
            flood.reset(flood.request("GET", "/echo"))
            await asyncio.sleep(0)
        await asyncio.wait_for(flood.closed, 10)
        assert flood.terminated is not None and flood.terminated.error_code == 0xB
        assert (await canceller.get("/still-here")).status == 200
    finally:
        await flood.close()
        await canceller.close()
    assert h2_proxy.stats.h2_errors == {"rapid reset": 1}


async def test_a_client_that_reads_nothing_cannot_pile_up_answers_to_its_pings(h2_proxy: ProxyServer) -> None:
    bystander = await H2TestClient.connect(h2_proxy.port)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", h2_proxy.port))
    _, writer = await asyncio.open_connection(sock=sock)
    # PINGs, each answered with an ACK of the same size, from a client that never reads one.
    pings = b"".join(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + i.to_bytes(8, "big") for i in range(4096))
    sent = 0
    try:
        writer.write(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        while sent < 256 * 1024 * 1024:  # bounded; the proxy drops it after a few MiB
            writer.write(pings)
            await asyncio.wait_for(writer.drain(), 10)
            sent += len(pings)
        raise AssertionError(f"{sent} bytes of PINGs and the connection still stands")
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        writer.close()
    assert sent < 64 * 1024 * 1024
    assert h2_proxy.stats.h2_errors == {"unread output": 1}
    try:
        assert (await bystander.get("/still-here")).status == 200
    finally:
        await bystander.close()


async def test_a_header_list_over_the_limit_ends_its_connection(h2_proxy: ProxyServer) -> None:
    client = await H2TestClient.connect(h2_proxy.port)
    try:
        client.request("GET", "/big-head", [(b"x-filler", b"a" * 70_000)])
        await asyncio.wait_for(client.closed, 10)
    finally:
        await client.close()
    assert h2_proxy.stats.h2_errors == {"protocol error": 1}


async def test_a_preface_that_is_neither_http1_nor_http2_gets_400(h2_proxy: ProxyServer) -> None:
    (response,) = await raw_request(h2_proxy.port, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    assert response.status == 400


async def test_http1_keeps_working_on_the_same_port(h2_proxy: ProxyServer) -> None:
    # The primary speaks HTTP/2 only: an HTTP/1 client's request goes to it as a stream
    # (tests/proxy/test_h1_to_h2_functional.py has the details).
    (response,) = await raw_request(h2_proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 200 and response.body == b"echo:"


# --- an HTTP/1 primary behind an HTTP/2 client -------------------------------------------------------------


@pytest.fixture
async def http1_primary() -> AsyncIterator[int]:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=b"h1:" + body, headers={"X-Seen-Host": request.host, "X-Method": request.method})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_h2_client_in_front_of_an_http1_primary(http1_primary: int) -> None:
    proxy = await _proxy(f"http://127.0.0.1:{http1_primary}")
    client = await H2TestClient.connect(proxy.port)
    try:
        get = await client.get("/a")
        post_id = client.request("POST", "/b", end=False)
        await client.upload(post_id, b"x" * 200_000)
        post = await client.response(post_id)
        (h1,) = await raw_request(proxy.port, b"GET /h1 HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        await client.close()
        await proxy.shutdown(1)
    assert (get.status, get.body, get.header(b"x-seen-host")) == (200, b"h1:", b"test.local")
    assert (post.status, post.body) == (200, b"h1:" + b"x" * 200_000)
    assert post.header(b"x-method") == b"POST"
    assert h1.status == 200 and h1.body == b"h1:"


async def test_a_pooled_http1_connection_the_primary_dropped_is_retried_fresh() -> None:
    # The primary answers the first request on each connection and drops the connection at the
    # second one without a byte: the proxy finds out only when it reuses the connection.
    writers: list[asyncio.StreamWriter] = []

    async def primary(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(primary, "127.0.0.1", 0)
    proxy = await _proxy(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    client = await H2TestClient.connect(proxy.port)
    try:
        first = await client.get("/one")
        second = await client.get("/two")
    finally:
        await client.close()
        await proxy.shutdown(1)
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()
    assert (first.status, first.body) == (200, b"ok")
    assert (second.status, second.body) == (200, b"ok")
    assert len(writers) == 2
    assert proxy.stats.primary_failures == {}


# --- TLS with ALPN ---------------------------------------------------------------------------------------


async def test_alpn_h2_and_http1_on_one_tls_port(pki: Pki, h2_primary: H2TestServer) -> None:  # noqa: F811
    server_context = pki.server_context()
    server_context.set_alpn_protocols(["h2", "http/1.1"])
    proxy = await _proxy(f"h2c://127.0.0.1:{h2_primary.port}", ssl_context=server_context)
    try:
        client_context = pki.client_context()
        client_context.set_alpn_protocols(["h2"])
        client = await H2TestClient.connect(proxy.port, ssl_context=client_context)
        response = await client.get("/over-tls")
        await client.close()
        assert response.status == 200 and response.header(b"x-path") == b"/over-tls"
        assert proxy.stats.h2_connections == 1
        # A client that offers only http/1.1 is served HTTP/1.1 on the same port.
        h1_context = pki.client_context()
        h1_context.set_alpn_protocols(["http/1.1"])
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, ssl=h1_context,
                                                       server_hostname="localhost")  # fmt: skip
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object.selected_alpn_protocol() == "http/1.1"
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = await reader.readline()
        writer.close()
        assert head.startswith(b"HTTP/1.1 200")  # relayed to the HTTP/2 primary as a stream
    finally:
        await proxy.shutdown(1)


def test_h2c_urls_for_the_primary_and_shadows(tmp_path: Path) -> None:
    from shadowtap.proxy.config import ProxyConfig
    from shadowtap.recorder.errors import ConfigError

    assert ProxyConfig.from_mapping({"primary": "h2c://127.0.0.1:50051"}).primary == "h2c://127.0.0.1:50051"
    config = ProxyConfig.from_mapping(
        {"primary": "http://127.0.0.1:1", "shadows": [{"name": "v2", "url": "h2c://127.0.0.1:2"}]}
    )
    assert config.shadows[0].url == "h2c://127.0.0.1:2"  # the mirror speaks HTTP/2 to it
    with pytest.raises(ConfigError, match="must start with http://, https:// or h2c://"):
        ProxyConfig.from_mapping({"primary": "http://127.0.0.1:1", "shadows": [{"name": "v2", "url": "h2://x"}]})


_HEAD = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"test.local"), (b":path", b"/echo")]


@pytest.mark.parametrize(
    "fields",
    [
        [*_HEAD, (b"X-Upper", b"1")],
        [*_HEAD, (b"connection", b"keep-alive")],
        [*_HEAD, (b"te", b"gzip")],
        [*_HEAD, (b"x-split", b"a\r\nx-smuggled: 1")],
        [*_HEAD, (b"x-pad", b" padded")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b"x-early", b"1"), (b":path", b"/echo"), (b":authority", b"a")],
        [*_HEAD, (b":path", b"/twice")],
        [*_HEAD, (b":status", b"200")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/echo")],
        [*_HEAD, (b"host", b"elsewhere.local")],
    ],
    ids=[
        "uppercase",
        "connection",
        "te",
        "crlf",
        "whitespace",
        "pseudo-late",
        "pseudo-twice",
        "status",
        "no-path",
        "empty-path",
        "no-authority",
        "host-differs",
    ],
)
async def test_a_malformed_request_resets_its_stream_only(h2_proxy: ProxyServer, fields: list[Header]) -> None:
    """RFC 9113 8.1.1: a malformed request is a stream error (PROTOCOL_ERROR); the connection serves on."""
    client = await H2TestClient.connect(h2_proxy.port)
    client.conn.config.validate_outbound_headers = False
    client.conn.config.normalize_outbound_headers = False
    try:
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, fields, end_stream=True)
        client.responses[stream_id] = H2Response()
        client._done[stream_id] = asyncio.get_running_loop().create_future()
        client.flush()
        bad = await client.response(stream_id)
        good = await client.get("/echo")
    finally:
        await client.close()
    assert bad.reset_code == 0x1 and bad.status == 0
    assert good.status == 200 and client.terminated is None
    assert h2_proxy.stats.h2_errors == {"malformed request": 1}


async def test_malformed_trailers_reset_their_stream_only(h2_proxy: ProxyServer) -> None:
    client = await H2TestClient.connect(h2_proxy.port)
    client.conn.config.validate_outbound_headers = False
    try:
        stream_id = client.request("POST", "/echo", [(b"te", b"trailers")], b"payload", end=False)
        client.end(stream_id, [(b":path", b"/elsewhere")])
        bad = await client.response(stream_id)
        good = await client.get("/echo")
    finally:
        await client.close()
    assert bad.reset_code == 0x1
    assert good.status == 200
    assert h2_proxy.stats.h2_errors == {"malformed request": 1}
