"""One HTTP/2 stream's failure stays its own (RFC 9113 8.1.1, DESIGN "Bad input"): a response whose
content-length disagrees with its DATA, or is no number, fails that stream only (RST_STREAM
PROTOCOL_ERROR, a bad response to its caller) and the connection carries on for the others; a
connection that does fail is not offered to a stream a sink opens while hearing of the failure.
Through the proxy (HTTP/1.1 clients, an h2c primary) and on ``shadowtap.wire.h2.H2Pool`` itself."""

from __future__ import annotations

import asyncio

import pytest

from shadowtap.proxy.forward import ForwardSettings
from shadowtap.proxy.server import ProxyServer
from shadowtap.wire.h2 import BAD_RESPONSE, HEADERS_TOO_LARGE, H2Pool, H2Stream
from tests.proxy.test_h1_to_h2_hostile_functional import _parse, _raw
from tests.wire.h2peer import H2TestServer, Responder

Header = tuple[bytes, bytes]

#: A DATA frame on stream 0: a connection error whatever the streams are doing.
_DATA_ON_STREAM_0 = b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"

#: Responses whose content-length is no number, or several that disagree: malformed at their head.
BAD_LENGTHS: dict[str, list[Header]] = {
    "not-digits": [(b"content-length", b"3x")],
    "a-list-in-one-field": [(b"content-length", b"2, 2")],
    "two-fields-that-disagree": [(b"content-length", b"2"), (b"content-length", b"3")],
    "a-sign": [(b"content-length", b"+2")],
}


async def _lying(headers: list[Header], body: bytes, trailers: list[Header], reply: Responder) -> None:
    path = dict(headers)[b":path"]
    if path == b"/short-body":
        reply.head(200, [(b"content-length", b"10")])
        await reply.data(b"12345", end=True)  # 5 of the 10 bytes it announced
    elif path == b"/long-body":
        reply.head(200, [(b"content-length", b"2")])
        await reply.data(b"12345", end=True)  # 3 bytes past the 2 it announced
    elif path == b"/no-data":
        reply.head(200, [(b"content-length", b"4")], end=True)
    elif path.startswith(b"/bad-length/"):
        reply.head(200, BAD_LENGTHS[path[12:].decode()])
        await reply.data(b"12")
        await asyncio.sleep(5)  # the stream stays open here: the proxy resets it
    elif path == b"/no-content":  # a 204 may carry the length it would have had; no DATA follows
        reply.head(204, [(b"content-length", b"5")], end=True)
    elif path == b"/no-content-body":  # a 204 cannot have one: it is dropped, the stream is fine
        reply.head(204, [])
        await reply.data(b"a body a 204 cannot have", end=True)
    elif path == b"/head":  # HEAD: the length of the GET's body, no DATA
        reply.head(200, [(b"content-length", b"7")], end=True)
    elif path == b"/exact":
        reply.head(200, [(b"content-length", b"5")])
        await reply.data(b"12")
        await reply.data(b"345", end=True)
    elif path == b"/broken":
        reply._server.writer.write(_DATA_ON_STREAM_0)
    else:  # /slow
        reply.head(200, [])
        await reply.data(b"slow-start,")
        await asyncio.sleep(0.5)
        await reply.data(b"slow-end", end=True)


async def _through_proxy(path: bytes) -> tuple[bytes, bytes, H2TestServer]:
    """``path``'s answer beside a slow bystander's on the same primary connection."""
    primary = await H2TestServer(_lying, strict=False).start()
    proxy = ProxyServer(ForwardSettings(primary=f"h2c://127.0.0.1:{primary.port}"))
    await proxy.start("127.0.0.1", 0)
    try:
        slow = asyncio.ensure_future(_raw(proxy.port, b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        while len(primary.received) < 1:  # the bystander's stream is open on the primary
            await asyncio.sleep(0.01)
        answer = await _raw(proxy.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        bystander = await slow
    finally:
        await proxy.shutdown(1)
        await primary.close()
    return answer, bystander, primary


@pytest.mark.parametrize("case", sorted(BAD_LENGTHS))
async def test_a_length_that_is_no_number_is_a_502_and_its_neighbour_is_whole(case: str) -> None:
    answer, bystander, primary = await _through_proxy(b"/bad-length/" + case.encode())
    assert [r.status for r in _parse(answer)] == [502]
    (slow,) = _parse(bystander)
    assert slow.status == 200 and slow.body == b"slow-start,slow-end"
    assert len(primary.connections) == 1
    (lying,) = [s for s in primary.received if dict(s.headers)[b":path"] != b"/slow"]
    assert lying.reset_code == 0x1  # PROTOCOL_ERROR, on that stream only


@pytest.mark.parametrize("path", [b"/short-body", b"/long-body"])
async def test_data_that_disagrees_with_the_length_cuts_its_answer_and_its_neighbour_is_whole(path: bytes) -> None:
    answer, bystander, primary = await _through_proxy(path)
    # The head went out before the body disagreed: the client's answer is cut, never complete, and
    # no byte past the announced length reaches it.
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert _parse(answer) == []
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert body.removesuffix(b"<reset>") == (b"12345" if path == b"/short-body" else b"")
    (slow,) = _parse(bystander)
    assert slow.status == 200 and slow.body == b"slow-start,slow-end"
    assert len(primary.connections) == 1


# --- on the pool ------------------------------------------------------------------------------------


def _head(path: bytes, method: bytes = b"GET") -> list[Header]:
    return [(b":method", method), (b":scheme", b"http"), (b":authority", b"x"), (b":path", path)]


class _Recorder:
    """A sink that keeps what its stream heard."""

    def __init__(self) -> None:
        self.status = 0
        self.body = b""
        self.ended = False
        self.reset: tuple[str, str, bool] | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.stream: H2Stream | None = None

    def on_head(self, status: int, headers: list[Header], ended: bool) -> None:
        self.status = status

    def on_data(self, data: bytes) -> None:
        self.body += data
        if self.stream is not None:
            self.stream.consumed(len(data))

    def on_trailers(self, headers: list[Header]) -> None: ...

    def on_end(self) -> None:
        self.ended = True
        self.done.set_result(None)

    def on_request_drained(self, sent: int) -> None: ...

    def on_reset(self, kind: str, message: str, refused: bool) -> None:
        self.reset = (kind, message, refused)
        self.done.set_result(None)


async def _exchange(pool: H2Pool, path: bytes, method: bytes = b"GET", extra: list[Header] = ()) -> _Recorder:  # type: ignore[assignment]
    sink = _Recorder()
    sink.stream = await pool.open(_head(path, method) + list(extra), sink, True)
    async with asyncio.timeout(5):
        await sink.done
    return sink


async def test_a_lying_stream_fails_alone_and_its_connection_carries_on() -> None:
    primary = await H2TestServer(_lying, strict=False).start()
    pool = H2Pool("127.0.0.1", primary.port, connect_timeout_s=5)
    try:
        slow = asyncio.ensure_future(_exchange(pool, b"/slow"))
        while len(primary.received) < 1:
            await asyncio.sleep(0.01)
        liars = [await _exchange(pool, path) for path in (b"/short-body", b"/long-body", b"/no-data")]
        bystander = await slow
        after = await _exchange(pool, b"/exact")
        no_content = await _exchange(pool, b"/no-content")
        no_content_body = await _exchange(pool, b"/no-content-body")
        head = await _exchange(pool, b"/head", b"HEAD")
    finally:
        pool.abort_all()
        await primary.close()
    for liar in liars:
        assert liar.reset is not None and liar.reset[0] == BAD_RESPONSE and not liar.reset[2]
        assert "content-length" in liar.reset[1]
    assert liars[0].body == b"12345"  # within the length: passed on before the end showed it short
    assert liars[1].body == b""  # past the length: not one byte of it
    assert bystander.ended and bystander.body == b"slow-start,slow-end"
    assert after.ended and after.status == 200 and after.body == b"12345"
    assert no_content.ended and no_content.status == 204
    assert no_content_body.ended and no_content_body.status == 204 and no_content_body.body == b""
    assert head.ended and head.status == 200 and head.body == b""
    assert pool.connects == 1 and len(primary.connections) == 1


class _Reopener:
    """A sink that opens its next stream from ``on_reset``, as the proxy's next pipelined request does."""

    def __init__(self, pool: H2Pool, opened: list[object]) -> None:
        self.pool, self.opened = pool, opened

    def on_head(self, status: int, headers: list[Header], ended: bool) -> None: ...

    def on_data(self, data: bytes) -> None: ...

    def on_trailers(self, headers: list[Header]) -> None: ...

    def on_end(self) -> None: ...

    def on_request_drained(self, sent: int) -> None: ...

    def on_reset(self, kind: str, message: str, refused: bool) -> None:
        try:
            self.opened.append(self.pool.try_open(_head(b"/exact"), _Recorder(), True))
        except Exception as exc:
            self.opened.append(exc)


async def test_a_connection_failing_is_not_offered_to_streams_opened_while_it_fails() -> None:
    primary = await H2TestServer(_lying, strict=False).start()
    pool = H2Pool("127.0.0.1", primary.port, connect_timeout_s=5)
    opened: list[object] = []
    try:
        await pool.open(_head(b"/broken"), _Reopener(pool, opened), True)
        async with asyncio.timeout(5):
            while not opened:
                await asyncio.sleep(0.01)
        assert pool.connections == 0
        replacement = await _exchange(pool, b"/exact")  # a new connection takes the next stream
    finally:
        pool.abort_all()
        await primary.close()
    assert opened == [None]
    assert replacement.ended and replacement.body == b"12345"
    assert pool.connects == 2


async def test_a_head_over_the_peers_header_list_limit_is_refused_before_it_ends_the_connection() -> None:
    # h2 on the server ends the whole connection for a header list over what it advertised.
    primary = await H2TestServer(_lying, strict=False, max_header_list_size=4096).start()
    pool = H2Pool("127.0.0.1", primary.port, connect_timeout_s=5)
    try:
        slow = asyncio.ensure_future(_exchange(pool, b"/slow"))
        while len(primary.received) < 1:
            await asyncio.sleep(0.01)
        large = await _exchange(pool, b"/exact", extra=[(b"x-large", b"v" * 4096)])
        fits = await _exchange(pool, b"/exact", extra=[(b"x-fits", b"v" * 3800)])
        bystander = await slow
    finally:
        pool.abort_all()
        await primary.close()
    assert large.reset is not None and large.reset[0] == HEADERS_TOO_LARGE and not large.reset[2]
    assert "4096" in large.reset[1] and large.status == 0
    assert fits.ended and fits.body == b"12345"
    assert bystander.ended and bystander.body == b"slow-start,slow-end"
    assert [dict(r.headers)[b":path"] for r in primary.received] == [b"/slow", b"/exact"]
    assert pool.connects == 1 and len(primary.connections) == 1


async def test_through_the_proxy_a_head_over_the_primarys_limit_is_a_431_and_the_connection_carries_on() -> None:
    from shadowtap.proxy import server

    assert server._H2_HEADERS_TOO_LARGE == HEADERS_TOO_LARGE
    primary = await H2TestServer(_lying, strict=False, max_header_list_size=4096).start()
    proxy = ProxyServer(ForwardSettings(primary=f"h2c://127.0.0.1:{primary.port}"))
    await proxy.start("127.0.0.1", 0)
    try:
        slow = asyncio.ensure_future(_raw(proxy.port, b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        while len(primary.received) < 1:
            await asyncio.sleep(0.01)
        large = b"GET /exact HTTP/1.1\r\nHost: x\r\nX-Large: " + b"v" * 4096 + b"\r\nConnection: close\r\n\r\n"
        (refused,) = _parse(await _raw(proxy.port, large))
        (fits,) = _parse(await _raw(proxy.port, b"GET /exact HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        (bystander,) = _parse(await slow)
    finally:
        await proxy.shutdown(1)
        await primary.close()
    assert refused.status == 431 and b"4096" in refused.body
    assert fits.status == 200 and fits.body == b"12345"
    assert bystander.status == 200 and bystander.body == b"slow-start,slow-end"
    assert [dict(r.headers)[b":path"] for r in primary.received] == [b"/slow", b"/exact"]
    assert len(primary.connections) == 1
