"""The HTTP/2 client (``shadowtap.wire.h2``) against a real h2 server (tests/wire/h2peer.py): streams
multiplexed over one connection, MAX_CONCURRENT_STREAMS honoured (another connection, then waiting),
flow control on uploads larger than every window, trailers, resets, GOAWAY, ALPN, and a response
that ends before its request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import pytest

from shadowtap.wire.h2 import H2Pool, H2Stream, Header
from tests.wire.h2peer import H2TestServer, Responder


class Collected:
    """A ``StreamSink`` that keeps everything and acknowledges data as it comes."""

    def __init__(self) -> None:
        self.stream: H2Stream | None = None
        self.status = 0
        self.headers: list[Header] = []
        self.body = b""
        self.trailers: list[Header] = []
        self.reset: tuple[str, str, bool] | None = None
        self.drained = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_head(self, status: int, headers: list[Header], ended: bool) -> None:
        self.status = status
        self.headers = headers

    def on_data(self, data: bytes) -> None:
        self.body += data
        assert self.stream is not None
        self.stream.consumed(len(data))

    def on_trailers(self, headers: list[Header]) -> None:
        self.trailers = headers

    def on_end(self) -> None:
        self.done.set_result(None)

    def on_reset(self, kind: str, message: str, refused: bool) -> None:
        self.reset = (kind, message, refused)
        self.done.set_result(None)

    def on_request_drained(self, sent: int) -> None:
        self.drained += sent


def head(method: bytes, path: bytes, port: int) -> list[Header]:
    return [(b":method", method), (b":scheme", b"http"), (b":authority", b"127.0.0.1:%d" % port), (b":path", path)]


async def request(pool: H2Pool, port: int, path: bytes, body: bytes = b"",
                  trailers: list[Header] | None = None) -> Collected:  # fmt: skip
    sink = Collected()
    stream = await pool.open(head(b"POST" if body else b"GET", path, port), sink, end_stream=not body and not trailers)
    sink.stream = stream
    if body or trailers:
        stream.send_data(body)
        stream.end(trailers)
    async with asyncio.timeout(20):
        await sink.done
    return sink


#: Paths the test server answers with one malformed field among fine ones (RFC 9113 8.2).
_MALFORMED: dict[bytes, Header] = {
    b"/malformed": (b"connection", b"close"),
    b"/malformed-upper": (b"X-Upper", b"1"),
    b"/malformed-cr": (b"x-cr", b"a\rb"),
    b"/malformed-lf": (b"x-lf", b"a\nb"),
    b"/malformed-nul": (b"x-nul", b"a\x00b"),
    b"/malformed-trailer": (b"x-cr", b"a\rb"),
}


@pytest.fixture
async def server() -> AsyncIterator[H2TestServer]:
    gate = asyncio.Event()

    async def handler(headers: list[Header], body: bytes, trailers: list[Header], reply: Responder) -> None:
        path = dict(headers)[b":path"]
        if path == b"/reset":
            reply.reset(0x2)
            return
        if path == b"/slow":
            await gate.wait()
        if path in _MALFORMED:
            fields = [(b"content-type", b"text/plain"), _MALFORMED[path], (b"x-after", b"fine")]
            if path.endswith(b"-trailer"):
                reply.head(200, fields[:1])
                await reply.data(b"body")
                reply.trailers(fields[1:])
            else:
                reply.head(200, fields, end=True)
            return
        if path == b"/goaway":
            reply.goaway(last_stream_id=reply.stream_id - 2)
            return
        reply.head(200, [(b"x-size", b"%d" % len(body))])
        await reply.data(body[:16] + b"|" + path)
        reply.trailers([(b"grpc-status", b"0"), *trailers])

    test_server = H2TestServer(handler, max_concurrent_streams=2)
    test_server.gate = gate  # type: ignore[attr-defined]
    await test_server.start()
    try:
        yield test_server
    finally:
        gate.set()
        await test_server.close()


async def test_streams_share_a_connection_and_carry_trailers(server: H2TestServer) -> None:
    pool = H2Pool("127.0.0.1", server.port, connect_timeout_s=5, max_connections=4)
    try:
        first = await request(pool, server.port, b"/a")
        second = await request(pool, server.port, b"/b", trailers=[(b"x-up", b"1")])
    finally:
        pool.abort_all()
    assert (first.status, first.body, first.trailers) == (200, b"|/a", [(b"grpc-status", b"0")])
    assert second.trailers == [(b"grpc-status", b"0"), (b"x-up", b"1")]
    assert pool.connects == 1


async def test_peer_stream_limit_opens_another_connection_then_waits(server: H2TestServer) -> None:
    pool = H2Pool("127.0.0.1", server.port, connect_timeout_s=5, max_connections=2)
    try:
        slow = [asyncio.create_task(request(pool, server.port, b"/slow")) for _ in range(6)]
        while sum(len(c.requests) for c in server.connections) + sum(len(c.tasks) for c in server.connections) < 4:
            await asyncio.sleep(0.01)
        # Two connections of two streams each are busy; the other two requests wait for room.
        assert pool.connects == 2
        assert not any(task.done() for task in slow)
        server.gate.set()  # type: ignore[attr-defined]
        results = await asyncio.gather(*slow)
    finally:
        pool.abort_all()
    assert [r.status for r in results] == [200] * 6
    assert pool.connects == 2


async def test_upload_larger_than_every_window_streams(server: H2TestServer) -> None:
    pool = H2Pool("127.0.0.1", server.port, connect_timeout_s=5)
    body = bytes(range(256)) * 16 * 1024  # 4 MiB: 64 times the peer's initial stream window
    try:
        result = await request(pool, server.port, b"/up", body)
    finally:
        pool.abort_all()
    assert result.headers == [(b"x-size", b"%d" % len(body))]
    assert result.drained == len(body)


async def test_reset_and_goaway_reach_the_sink(server: H2TestServer) -> None:
    pool = H2Pool("127.0.0.1", server.port, connect_timeout_s=5)
    try:
        reset = await request(pool, server.port, b"/reset")
        goaway = await request(pool, server.port, b"/goaway")
        after = await request(pool, server.port, b"/after")
    finally:
        pool.abort_all()
    assert reset.reset is not None and reset.reset[0] == "reset" and "INTERNAL_ERROR" in reset.reset[1]
    assert not reset.reset[2]
    # Above the GOAWAY's last stream: never processed, so the caller may send it again.
    assert goaway.reset is not None and goaway.reset[2]
    assert after.status == 200
    assert pool.connects == 2


async def test_connect_failure_raises() -> None:
    pool = H2Pool("127.0.0.1", 1, connect_timeout_s=5)
    with pytest.raises(OSError):
        await pool.open(head(b"GET", b"/", 1), Collected(), end_stream=True)
    assert pool.connect_errors == 1


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        (b"/malformed", "field b'connection'"),
        (b"/malformed-upper", "field b'X-Upper'"),
        (b"/malformed-cr", "a control character in b'x-cr'"),
        (b"/malformed-lf", "a control character in b'x-lf'"),
        (b"/malformed-nul", "a control character in b'x-nul'"),
        (b"/malformed-trailer", "a control character in b'x-cr'"),
    ],
)
async def test_a_malformed_response_fails_its_stream_only(server: H2TestServer, path: bytes, problem: str) -> None:
    pool = H2Pool("127.0.0.1", server.port, connect_timeout_s=5)
    try:
        bad = await request(pool, server.port, path)
        good = await request(pool, server.port, b"/good")
    finally:
        pool.abort_all()
    assert bad.reset is not None and bad.reset[0] == "bad-response" and f"({problem})" in bad.reset[1]
    assert bad.status == (200 if path.endswith(b"-trailer") else 0)
    assert good.status == 200 and good.headers == [(b"x-size", b"0")] and pool.connects == 1


async def test_an_answer_before_the_whole_request_ends_our_half_with_no_error() -> None:
    """RFC 9113 8.1: the server answered (and ended the stream) before the request body was all sent;
    the rest is not sent and the client's half ends with RST_STREAM(NO_ERROR), not left open."""
    resets: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    data_after_answer: list[int] = []
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        answered: set[int] = set()
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        # An early gRPC error: trailers-only, before reading the request body.
                        conn.send_headers(
                            event.stream_id, [(b":status", b"200"), (b"grpc-status", b"8")], end_stream=True
                        )
                        answered.add(event.stream_id)
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        if event.stream_id in answered and event.data:
                            data_after_answer.append(len(event.data))
                    elif isinstance(event, h2.events.StreamReset):
                        resets.put_nowait((event.stream_id, event.error_code))
                writer.write(conn.data_to_send())
        writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    pool = H2Pool("127.0.0.1", port, connect_timeout_s=5)
    try:
        sink = Collected()
        stream = await pool.open(head(b"POST", b"/shop.Catalog/Upload", port), sink, end_stream=False)
        sink.stream = stream
        async with asyncio.timeout(10):
            await sink.done
        stream.send_data(b"x" * 1000)  # after the answer: nothing more goes out
        stream.end()
        async with asyncio.timeout(10):
            stream_id, code = await resets.get()
        # The connection still serves: the next stream opens on it.
        second = Collected()
        second.stream = await pool.open(head(b"POST", b"/shop.Catalog/Upload", port), second, end_stream=False)
        async with asyncio.timeout(10):
            await second.done
    finally:
        pool.abort_all()
        listener.close()
        for writer in writers:
            writer.close()
        await listener.wait_closed()
    assert (sink.status, sink.reset) == (200, None)
    assert (stream_id, code) == (stream.stream_id, 0)
    assert stream.ended_local and stream.outbox_bytes == 0
    assert data_after_answer == []
    assert pool.connects == 1
