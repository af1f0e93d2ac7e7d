"""An HTTP/2 client's request whose content-length is no number, or disagrees with its DATA, is an
error of that stream only (RFC 9113 8.1.1): the proxy resets it with PROTOCOL_ERROR, counts it as a
malformed request, and never lets the primary see it whole; a bystander stream on the same client
connection, and other connections, carry on. Against an HTTP/1 primary (aiohttp) and an h2c one
(tests/wire/h2peer.py), with a real ``h2`` client over a socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import pytest
from aiohttp import web

from shadowtap.proxy.forward import ForwardSettings
from shadowtap.proxy.server import ProxyServer
from tests.proxy.conftest import RecordingStage
from tests.wire.h2peer import H2TestClient, H2TestServer, Responder

Header = tuple[bytes, bytes]
_PROTOCOL_ERROR = 0x1

#: Lying requests: their extra header fields, then the DATA frames (bytes, END_STREAM) the client sends
#: (none: END_STREAM on the HEADERS).
LYING: dict[str, tuple[list[Header], list[tuple[bytes, bool]]]] = {
    "past-its-length-in-one-frame": ([(b"content-length", b"2")], [(b"12345", True)]),
    "past-its-length-after-reaching-it": ([(b"content-length", b"5")], [(b"12345", False), (b"6", True)]),
    "short-of-its-length": ([(b"content-length", b"10")], [(b"12345", True)]),
    "short-of-its-length-then-trailers": ([(b"content-length", b"10")], [(b"12345", False)]),
    "no-data-for-its-length": ([(b"content-length", b"4")], []),
    "not-digits": ([(b"content-length", b"3x")], [(b"abc", True)]),
    "two-that-disagree": ([(b"content-length", b"3"), (b"content-length", b"4")], [(b"abc", True)]),
}
#: Those refused at their head: no stream to the primary is opened for them.
AT_HEAD = frozenset(("no-data-for-its-length", "not-digits", "two-that-disagree"))


@dataclass
class Primary:
    """What the primary saw, by path: requests begun, read whole, and broken off."""

    url: str
    started: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    #: Brings the lists up to date (the h2 peer keeps its own record).
    sync: Callable[[], None] = lambda: None

    def saw(self, path: str, kind: str = "started") -> bool:
        self.sync()
        lists: dict[str, list[str]] = {"started": self.started, "completed": self.completed, "broken": self.broken}
        return path in lists[kind]


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture(params=["http1", "h2c"])
async def primary(request: pytest.FixtureRequest) -> AsyncIterator[Primary]:
    if request.param == "http1":
        seen = Primary("")

        async def echo(req: web.Request) -> web.Response:
            seen.started.append(req.path)
            try:
                body = await req.read()
            except BaseException:
                seen.broken.append(req.path)
                raise
            seen.completed.append(req.path)
            return web.Response(body=body)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        seen.url = f"http://127.0.0.1:{port}"
        try:
            yield seen
        finally:
            await runner.cleanup()
        return

    async def answer(headers: list[Header], body: bytes, trailers: list[Header], reply: Responder) -> None:
        reply.head(200, [(b"content-length", b"%d" % len(body))])
        await reply.data(body, end=True)

    server = await H2TestServer(answer).start()
    seen = Primary(f"h2c://127.0.0.1:{server.port}")

    def sync() -> None:  # the h2 peer's record, read as the HTTP/1 one is kept
        seen.started[:] = [dict(s.headers)[b":path"].decode() for s in server.received]
        seen.completed[:] = [dict(s.headers)[b":path"].decode() for s in server.received if s.ended]
        seen.broken[:] = [dict(s.headers)[b":path"].decode() for s in server.received if s.reset_code is not None]

    seen.sync = sync
    try:
        yield seen
    finally:
        await server.close()


async def _client(port: int) -> H2TestClient:
    """An HTTP/2 client that sends what it is told (h2's outbound checks off)."""
    client = await H2TestClient.connect(port, preface=False)
    client.conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False
        )
    )
    client.conn.initiate_connection()
    client.flush()
    return client


@pytest.mark.parametrize("case", list(LYING))
async def test_a_lying_request_is_reset_alone(primary: Primary, case: str) -> None:
    stage = RecordingStage()
    proxy = ProxyServer(ForwardSettings(primary=primary.url), [stage])
    await proxy.start("127.0.0.1", 0)
    client = await _client(proxy.port)
    try:
        # A well-formed bystander, half sent: its stream is open on the primary while the liar lies.
        bystander = client.request("POST", "/bystander", [(b"content-length", b"11")], end=False)
        client.send_data(bystander, b"slow-")
        await _until(lambda: primary.saw("/bystander"))

        extra, frames = LYING[case]
        lying = client.request("POST", "/lying", extra, end=not frames)
        for data, end in frames:
            client.send_data(lying, data, end=end)
        if case.endswith("then-trailers"):
            client.end(lying, [(b"x-checksum", b"1")])
        answer = await client.response(lying)
        assert answer.reset_code == _PROTOCOL_ERROR
        assert answer.status == 0

        client.send_data(bystander, b"start,", end=True)
        whole = await client.response(bystander)
        assert (whole.status, whole.body, whole.reset_code) == (200, b"slow-start,", None)
        assert client.terminated is None  # no GOAWAY: the connection lives on
        again = await client.response(client.request("POST", "/again", [(b"content-length", b"2")], b"ok"))
        assert (again.status, again.body) == (200, b"ok")

        # Another connection is untouched too.
        other = await _client(proxy.port)
        try:
            fresh = await other.response(other.request("POST", "/other", [(b"content-length", b"1")], b"!"))
            assert (fresh.status, fresh.body) == (200, b"!")
        finally:
            await other.close()

        # The primary never had the lying request whole: refused at its head it never got there;
        # else what was sent on was broken off (HTTP/1: the connection aborted; h2: RST_STREAM).
        if primary.saw("/lying"):
            await _until(lambda: primary.saw("/lying", "broken"))
        assert not primary.saw("/lying", "completed")
        assert primary.saw("/bystander", "completed")
        assert proxy.stats.h2_errors == {"malformed request": 1}
        # The stages: the mirror never had it as a whole request; the record stage saw it fail.
        assert sorted(ex.target for ex in stage.requests) == ["/again", "/bystander", "/other"]
        lying_records = [ex for ex in stage.exchanges if ex.target == "/lying"]
        assert len(lying_records) == (0 if case in AT_HEAD else 1)
        assert all(ex.failure is not None and ex.response is None for ex in lying_records)
        if case in AT_HEAD:
            assert not primary.saw("/lying")
    finally:
        await client.close()
        await proxy.shutdown(1)
