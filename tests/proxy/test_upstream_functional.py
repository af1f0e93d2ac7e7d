"""The primary connection pool over real sockets: reuse, stale-connection retry, odd framings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from shadowtap.recorder.model import FailureKind
from shadowtap.wire.client import Dialer
from tests.proxy.conftest import RecordingStage, hang_up, raw_head_request, raw_request, running_proxy

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_primary(handler: Handler) -> AsyncIterator[tuple[int, list[int]]]:
    """A hand-written primary; yields its port and a list counting accepted connections."""
    accepted: list[int] = []
    writers: set[asyncio.StreamWriter] = set()
    done = asyncio.Event()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writers.add(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            writers.discard(writer)
            if not writers:
                done.set()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        server.close()
        # Hang up on handlers still waiting for the proxy, then let them finish.
        for writer in list(writers):
            writer.transport.abort()
        if writers:
            await asyncio.wait_for(done.wait(), 5)
        await server.wait_closed()


async def _answer_once_then_drop_next(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Answers one request with keep-alive, then hangs up when the next request arrives: the race a
    # pooled connection meets when the primary's keep-alive timeout fires as we reuse it.
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    writer.transport.abort()


async def test_idempotent_request_on_a_stale_pooled_connection_is_retried() -> None:
    stage = RecordingStage()
    async with (
        raw_primary(_answer_once_then_drop_next) as (port, accepted),
        running_proxy(port, stages=[stage]) as proxy,
    ):
        first, second = await raw_request(
            proxy.port, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", responses=2
        )
        assert (first.status, second.status) == (200, 200)
        assert len(accepted) == 2  # the retry went out on a fresh connection
    assert [ex.failure for ex in stage.exchanges] == [None, None]


async def test_non_idempotent_request_is_not_retried() -> None:
    async with raw_primary(_answer_once_then_drop_next) as (port, accepted), running_proxy(port) as proxy:
        first, second = await raw_request(
            proxy.port,
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx",
            responses=2,
        )
        assert (first.status, second.status) == (200, 502)
        assert len(accepted) == 1
        assert proxy.stats.primary_failures == {FailureKind.RESET: 1}


async def _close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
    await writer.drain()
    writer.write(b"the end")
    await writer.drain()


async def test_close_delimited_body_is_rechunked_for_http11_clients() -> None:
    stage = RecordingStage()
    async with raw_primary(_close_delimited) as (port, _), running_proxy(port, stages=[stage]) as proxy:
        (resp,) = await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert resp.chunked
        assert resp.body == b"until the end"
        # The client connection stays usable although the primary's had to close.
        two = await raw_request(
            proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", responses=2
        )
        assert [r.body for r in two] == [b"until the end", b"until the end"]
    assert stage.exchanges[0].response is not None and stage.exchanges[0].response.body == b"until the end"


async def _interim_then_final(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    await writer.drain()
    body = await reader.readexactly(5)
    writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\n" + body)
    await writer.drain()
    await reader.read()


async def test_expect_100_continue_is_relayed() -> None:
    async with raw_primary(_interim_then_final) as (port, _), running_proxy(port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"PUT /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"hello")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 201 Created\r\n")
            assert await reader.readexactly(5) == b"hello"
        finally:
            writer.close()


async def test_slow_client_download_is_back_pressured() -> None:
    size = 32 * 1024 * 1024
    piece = b"z" * (256 * 1024)

    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // len(piece)):
            writer.write(piece)
            await writer.drain()
        await reader.read()

    async with raw_primary(huge) as (port, _), running_proxy(port, capture_limit_bytes=1024) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=64 * 1024)
        try:
            writer.write(b"GET /huge HTTP/1.1\r\nHost: a\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(0.5)  # read nothing: the proxy must stop reading the primary
            assert proxy._ctx is not None
            (client_conn,) = proxy._ctx.connections
            assert client_conn.transport is not None
            buffered = client_conn.transport.get_write_buffer_size()
            assert buffered < 8 * 1024 * 1024, buffered
            received = 0
            while received < size:
                chunk = await asyncio.wait_for(reader.read(1 << 20), 10)
                assert chunk
                received += len(chunk)
            assert received == size
        finally:
            writer.close()


async def test_primary_closing_mid_head_is_a_502() -> None:
    async def half_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
        await writer.drain()

    async with raw_primary(half_head) as (port, _), running_proxy(port) as proxy:
        raw = await raw_head_request(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
        assert b"before the response head" in raw


async def test_fast_upload_to_a_slow_primary_is_back_pressured() -> None:
    size = 32 * 1024 * 1024
    primary_reading = asyncio.Event()

    async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await primary_reading.wait()
        received = 0
        while received < length:
            received += len(await reader.read(1 << 20))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(received)), received))
        await writer.drain()
        await reader.read()

    async with raw_primary(slow_reader) as (port, _), running_proxy(port, capture_limit_bytes=1024) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
            piece = b"u" * (1 << 20)
            sending = asyncio.ensure_future(_send_all(writer, piece, size // len(piece)))
            await asyncio.sleep(0.5)  # the primary reads nothing yet: the proxy must stop reading us
            assert not sending.done()
            upstream = list(proxy._ctx.pool._all) if proxy._ctx else []
            assert len(upstream) == 1 and upstream[0].transport is not None
            assert upstream[0].transport.get_write_buffer_size() < 8 * 1024 * 1024
            primary_reading.set()
            await asyncio.wait_for(sending, 20)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert await reader.readexactly(len(str(size))) == str(size).encode()
        finally:
            writer.close()


async def _send_all(writer: asyncio.StreamWriter, piece: bytes, count: int) -> None:
    for _ in range(count):
        writer.write(piece)
        await writer.drain()


async def test_total_timeout_closes_a_response_that_never_ends() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"1\r\n.\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    stage = RecordingStage()
    async with raw_primary(trickle) as (port, _), running_proxy(port, stages=[stage], total_timeout_s=0.4) as proxy:
        raw = await raw_head_request(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", timeout_s=5)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert not raw.endswith(b"0\r\n\r\n")  # cut, not completed: the client can tell
    assert proxy.stats.primary_failures == {FailureKind.TIMEOUT: 1}
    # On the tape it is an incomplete answer, with why it was cut.
    failure = stage.exchanges[0].failure
    assert failure is not None and failure.kind == FailureKind.INCOMPLETE
    assert "timed out after 0.4 s" in failure.message
    assert stage.exchanges[0].response is None


async def test_idle_keep_alive_client_connections_are_closed() -> None:
    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with raw_primary(ok) as (port, _), running_proxy(port, keepalive_timeout_s=0.3) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\nok"), 5)
            assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the proxy when idle
        finally:
            writer.close()


async def test_primary_closing_before_the_request_is_sent_is_a_fast_502(dials_resume_after_loss: Dialer) -> None:
    # The race: a fresh primary connection is lost (the primary accepted, then hung up) before the
    # task that dialled it resumes and sends. The dial is made to resume only after the loss, so
    # the race is taken every time; the client must get a 502 at once, not a 504 after the
    # first-byte timeout.
    async with (
        raw_primary(hang_up) as (port, accepted),
        running_proxy(port, first_byte_timeout_s=30.0, dial=dials_resume_after_loss) as proxy,
    ):
        request = b"GET /gone HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        raw = await asyncio.wait_for(raw_head_request(proxy.port, request), 10)
        assert raw.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), raw
        assert b"before the request was sent" in raw
        assert accepted == [1]
        assert proxy._ctx is not None and proxy._ctx.stats.primary_failures == {FailureKind.RESET: 1}
