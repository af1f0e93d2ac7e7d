"""HTTP/1.1 clients in front of an HTTP/2 primary (``h2c://``): each request goes to the primary as
a stream on the HTTP/2 pool and its answer comes back as HTTP/1.1 (status, fields, body; trailers as
a chunked trailer section when the client sent ``TE: trailers``, else dropped), against real peers: a
plain HTTP/2 server (tests/wire/h2peer.py), a grpcio server spoken to by hand over HTTP/1.1, an
aiohttp shadow and the tape."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web

from shadowtap.proxy.app import ProxyApp
from shadowtap.proxy.config import ProxyConfig
from shadowtap.proxy.forward import ForwardSettings
from shadowtap.proxy.server import ProxyServer
from shadowtap.recorder import TapeReader
from shadowtap.recorder.model import Response
from shadowtap.wire.grpc import split_messages
from shadowtap.wire.h2 import STREAM_WINDOW_BYTES
from tests.grpc_fixtures import CompiledShop, compile_shop
from tests.grpc_fixtures.server import make_servicer, start_catalog
from tests.proxy.conftest import AppUpstream, raw_head_request, raw_request
from tests.proxy.test_server_tls_functional import Pki, pki  # noqa: F401  (the fixture)
from tests.shadowtap.test_cmd_diff_functional import run_cli
from tests.wire.h2peer import H2TestServer, Responder

Header = tuple[bytes, bytes]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> CompiledShop:
    return compile_shop(tmp_path_factory.mktemp("shop"))


@pytest.fixture
async def h2_primary() -> AsyncIterator[H2TestServer]:
    async def handler(headers: list[Header], body: bytes, trailers: list[Header], reply: Responder) -> None:
        fields = dict(headers)
        path = fields[b":path"]
        if fields[b":method"] == b"HEAD":
            reply.head(200, [(b"content-length", b"1024")], end=True)
        elif path == b"/trailers":
            reply.head(200, [(b"content-type", b"text/plain")])
            await reply.data(b"body-" + body)
            reply.trailers([(b"x-checksum", b"abc")])
        elif path.startswith(b"/big/"):
            size = int(path[5:])
            reply.head(200, [(b"content-length", b"%d" % size)])
            await reply.data(bytes(range(256)) * (size // 256), end=True)
        elif path == b"/reset":
            reply.reset(0x2)
        elif path == b"/silent":
            await asyncio.Event().wait()
        else:
            names = b",".join(name for name, _ in headers)
            echo = [(b"x-path", path), (b"x-method", fields[b":method"]), (b"x-authority", fields[b":authority"]),
                    (b"x-forwarded-for", fields.get(b"x-forwarded-for", b"")), (b"x-te", fields.get(b"te", b"")),
                    (b"x-names", names)]  # fmt: skip
            reply.head(200, echo)
            await reply.data(b"echo:" + body, end=True)

    server = await H2TestServer(handler).start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def proxy(h2_primary: H2TestServer) -> AsyncIterator[ProxyServer]:
    server = ProxyServer(ForwardSettings(primary=f"h2c://127.0.0.1:{h2_primary.port}"))
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.shutdown(1)


async def _exchange(port: int, request: bytes, timeout_s: float = 10) -> bytes:
    """Send ``request`` (which asks for ``Connection: close``) and read the raw answer to the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        data = b""
        async with asyncio.timeout(timeout_s):
            while True:
                piece = await reader.read(65536)
                if not piece:
                    break
                data += piece
        return data
    finally:
        writer.close()


async def test_an_http1_request_reaches_an_h2c_primary_and_gets_its_answer(proxy: ProxyServer) -> None:
    request = (
        b"POST /echo?q=1 HTTP/1.1\r\nHost: shop.local\r\nContent-Length: 7\r\nConnection: keep-alive, X-Hop\r\n"
        b"X-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Custom: kept\r\n\r\npayload"
    )
    (response,) = await raw_request(proxy.port, request)
    assert response.status == 200 and response.reason == b"OK"
    assert response.body == b"echo:payload"
    headers = {k.lower(): v for k, v in response.headers}
    assert headers[b"x-path"] == b"/echo?q=1"
    assert headers[b"x-method"] == b"POST"
    assert headers[b"x-authority"] == b"shop.local"
    assert headers[b"x-forwarded-for"] == b"127.0.0.1"
    # Hop-by-hop fields (and those Connection lists) stay on the HTTP/1 hop; the rest goes on.
    names = headers[b"x-names"].split(b",")
    assert b"x-custom" in names and b"content-length" in names
    for hop in (b"connection", b"keep-alive", b"x-hop", b"host", b"te"):
        assert hop not in names
    # No Content-Length from the primary: the HTTP/1.1 client gets the body chunked.
    assert headers[b"transfer-encoding"] == b"chunked"
    assert proxy.stats.primary_failures == {}


async def test_keep_alive_pipelining_and_a_chunked_upload(proxy: ProxyServer) -> None:
    request = (
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /two HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    responses = await raw_request(proxy.port, request, responses=3)
    assert [r.status for r in responses] == [200, 200, 200]
    assert [r.body for r in responses] == [b"echo:", b"echo:abcde", b"echo:"]
    assert [dict(r.headers)[b"x-path"] for r in responses] == [b"/one", b"/two", b"/three"]


async def test_trailers_go_to_a_client_that_asked_for_them_and_are_dropped_otherwise(proxy: ProxyServer) -> None:
    asked = await _exchange(
        proxy.port,
        b"POST /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    head, _, body = asked.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in head
    assert body == b"8\r\nbody-abc\r\n0\r\nx-checksum: abc\r\n\r\n"

    (plain,) = await raw_request(
        proxy.port, b"POST /trailers HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    )
    assert plain.status == 200 and plain.body == b"body-abc"
    raw = await _exchange(
        proxy.port, b"POST /trailers HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    )
    assert raw.endswith(b"8\r\nbody-abc\r\n0\r\n\r\n") and b"x-checksum" not in raw


async def test_a_large_answer_beyond_the_stream_window_and_head(proxy: ProxyServer) -> None:
    size = 5 * 1024 * 1024  # several times the 1 MiB stream window: acknowledged as written
    (response,) = await raw_request(proxy.port, b"GET /big/%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
    assert response.status == 200 and response.body == bytes(range(256)) * (size // 256)
    assert dict(response.headers)[b"content-length"] == b"%d" % size
    head = await raw_head_request(proxy.port, b"HEAD /big/1024 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert b"content-length: 1024\r\n" in head


async def test_a_large_upload_streams_to_the_primary(proxy: ProxyServer) -> None:
    size = 3 * 1024 * 1024
    body = bytes(range(256)) * (size // 256)
    request = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size + body
    (response,) = await raw_request(proxy.port, request)
    assert response.status == 200 and response.body == b"echo:" + body


async def test_a_reset_stream_gives_502_and_an_upgrade_is_refused(proxy: ProxyServer) -> None:
    (reset,) = await raw_request(proxy.port, b"GET /reset HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reset.status == 502
    (upgrade,) = await raw_request(
        proxy.port, b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert upgrade.status == 502 and b"HTTP/2" in upgrade.body


async def test_an_h2c_primary_that_is_down_gives_502() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ProxyServer(ForwardSettings(primary=f"h2c://127.0.0.1:{port}", connect_timeout_s=2))
    await server.start("127.0.0.1", 0)
    try:
        (response,) = await raw_request(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        await server.shutdown(1)
    assert response.status == 502 and b"cannot connect to primary" in response.body


def _frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


async def test_a_grpcio_primary_answers_an_http1_client_with_trailers(shop: CompiledShop) -> None:
    catalog, port = await start_catalog(shop)
    server = ProxyServer(ForwardSettings(primary=f"h2c://127.0.0.1:{port}"))
    await server.start("127.0.0.1", 0)
    try:
        call = _frame(shop.pb2.GetProductRequest(id="p7").SerializeToString())
        head = (
            b"POST /shop.Catalog/GetProduct HTTP/1.1\r\nHost: x\r\nContent-Type: application/grpc\r\n"
            b"TE: trailers\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(call)
        )
        raw = await _exchange(server.port, head + call)
        missing = _frame(shop.pb2.GetProductRequest(id="missing").SerializeToString())
        (not_found,) = await raw_request(server.port, head.replace(b"%d" % len(call), b"%d" % len(missing)) + missing)
    finally:
        await server.shutdown(1)
        await catalog.stop(None)
    answer_head, _, body = raw.partition(b"\r\n\r\n")
    assert answer_head.startswith(b"HTTP/1.1 200 OK") and b"content-type: application/grpc" in answer_head
    chunks, _, trailer_section = body.rpartition(b"\r\n0\r\n")
    assert b"grpc-status: 0" in trailer_section
    size, _, message = chunks.partition(b"\r\n")
    (framed,) = split_messages(message[: int(size, 16)])
    assert shop.pb2.Product.FromString(framed.data).name == "p7 (v1)"
    # A trailers-only answer (a gRPC error) keeps its status in the head.
    assert not_found.status == 200 and dict(not_found.headers)[b"grpc-status"] == b"5"


class _Shadow(AppUpstream):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.got = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path_qs, dict(request.headers)))
        self.got.set()
        return web.Response(text="shadow answer")


async def test_an_http1_exchange_to_an_h2c_primary_is_mirrored_and_recorded(
    h2_primary: H2TestServer, tmp_path: Path
) -> None:
    shadow = await _Shadow().start()
    tape = tmp_path / "tape"
    config: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "off"},
        "primary": f"h2c://127.0.0.1:{h2_primary.port}",
        "shadows": {"v2": shadow.url},
        "record": {"tape": str(tape), "join_timeout_s": 5},
    }
    app = ProxyApp(ProxyConfig.from_mapping(config))
    await app.start()
    port = int(app.listen_url.rsplit(":", 1)[1])
    try:
        (plain,) = await raw_request(port, b"GET /items?page=2 HTTP/1.1\r\nHost: shop.local\r\n\r\n")
        trailed = await _exchange(
            port,
            b"POST /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nContent-Length: 1\r\nConnection: close\r\n\r\nz",
        )
        async with asyncio.timeout(10):
            await shadow.got.wait()
    finally:
        await app.shutdown()
        await shadow.close()
    assert plain.status == 200 and plain.body == b"echo:"
    assert trailed.endswith(b"0\r\nx-checksum: abc\r\n\r\n")
    # The GET went to the shadow (HTTP/1) with the marker; the POST, not opted in, did not.
    assert [path for path, _ in shadow.seen] == ["/items?page=2"]
    assert shadow.seen[0][1]["X-Shadowtap-Shadow"] == "1"
    taped = {ex.request.target: ex for ex in TapeReader(tape)}
    assert sorted(taped) == ["/items?page=2", "/trailers"]
    get = taped["/items?page=2"]
    assert get.request.http_version == "1.1" and get.decisions == {"v2": "mirrored"}
    assert isinstance(get.primary, Response) and get.primary.http_version == "2" and get.primary.body == b"echo:"
    assert isinstance(get.shadows["v2"], Response) and get.shadows["v2"].body == b"shadow answer"
    post = taped["/trailers"]
    assert isinstance(post.primary, Response) and post.primary.trailers == ((b"x-checksum", b"abc"),)
    assert post.request.body == b"z" and post.primary.body == b"body-z"
    # The tape diffs like any other: the shadow's answer differs from the primary's in its body.
    result = run_cli("diff", tape, "--min-samples", "1", "--no-progress", "--json", tmp_path / "diff.json")
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads((tmp_path / "diff.json").read_text())
    assert report["compared"] == 1 and report["differing"] == 1


async def test_expect_100_continue_is_answered_by_the_proxy(proxy: ProxyServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\nConnection: close\r\n\r\n"
        )
        async with asyncio.timeout(10):
            interim = await reader.readuntil(b"\r\n\r\n")
            writer.write(b"body")  # only once the client was told to go on, as a client waiting for it does
            rest = await reader.read(-1)
    finally:
        writer.close()
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b"echo:body\r\n0\r\n\r\n")
    names = next(line for line in rest.split(b"\r\n") if line.startswith(b"x-names: "))
    assert b"expect" not in names


async def test_an_https_primary_with_primary_http2_gets_http1_clients_over_tls_h2(
    shop: CompiledShop,
    pki: Pki,  # noqa: F811
) -> None:
    catalog = grpc.aio.server()
    shop.pb2_grpc.add_CatalogServicer_to_server(make_servicer(shop), catalog)
    credentials = grpc.ssl_server_credentials([(pki.key_file.read_bytes(), pki.cert_file.read_bytes())])
    port = catalog.add_secure_port("127.0.0.1:0", credentials)
    await catalog.start()
    settings = ForwardSettings(primary=f"https://localhost:{port}", primary_http2=True, ca_file=str(pki.ca_file))
    server = ProxyServer(settings)
    await server.start("127.0.0.1", 0)
    try:
        call = _frame(shop.pb2.GetProductRequest(id="tls").SerializeToString())
        raw = await _exchange(
            server.port,
            b"POST /shop.Catalog/GetProduct HTTP/1.1\r\nHost: x\r\nContent-Type: application/grpc\r\nTE: trailers\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(call) + call,
        )
    finally:
        await server.shutdown(1)
        await catalog.stop(None)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"grpc-status: 0" in body.rpartition(b"\r\n0\r\n")[2]  # the trailers, asked for with TE
    assert b"tls (v1)" in body


async def test_a_client_that_does_not_read_holds_the_h2_primary_back(proxy: ProxyServer) -> None:
    size = 32 * 1024 * 1024
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", proxy.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(b"GET /big/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % size)
        ctx = proxy._ctx
        assert ctx is not None
        async with asyncio.timeout(10):
            while not ctx.connections or not next(iter(ctx.connections)).write_paused:
                await asyncio.sleep(0.01)
        client = next(iter(ctx.connections))
        await asyncio.sleep(0.3)  # what the primary may still send, it has sent by now
        assert client.transport is not None
        # The proxy holds at most what one stream window let the primary send past the pause.
        assert client.transport.get_write_buffer_size() <= STREAM_WINDOW_BYTES + 256 * 1024
        async with asyncio.timeout(30):
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(size)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: %d" % size in head
    assert body == bytes(range(256)) * (size // 256)


async def test_a_silent_primary_times_out_as_504_and_http10_gets_a_close_delimited_body(
    h2_primary: H2TestServer,
) -> None:
    server = ProxyServer(ForwardSettings(primary=f"h2c://127.0.0.1:{h2_primary.port}", first_byte_timeout_s=0.3))
    await server.start("127.0.0.1", 0)
    try:
        (silent,) = await raw_request(server.port, b"GET /silent HTTP/1.1\r\nHost: x\r\n\r\n")
        old = await _exchange(server.port, b"GET /old HTTP/1.0\r\n\r\n")
    finally:
        await server.shutdown(1)
    assert silent.status == 504 and b"first byte timed out" in silent.body
    assert server.stats.primary_failures == {"timeout": 1}
    head, _, body = old.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in head
    assert b"Transfer-Encoding" not in head and body == b"echo:"
