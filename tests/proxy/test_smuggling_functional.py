"""Request smuggling through Upgrade and CONNECT: every client gets exactly the answer to its own request.

An attacker sends an upgrade offer (WebSocket, h2c) or a CONNECT with a second request pipelined
behind it on the same connection, while other clients use the proxy. The primaries here answer the
upgrade offer without switching, as most services do: three kinds, each logging what it received
(a raw-socket server that keeps the exact bytes, the stdlib ``http.server``, and aiohttp). Every
answer names the request it answers (body and cookie), so a response delivered to the wrong
client is caught.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiohttp import web

from tests.proxy.conftest import RecordingStage, logging_primary, raw_request, running_proxy, serve_app

ATTACKS = {
    "websocket": (
        b"GET /attacker HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ),
    "h2c": (
        b"GET /attacker HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    ),
    "connect": b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
}
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"


class _StdlibHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    paths: list[str] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Set-Cookie", f"owner={self.path}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@asynccontextmanager
async def stdlib_primary() -> AsyncIterator[tuple[int, list[str]]]:
    handler = type("Handler", (_StdlibHandler,), {"paths": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler.paths
    finally:
        server.shutdown()
        server.server_close()


def aiohttp_primary() -> web.Application:
    async def anything(request: web.Request) -> web.Response:
        path = request.path_qs
        return web.Response(body=path.encode(), headers={"Set-Cookie": f"owner={path}"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


async def _victims(port: int, clients: int, rounds: int) -> list[str]:
    """Clients sending their own requests on keep-alive connections; the wrong answers they got."""
    wrong: list[str] = []

    async def one(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for j in range(rounds):
                path = b"/victim-%d-%d" % (i, j)
                writer.write(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path)
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    body = await asyncio.wait_for(reader.readexactly(length), 5)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError) as exc:
                    wrong.append(f"{path.decode()} got no answer: {exc!r}")
                    return
                if body != path or b"owner=" + path not in head:
                    wrong.append(f"{path.decode()} got {body.decode(errors='replace')}")
                await asyncio.sleep(0.002)
        finally:
            writer.close()

    await asyncio.gather(*(one(i) for i in range(clients)))
    return wrong


async def _attack(port: int, attack: bytes) -> list[Any]:
    return await raw_request(port, attack + SMUGGLED, responses=2, timeout_s=5)


Primary = Callable[[], Any]


async def _run_attack(
    proxy_port: int, attack: str, after: Callable[[], Awaitable[None]] | None = None
) -> tuple[list[Any], list[str]]:
    attacks = [asyncio.create_task(_attack(proxy_port, ATTACKS[attack])) for _ in range(5)]
    wrong = await _victims(proxy_port, clients=8, rounds=25)
    answers = [await task for task in attacks]
    return answers, wrong


def _check_attacker(attack: str, answers: list[Any]) -> None:
    for responses in answers:
        if attack == "connect":
            # Refused, and nothing behind it is read: the connection closes after the 405.
            assert [r.status for r in responses] == [405]
        else:
            # A declined upgrade leaves plain HTTP/1.1: the next request is parsed as one.
            assert [r.body for r in responses] == [b"/attacker", b"/smuggled"]
            assert [r.header(b"Set-Cookie") for r in responses] == [b"owner=/attacker", b"owner=/smuggled"]


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_raw_primary_every_client_gets_its_own_answer(attack: str) -> None:
    stage = RecordingStage()
    async with logging_primary() as (port, primary), running_proxy(port, stages=[stage]) as proxy:
        answers, wrong = await _run_attack(proxy.port, attack)
    assert wrong == []
    _check_attacker(attack, answers)
    if attack == "connect":
        assert b"CONNECT" not in primary.received and b"/smuggled" not in primary.received
        assert proxy.stats.client_errors.get(405) == 5
        return
    # The request behind the declined upgrade went through the proxy's parser: the header rewrite
    # (X-Forwarded-For) and the stages saw it like any other.
    smuggled = [h for p, h in zip(primary.paths, primary.heads, strict=True) if p == b"/smuggled"]
    assert len(smuggled) == 5
    assert all(any(name.lower() == b"x-forwarded-for" for name, _ in head) for head in smuggled)
    assert sum(ex.target == "/smuggled" for ex in stage.exchanges) == 5
    # Nothing of the smuggled request reached the primary before it had answered the upgrade offer.
    assert primary.received.count(b"GET /smuggled") == 5


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_stdlib_primary_every_client_gets_its_own_answer(attack: str) -> None:
    async with stdlib_primary() as (port, paths), running_proxy(port) as proxy:
        answers, wrong = await _run_attack(proxy.port, attack)
    assert wrong == []
    _check_attacker(attack, answers)
    assert paths.count("/smuggled") == (0 if attack == "connect" else 5)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_aiohttp_primary_every_client_gets_its_own_answer(attack: str) -> None:
    async with serve_app(aiohttp_primary()) as port, running_proxy(port) as proxy:
        answers, wrong = await _run_attack(proxy.port, attack)
    assert wrong == []
    _check_attacker(attack, answers)


async def test_refused_upgrade_never_pools_the_primary_connection() -> None:
    # The primary answered the offer without switching: that connection is closed, never reused.
    async with logging_primary() as (port, _), running_proxy(port) as proxy:
        responses = await raw_request(proxy.port, ATTACKS["websocket"], responses=1)
        assert [r.status for r in responses] == [200]
        await raw_request(proxy.port, b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        assert proxy.stats.pool.reuses == 0
        assert proxy.stats.pool.connects == 2


async def test_upgrade_offer_with_a_body_then_a_pipelined_request() -> None:
    # The offer's body is framed by its Content-Length and forwarded; what follows waits for the
    # primary's answer, then is parsed as the next request.
    request = (
        b"POST /form HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\nhello"
        + SMUGGLED
    )
    async with serve_app(aiohttp_primary()) as port, running_proxy(port) as proxy:
        responses = await raw_request(proxy.port, request, responses=2)
    assert [r.body for r in responses] == [b"/form", b"/smuggled"]


async def test_upgrade_offer_with_a_chunked_body_is_refused() -> None:
    request = (
        b"POST /form HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + SMUGGLED
    )
    async with logging_primary() as (port, primary), running_proxy(port) as proxy:
        responses = await raw_request(proxy.port, request, responses=2)
    assert [r.status for r in responses] == [501]
    assert primary.received == b""
