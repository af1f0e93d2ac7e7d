"""Both HTTP transports on real sockets: what goes out, what comes back, how failures are classed."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from shadowtap.recorder import Failure, FailureKind, Response
from shadowtap.replayer.transport import AiohttpTransport, ClientSettings, HttpTransport, SendResult, make_transport

TransportFactory = Callable[..., HttpTransport | AiohttpTransport]
CLIENTS = [pytest.param(HttpTransport, id="raw"), pytest.param(AiohttpTransport, id="aiohttp")]


class Server:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, list[tuple[bytes, bytes]], bytes]] = []
        self.peers: set[object] = set()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.method, request.path_qs, list(request.raw_headers), body))
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        if request.path == "/gzip":
            return web.Response(body=gzip.compress(b"hello " * 50), headers={"Content-Encoding": "gzip"})
        if request.path == "/head":
            return web.Response(body=b"x" * 1000)
        if request.path == "/chunked":
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for part in (b"one,", b"two,", b"three"):
                await resp.write(part)
            await resp.write_eof()
            return resp
        if request.path == "/close":
            return web.Response(text="bye", headers={"Connection": "close"})
        if request.path == "/slow":
            await asyncio.sleep(1)
        if request.path == "/boom":
            return web.Response(status=503, text="down")
        return web.Response(text=f"{request.method} {request.path_qs}")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", srv.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield srv
    await runner.cleanup()


@pytest.mark.parametrize("factory", CLIENTS)
async def test_headers_go_out_in_recorded_order_case_and_duplicates(server: Server, factory: TransportFactory) -> None:
    headers = ((b"X-B", b"2"), (b"x-a", b"1"), (b"X-Dup", b"first"), (b"X-Dup", b"second"))
    async with factory(server.url) as transport:
        result = await transport.send("GET", "/p?q=1&q=2", headers, b"")
    assert isinstance(result.outcome, Response) and result.outcome.status == 200
    assert result.outcome.body == b"GET /p?q=1&q=2"
    ((_, path, raw, _),) = server.requests
    mine = [(k, v) for k, v in raw if k.lower().startswith(b"x-")]
    assert mine == list(headers)
    assert path == "/p?q=1&q=2"
    assert not any(k.lower() in (b"user-agent", b"accept-encoding") for k, _ in raw)


@pytest.mark.parametrize("factory", CLIENTS)
async def test_bodies_both_ways_stay_as_on_the_wire(server: Server, factory: TransportFactory) -> None:
    async with factory(server.url) as transport:
        posted = await transport.send("POST", "/post", ((b"Content-Type", b"application/json"),), b'{"a":1}')
        zipped = await transport.send("GET", "/gzip", ((b"Accept-Encoding", b"gzip"),), b"")
        chunked = await transport.send("GET", "/chunked", (), b"")
    assert server.requests[0][3] == b'{"a":1}'
    assert isinstance(posted.outcome, Response)
    assert isinstance(zipped.outcome, Response) and gzip.decompress(zipped.outcome.body) == b"hello " * 50
    assert zipped.outcome.header(b"content-encoding") == b"gzip"
    assert isinstance(chunked.outcome, Response) and chunked.outcome.body == b"one,two,three"


@pytest.mark.parametrize("factory", CLIENTS)
async def test_keep_alive_head_and_connection_close(server: Server, factory: TransportFactory) -> None:
    async with factory(server.url, ClientSettings(max_connections=1)) as transport:
        for _ in range(5):
            assert isinstance((await transport.send("GET", "/", (), b"")).outcome, Response)
        head = await transport.send("HEAD", "/head", (), b"")
        after_head = await transport.send("GET", "/after", (), b"")
        closing = await transport.send("GET", "/close", (), b"")
        after_close = await transport.send("GET", "/again", (), b"")
    assert len(server.peers) == 2  # one connection until the server said close, then a new one
    assert isinstance(head.outcome, Response) and head.outcome.status == 200 and head.outcome.body == b""
    assert head.outcome.header(b"content-length") == b"1000"
    assert isinstance(after_head.outcome, Response) and after_head.outcome.body == b"GET /after"
    assert isinstance(closing.outcome, Response) and closing.outcome.body == b"bye"
    assert isinstance(after_close.outcome, Response) and after_close.outcome.body == b"GET /again"
    assert after_head.first_byte_ns is not None


@pytest.mark.parametrize("factory", CLIENTS)
async def test_timeouts_refusals_and_5xx_are_outcomes_not_exceptions(server: Server, factory: TransportFactory) -> None:
    async with factory(server.url, ClientSettings(timeout_s=0.3)) as transport:
        slow = await transport.send("GET", "/slow", (), b"")
        boom = await transport.send("GET", "/boom", (), b"")
        fine = await transport.send("GET", "/", (), b"")
    assert isinstance(slow.outcome, Failure) and slow.outcome.kind == FailureKind.TIMEOUT
    assert isinstance(boom.outcome, Response) and boom.outcome.status == 503
    assert isinstance(fine.outcome, Response) and fine.outcome.status == 200
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with factory(f"http://127.0.0.1:{port}") as transport:
        refused = await transport.send("GET", "/", (), b"")
    assert isinstance(refused.outcome, Failure) and refused.outcome.kind == FailureKind.CONNECT_ERROR


async def raw_server(reply: bytes) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("factory", CLIENTS)
async def test_a_cut_response_is_a_reset_and_garbage_is_a_bad_response(factory: TransportFactory) -> None:
    srv, url = await raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
    async with srv, factory(url) as transport:
        cut = await transport.send("GET", "/", (), b"")
    assert isinstance(cut.outcome, Failure) and cut.outcome.kind == FailureKind.RESET
    srv, url = await raw_server(b"this is not http at all\r\n\r\n")
    async with srv, factory(url) as transport:
        garbage = await transport.send("GET", "/", (), b"")
    assert isinstance(garbage.outcome, Failure)
    assert garbage.outcome.kind in (FailureKind.BAD_RESPONSE, FailureKind.RESET)


@pytest.mark.parametrize("factory", CLIENTS)
async def test_the_body_is_bounded(server: Server, factory: TransportFactory) -> None:
    async with factory(server.url, ClientSettings(max_body_bytes=100)) as transport:
        big = await transport.send("GET", "/head", (), b"")
        small = await transport.send("GET", "/", (), b"")
    assert isinstance(big.outcome, Failure) and big.outcome.kind == FailureKind.BODY_TOO_LARGE
    assert isinstance(small.outcome, Response)


def test_make_transport_picks_the_raw_client_for_http_only() -> None:
    # HTTP/1.1 only: by default the HTTP/1 side sits beside HTTP/2 (tests/replayer/test_h2transport_functional.py).
    def pick(url: str, client: str = "auto") -> object:
        return make_transport(url, ClientSettings(client=client, http_version="1.1"))

    assert isinstance(pick("http://127.0.0.1:1"), HttpTransport)
    assert isinstance(pick("https://127.0.0.1:1"), AiohttpTransport)
    assert isinstance(pick("http://127.0.0.1:1", "aiohttp"), AiohttpTransport)


async def stale_keep_alive_server() -> tuple[asyncio.Server, str, list[int]]:
    """A server that answers one request per connection with keep-alive, then drops the connection
    when the next request arrives: what a client sees when the server timed the idle connection
    out as it was reused. The list counts the connections."""
    connections = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read(1)
        writer.close()
        await writer.wait_closed()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", connections


async def test_raw_client_resends_idempotent_requests_once_on_a_stale_keep_alive() -> None:
    srv, url, connections = await stale_keep_alive_server()
    async with srv, HttpTransport(url, ClientSettings(max_connections=1)) as transport:
        first = await transport.send("GET", "/", (), b"")
        second = await transport.send("GET", "/", (), b"")  # stale on connection 1, resent on 2
        post = await transport.send("POST", "/", (), b"x")  # stale on connection 2: never resent
    assert isinstance(first.outcome, Response) and isinstance(second.outcome, Response)
    assert isinstance(post.outcome, Failure) and post.outcome.kind == FailureKind.RESET
    assert connections == [2]


async def test_raw_client_drops_connections_idle_past_keepalive(server: Server) -> None:
    async with HttpTransport(server.url, ClientSettings(keepalive_s=0.05)) as transport:
        await transport.send("GET", "/", (), b"")
        await asyncio.sleep(0.15)
        await transport.send("GET", "/", (), b"")
    assert len(server.peers) == 2


@pytest.mark.parametrize("factory", CLIENTS)
async def test_informational_responses_are_skipped(factory: TransportFactory) -> None:
    srv, url = await raw_server(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nfinal"
    )
    async with srv, factory(url) as transport:
        result = await transport.send("GET", "/", (), b"")
    assert isinstance(result.outcome, Response) and result.outcome.status == 200
    assert result.outcome.body == b"final" and result.outcome.header(b"x-final") == b"yes"
    assert result.outcome.header(b"link") is None


@pytest.mark.parametrize("factory", CLIENTS)
async def test_a_body_that_ends_when_the_connection_closes_is_a_response(factory: TransportFactory) -> None:
    # No Content-Length, no chunking: the body is delimited by the close (RFC 9112 section 6.3),
    # as the proxy relays it too.
    srv, url = await raw_server(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
    async with srv, factory(url) as transport:
        result = await transport.send("GET", "/", (), b"")
    assert isinstance(result.outcome, Response)
    assert result.outcome.status == 200 and result.outcome.body == b"until the end"


@pytest.mark.parametrize("factory", CLIENTS)
async def test_the_reason_phrase_is_kept(factory: TransportFactory) -> None:
    srv, url = await raw_server(b"HTTP/1.1 418 I'm a teapot, really\r\nContent-Length: 2\r\n\r\nno")
    async with srv, factory(url) as transport:
        result = await transport.send("GET", "/", (), b"")
    assert isinstance(result.outcome, Response)
    assert (result.outcome.status, result.outcome.reason, result.outcome.body) == (418, "I'm a teapot, really", b"no")


async def start_now(transport: HttpTransport, method: str, target: str, body: bytes = b"") -> SendResult | None:
    """``HttpTransport.start``'s result (None when it declined, nothing sent)."""
    done: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
    if not transport.start(method, target, (), body, None, done.set_result):
        return None
    return await done


async def test_start_sends_without_a_task_once_a_connection_is_open(server: Server) -> None:
    loose = HttpTransport(server.url)
    assert loose.start("GET", "/", (), b"", None, lambda result: None) is False  # not entered: no loop known
    async with HttpTransport(server.url, ClientSettings(max_connections=1)) as transport:
        assert await start_now(transport, "GET", "/cold") is None  # no open connection: send dials
        await transport.send("GET", "/warm", (), b"")
        tasks = len(asyncio.all_tasks())
        done: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        assert transport.start("POST", "/now?x=1", (), b"body", None, done.set_result)
        assert len(asyncio.all_tasks()) == tasks  # sent without one
        # The only slot is taken: the next must wait for it, which start leaves to send.
        assert await start_now(transport, "GET", "/busy") is None
        result = await done
        again = await start_now(transport, "GET", "/again")
    assert isinstance(result.outcome, Response) and result.outcome.body == b"POST /now?x=1"
    assert result.first_byte_ns is not None and result.done_ns is not None
    assert result.first_byte_ns <= result.done_ns
    assert again is not None and isinstance(again.outcome, Response) and again.outcome.body == b"GET /again"
    assert [r[1] for r in server.requests] == ["/warm", "/now?x=1", "/again"]
    assert len(server.peers) == 1


async def test_start_resends_idempotent_requests_once_on_a_stale_keep_alive() -> None:
    srv, url, connections = await stale_keep_alive_server()
    async with srv, HttpTransport(url, ClientSettings(max_connections=1)) as transport:
        await transport.send("GET", "/", (), b"")
        resent = await start_now(transport, "GET", "/")  # stale on connection 1, resent on 2
        post = await start_now(transport, "POST", "/", b"x")  # stale on connection 2: never resent
    assert resent is not None and isinstance(resent.outcome, Response) and resent.outcome.body == b"ok"
    assert post is not None and isinstance(post.outcome, Failure) and post.outcome.kind == FailureKind.RESET
    assert connections == [2]


async def test_start_times_out_and_frees_the_slot() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers the first request; the second never, until the client gives up on it.
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await reader.readuntil(b"\r\n\r\n")
            await reader.read()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    async with srv, HttpTransport(url, ClientSettings(max_connections=1, timeout_s=0.2)) as transport:
        await transport.send("GET", "/warm", (), b"")
        started_ns = time.monotonic_ns()
        silent = await start_now(transport, "GET", "/silent")
        waited_s = (time.monotonic_ns() - started_ns) / 1e9
        after = await transport.send("GET", "/after", (), b"")  # the slot came back
        assert transport._deadlines is not None and len(transport._deadlines) == 0  # none kept
    assert silent is not None and isinstance(silent.outcome, Failure)
    assert silent.outcome.kind == FailureKind.TIMEOUT and 0.19 <= waited_s < 2
    assert isinstance(after.outcome, Response) and after.outcome.body == b"ok"
