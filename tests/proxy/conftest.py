"""Shared fixtures for the proxy data-path tests: a real aiohttp primary, a running ProxyServer, and a
raw HTTP/1.1 client that shows exactly what went over the wire (no client library in between)."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Self

import httptools
import pytest
import uvloop
from aiohttp import WSMsgType, web

from shadowtap.proxy.forward import ForwardSettings
from shadowtap.proxy.server import ProxyServer
from shadowtap.proxy.stages import ProxiedExchange
from shadowtap.wire.client import Dialer, Http1Connection, dial_tcp

# The data-path tests run on uvloop, the loop the proxy runs on in production (its transports are
# not asyncio's classes and behave differently at the edges); other proxy tests keep the default.
_UVLOOP_MODULES = (
    "test_server",
    "test_forward",
    "test_http1",
    "test_upstream",
    "test_upgrade",
    "test_transparency",
    "test_smuggling",
    "test_hostile",
    "test_h2",
)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Callable[[], Any]]:
    if item.path.name.startswith(_UVLOOP_MODULES):
        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


FIXED_DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
BIG = bytes(range(256)) * 4096  # 1 MiB of every byte value


@dataclass
class RawResponse:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunked: bool = False

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class _ResponseCollector:
    def __init__(self) -> None:
        self.responses: list[RawResponse] = []
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self.parser: Any = None

    def on_message_begin(self) -> None:
        self._reason = b""
        self._headers = []
        self._body = []

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        chunked = any(k.lower() == b"transfer-encoding" for k, _ in self._headers)
        self.responses.append(
            RawResponse(self.parser.get_status_code(), self._reason, self._headers, b"".join(self._body), chunked)
        )


async def raw_request(port: int, request: bytes, *, responses: int = 1, timeout_s: float = 10.0) -> list[RawResponse]:
    """Send ``request`` bytes as they are, read ``responses`` responses (or until EOF)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    collector = _ResponseCollector()
    parser = httptools.HttpResponseParser(collector)
    collector.parser = parser
    try:
        writer.write(request)
        async with asyncio.timeout(timeout_s):
            while len(collector.responses) < responses:
                data = await reader.read(65536)
                if not data:
                    break
                parser.feed_data(data)
    finally:
        writer.close()
    return collector.responses


async def raw_head_request(port: int, request: bytes, timeout_s: float = 10.0) -> bytes:
    """Send a request and read until the peer closes (for HEAD and other bodiless checks)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(timeout_s):
            return await reader.read(-1)
    finally:
        writer.close()


class RecordingStage:
    """A real Stage that keeps what it was told, to check the seam."""

    name = "recording"

    def __init__(self) -> None:
        self.requests: list[ProxiedExchange] = []
        self.exchanges: list[ProxiedExchange] = []
        self.request_bodies: list[bytes | None] = []

    def request_complete(self, exchange: ProxiedExchange) -> None:
        self.requests.append(exchange)
        self.request_bodies.append(exchange.request_body)

    def exchange_complete(self, exchange: ProxiedExchange) -> None:
        self.exchanges.append(exchange)

    async def aclose(self, timeout_s: float) -> None:
        return None


async def _fixed_date(request: web.Request, response: web.StreamResponse) -> None:
    # A fixed Date makes direct and proxied answers byte-comparable across a second boundary.
    response.headers["Date"] = FIXED_DATE


def build_primary_app() -> web.Application:
    """The primary used by the transparency matrix: deterministic answers for every shape."""
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.on_response_prepare.append(_fixed_date)

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        lines = [f"{request.method} {request.path_qs}".encode()]
        lines += [k + b": " + v for k, v in request.raw_headers]
        return web.Response(
            body=b"\n".join(lines) + b"\n\n" + body,
            headers={"X-Echo-Length": str(len(body))},
            content_type="application/octet-stream",
        )

    async def utf8(request: web.Request) -> web.Response:
        return web.Response(text="héllo wörld ✓ 日本", content_type="text/plain", charset="utf-8")

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b'{"compressed": true}' * 50, mtime=0),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"X-Kind": "chunked"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(5):
            await response.write(f"piece {i}\n".encode())
        await response.write_eof()
        return response

    async def streaming(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(4):
            await response.write(f"tick {i}\n".encode())
            await asyncio.sleep(0.05)
        await response.write_eof()
        return response

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=BIG, content_type="application/octet-stream")

    async def no_content(request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"X-Why": "nothing"})

    async def not_modified(request: web.Request) -> web.Response:
        return web.Response(status=304, headers={"ETag": '"v1"'})

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/echo?from=redirect"})

    async def repeated(request: web.Request) -> web.Response:
        response = web.Response(text="repeated", headers={"Date": FIXED_DATE})
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        response.headers.add("X-Mixed-Case", "One")
        response.headers.add("x-mixed-case", "two")
        response.headers.add("Connection", "X-Hop")
        response.headers.add("X-Hop", "must not pass")
        return response

    async def teapot(request: web.Request) -> web.Response:
        return web.Response(status=418, reason="I'm A Teapot Indeed", text="short and stout")

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/utf8", utf8)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/streaming", streaming)
    app.router.add_get("/big", big)
    app.router.add_route("*", "/204", no_content)
    app.router.add_get("/304", not_modified)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/repeated", repeated)
    app.router.add_get("/teapot", teapot)
    app.router.add_get("/ws", websocket)
    return app


class AppUpstream:
    """A real aiohttp server on 127.0.0.1, port 0, answering every method and path with ``handle``;
    subclasses keep what they need of each request. ``await start()``, then ``url``; ``close()``."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[int]:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@asynccontextmanager
async def running_proxy(
    primary_port: int,
    *,
    stages: list[Any] | None = None,
    observers: list[Any] | None = None,
    scheme: str = "http",
    dial: Dialer | None = None,
    **settings: Any,
) -> AsyncIterator[ProxyServer]:
    forward = ForwardSettings(primary=f"{scheme}://127.0.0.1:{primary_port}", **settings)
    server = ProxyServer(forward, stages or [], observers=observers or [], dial=dial)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.shutdown(2.0)


@dataclass
class Setup:
    primary_port: int
    proxy: ProxyServer
    stage: RecordingStage = field(default_factory=RecordingStage)

    @property
    def proxy_port(self) -> int:
        return self.proxy.port


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    """The matrix primary and a proxy in front of it with a recording stage."""
    stage = RecordingStage()
    async with serve_app(build_primary_app()) as primary_port, running_proxy(primary_port, stages=[stage]) as proxy:
        yield Setup(primary_port, proxy, stage)


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A server's connection handler that accepts and hangs up at once."""
    writer.transport.abort()


@pytest.fixture
def dials_resume_after_loss() -> Dialer:
    """A dialer (for ``running_proxy(dial=...)`` or a mirror stage) that hands each fresh upstream
    connection to the task that dialled it only once it is lost: the race where a server accepts and
    hangs up before that task resumes, taken every time instead of now and then. Real sockets; only
    the dial's return is held back. Injected, not patched, so compiled callers take it too."""

    async def dial_then_lose(
        factory: Callable[[], Http1Connection],
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
    ) -> Http1Connection:
        conn = await dial_tcp(factory, host, port, ssl_context, server_hostname)
        async with asyncio.timeout(5):
            while not conn.closed:
                await asyncio.sleep(0.005)
        return conn

    return dial_then_lose


class LoggingPrimary:
    """A keep-alive HTTP/1.1 server on a raw socket: parses requests with llhttp, keeps the exact bytes
    it received, and answers each in order with its path as body and cookie. The answer to
    ``/smuggled`` comes late, so the connection has gone back to the proxy's pool when it is sent."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.paths: list[bytes] = []
        self.heads: list[list[tuple[bytes, bytes]]] = []
        #: What the primary could not parse: the proxy must never forward such bytes.
        self.parse_errors: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        owner = self

        class Collector:
            def __init__(self) -> None:
                self.url = b""
                self.headers: list[tuple[bytes, bytes]] = []
                self.last_length = 0

            def on_url(self, url: bytes) -> None:
                self.url += url

            def on_header(self, name: bytes, value: bytes) -> None:
                self.headers.append((name, value))

            def on_message_complete(self) -> None:
                owner.paths.append(self.url)
                owner.heads.append(self.headers)
                lengths = [int(v) for k, v in self.headers if k.lower() == b"content-length"]
                self.last_length = lengths[0] if lengths else 0
                queue.put_nowait(self.url)
                self.url = b""
                self.headers = []

        collector = Collector()
        parser = httptools.HttpRequestParser(collector)

        async def answer() -> None:
            while True:
                path = await queue.get()
                if path == b"/smuggled":
                    await asyncio.sleep(0.05)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nSet-Cookie: owner=%s\r\nContent-Length: %d\r\n\r\n%s" % (path, len(path), path)
                )
                await writer.drain()

        answering = asyncio.create_task(answer())
        skip = 0  # body bytes of a declined Upgrade offer still to drop (llhttp leaves them to us)
        try:
            while data := await reader.read(65536):
                self.received += data
                try:
                    while data:
                        if skip:
                            taken = min(skip, len(data))
                            skip -= taken
                            data = data[taken:]
                            continue
                        try:
                            parser.feed_data(data)
                            data = b""
                        except httptools.HttpParserUpgrade as exc:
                            # The upgrade is declined; after its body comes the next request.
                            skip = collector.last_length
                            data = data[exc.args[0] :]
                except httptools.HttpParserError as exc:
                    self.parse_errors.append(f"{exc!r} in {bytes(self.received)[-200:]!r}")
                    break
            await asyncio.sleep(0.2)  # let late answers go out before closing
        except ConnectionError:
            pass
        finally:
            answering.cancel()
            writer.close()


@asynccontextmanager
async def logging_primary() -> AsyncIterator[tuple[int, LoggingPrimary]]:
    primary = LoggingPrimary()
    handlers: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await primary.handle(reader, writer)
        finally:
            handlers.discard(task)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], primary
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
