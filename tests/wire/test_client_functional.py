"""The HTTP/1.1 client (shadowtap.wire.client) against raw-socket servers on 127.0.0.1: what each
response shape ends as, the stale-connection retry, and the pool's reuse and idle timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from shadowtap.wire import client, http1

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handle: Handler) -> AsyncIterator[tuple[str, int]]:
    """Serve ``handle`` on a free port; on the way out, wait for every connection's handler to end
    (the client has closed or aborted by then), so no server socket is left to the collector."""
    running: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        running.add(task)
        try:
            await handle(reader, writer)
        finally:
            writer.close()
            running.discard(task)

    srv = await asyncio.start_server(tracked, "127.0.0.1", 0)
    async with srv:
        yield "127.0.0.1", srv.sockets[0].getsockname()[1]
        if running:
            await asyncio.wait_for(asyncio.gather(*running, return_exceptions=True), 5)


def replies(*answers: bytes, close: bool = True) -> Handler:
    """A handler that answers each request head on a connection with the next of ``answers``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for answer in answers:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer)
                await writer.drain()
            if not close:
                await reader.read()  # until the client closes
        finally:
            writer.close()

    return handle


def request(method: bytes = b"GET") -> list[bytes]:
    return [http1.request_head(method, b"/", [(b"Host", b"t")])]


async def fetch(pool: client.Pool, method: str = "GET") -> client.FetchedResponse | client.FetchFailure:
    return await client.fetch(pool, method, request(method.encode()), timeout_s=5, max_body_bytes=1 << 20)


def pool_for(host: str, port: int, **options: float) -> client.Pool:
    return client.Pool(host, port, connect_timeout_s=5, max_idle=4, peer="target", **options)  # type: ignore[arg-type]


async def test_a_close_delimited_body_completes_with_the_reason_phrase() -> None:
    async with raw_server(replies(b"HTTP/1.1 200 Fine Thanks\r\nX-A: 1\r\n\r\nto the end")) as (host, port):
        result = await fetch(pool_for(host, port))
    assert isinstance(result, client.FetchedResponse)
    assert (result.status, result.reason, result.body) == (200, b"Fine Thanks", b"to the end")
    assert result.headers == [(b"X-A", b"1")] and result.http_version == "1.1"


async def test_head_answers_end_at_their_head_and_the_connection_is_reused() -> None:
    answers = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    async with raw_server(replies(*answers, close=False)) as (host, port):
        pool = pool_for(host, port)
        head = await fetch(pool, "HEAD")
        get = await fetch(pool, "GET")
        pool.abort_all()
    assert isinstance(head, client.FetchedResponse) and head.body == b""
    assert isinstance(get, client.FetchedResponse) and get.body == b"ok"
    assert (pool.stats.connects, pool.stats.reuses) == (1, 1)


async def test_interim_responses_precede_the_answer() -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx"
    )
    async with raw_server(replies(answer)) as (host, port):
        result = await fetch(pool_for(host, port))
    assert isinstance(result, client.FetchedResponse)
    assert (result.status, result.headers, result.body) == (201, [(b"Content-Length", b"1")], b"x")


async def test_a_cut_body_is_a_reset_and_garbage_a_bad_response() -> None:
    async with raw_server(replies(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")) as (host, port):
        cut = await fetch(pool_for(host, port))
    assert isinstance(cut, client.FetchFailure) and cut.kind == client.RESET
    assert cut.message.startswith("target closed the connection after the response head")
    async with raw_server(replies(b"SPDY/9 nonsense\r\n\r\n")) as (host, port):
        garbage = await fetch(pool_for(host, port))
    assert isinstance(garbage, client.FetchFailure) and garbage.kind == client.BAD_RESPONSE


async def test_the_body_limit_and_the_deadline_are_failures() -> None:
    async with raw_server(replies(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)) as (host, port):
        big = await client.fetch(pool_for(host, port), "GET", request(), timeout_s=5, max_body_bytes=10)
    assert isinstance(big, client.FetchFailure) and big.kind == client.BODY_TOO_LARGE

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async with raw_server(silent) as (host, port):
        late = await client.fetch(pool_for(host, port), "GET", request(), timeout_s=0.05, max_body_bytes=10)
    assert isinstance(late, client.FetchFailure) and late.kind == client.TIMEOUT


async def test_a_stale_pooled_connection_is_retried_once_for_idempotent_methods_only() -> None:
    connections = 0

    async def keep_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # One answer with keep-alive, then the connection drops when the next request arrives: a
        # server that timed the idle connection out as the client reused it.
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read(1)
        writer.close()

    async with raw_server(keep_once) as (host, port):
        pool = pool_for(host, port)
        first = await fetch(pool)
        resent = await fetch(pool, "DELETE")  # stale on connection 1, sent again on connection 2
        post = await fetch(pool, "POST")  # stale on connection 2: never sent twice
        pool.abort_all()
    assert isinstance(first, client.FetchedResponse) and isinstance(resent, client.FetchedResponse)
    assert isinstance(post, client.FetchFailure) and post.kind == client.RESET
    assert connections == 2


async def test_connection_refused_is_a_connect_error() -> None:
    async with raw_server(replies()) as (host, port):
        pass
    result = await fetch(pool_for(host, port))
    assert isinstance(result, client.FetchFailure) and result.kind == client.CONNECT_ERROR
    assert result.message.startswith(f"connect to {host}:{port}")


async def test_idle_connections_past_the_idle_timeout_are_not_reused() -> None:
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"] * 2
    async with raw_server(replies(*answers, close=False)) as (host, port):
        pool = pool_for(host, port, idle_timeout_s=0.01)
        await fetch(pool)
        await asyncio.sleep(0.05)
        assert pool.try_acquire() is None
        assert pool.stats.reuses == 0
        await fetch(pool)
        pool.abort_all()
    assert pool.stats.connects == 2


def test_failure_kinds_are_the_tapes_strings() -> None:
    # wire imports nothing of the recorder, so it spells the failure kinds itself: they must stay
    # the strings the tape and every report use.
    from shadowtap.recorder.model import FailureKind
    from shadowtap.wire import client

    for name in ("CONNECT_ERROR", "TIMEOUT", "RESET", "BAD_RESPONSE", "BODY_TOO_LARGE", "OTHER"):
        assert getattr(client, name) == getattr(FailureKind, name), name
