"""The HTTP/1.1 client: an asyncio Protocol with llhttp's response parser, a pool, and one whole
exchange with the stale-connection retry. The proxy (primary and shadows) and the replayer use it.

One ``Http1Connection`` carries one exchange at a time and hands the response to a ``ResponseSink``
as it is parsed: interim (1xx) heads, the head, body pieces, then the end or a failure. HEAD answers
end at their head; a body delimited by the end of the connection completes when it closes (never a
reset). A ``PipelinedConnection`` carries several exchanges at once. The ``Pool`` keeps idle
connections (LIFO, so the warmest is reused) and dials new ones with a connect timeout through a
``Dialer`` (``dial_tcp`` unless one is given: tests inject failures there). ``fetch`` runs one whole
exchange and collects the response, for callers that want it in memory (the replayer).

A connection that came from the pool and failed before any response byte arrived was closed by the
peer while it sat idle (``Http1Connection.stale``): nothing of the exchange happened, so an
idempotent request (``http1.IDEMPOTENT_METHODS``) may be sent once more on a fresh connection.

This module has no policy: no metrics, breakers or flags, no knowledge of who the peer is beyond
the name its messages use. It must never decode a body or decide what a client sees: that is the
sink's job. An HTTP/2 connection would sit beside this one behind the same shape: open an exchange
(``begin``), send head and body, receive head, data, end or failure through the sink.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import time
from collections.abc import Callable
from typing import Final, Protocol, cast

import httptools

from shadowtap.wire import http1
from shadowtap.wire.http1 import Header

__all__ = [
    "BAD_RESPONSE",
    "BODY_TOO_LARGE",
    "CONNECT_ERROR",
    "OTHER",
    "RESET",
    "TIMEOUT",
    "UPSTREAM_SIDE",
    "Deadlines",
    "Dialer",
    "Expiring",
    "FetchFailure",
    "FetchedResponse",
    "Http1Connection",
    "PipelinedConnection",
    "Pool",
    "PoolStats",
    "ResponseSink",
    "TunnelEnd",
    "dial_tcp",
    "fetch",
]

log = logging.getLogger(__name__)

# Failure kinds, as strings: the same values as ``shadowtap.recorder.model.FailureKind``.
CONNECT_ERROR: Final = "connect-error"
TIMEOUT: Final = "timeout"
RESET: Final = "reset"
BAD_RESPONSE: Final = "bad-response"
BODY_TOO_LARGE: Final = "body-too-large"
OTHER: Final = "other"

#: The side a connection speaks for when it feeds a ``TunnelEnd`` (the client's side is 0).
UPSTREAM_SIDE: Final = 1


class _UnexpectedResponse(Exception):
    """Raised inside a parser callback when the peer sends bytes no request asked for."""


class ResponseSink(Protocol):
    """Receives one response as it is parsed. Every call runs on the event loop."""

    def on_interim(self, status: int, reason: bytes, headers: list[Header]) -> None: ...

    def on_head(self, status: int, reason: bytes, headers: list[Header]) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_complete(self, reusable: bool) -> None: ...

    def on_upgraded(self, rest: bytes) -> None: ...

    def on_failure(self, kind: str, message: str) -> None: ...

    def flush(self) -> None: ...

    def upstream_write_paused(self, paused: bool) -> None: ...


class TunnelEnd(Protocol):
    """Where a connection's bytes go once its HTTP part is over (after a 101, or a 2xx to CONNECT)."""

    def received(self, side: int, data: bytes) -> None: ...

    def write_paused(self, side: int, paused: bool) -> None: ...

    def lost(self, side: int) -> None: ...


class Dialer(Protocol):
    """Opens one connection for a pool: calls ``factory`` for the protocol (which tracks itself in the
    pool once connected) and returns it. Raises ``OSError`` (TLS failures included) when it cannot;
    the pool applies the connect timeout and counts the outcome."""

    async def __call__(
        self,
        factory: Callable[[], Http1Connection],
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
    ) -> Http1Connection: ...


async def dial_tcp(
    factory: Callable[[], Http1Connection],
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
) -> Http1Connection:
    """The ``Dialer`` every pool uses unless given another: the running loop's ``create_connection``."""
    _, conn = await asyncio.get_running_loop().create_connection(
        factory, host, port, ssl=ssl_context, server_hostname=server_hostname
    )
    return conn


class PoolStats:
    """Counters for the pool (plain ints: read by the admin stats and metrics)."""

    __slots__ = ("connect_errors", "connects", "reuses")

    def __init__(self) -> None:
        self.connects = 0
        self.connect_errors = 0
        self.reuses = 0


class Http1Connection(asyncio.Protocol):
    """One connection to a server; parses responses and feeds the attached sink."""

    __slots__ = (
        "_complete",
        "_head_bytes",
        "_head_only",
        "_head_seen",
        "_headers",
        "_interim",
        "_keep_alive",
        "_parser",
        "_pool",
        "_paused",
        "_reason",
        "_sink",
        "_status",
        "closed",
        "idle_since_s",
        "received_any",
        "served",
        "transport",
        "tunnel",
    )

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._sink: ResponseSink | None = None
        self._head_only = False
        self._headers: list[Header] = []
        self._reason = b""
        self._head_bytes = 0
        self._status = 0
        self._head_seen = False
        self._interim = False
        self._keep_alive = False
        self._complete = False
        self._paused = False
        #: A response byte arrived for the current exchange (a retry is then unsafe).
        self.received_any = False
        #: Exchanges completed on this connection; > 0 means it came from the pool.
        self.served = 0
        self.closed = False
        #: When it was last released to the pool (loop time), for the pool's idle timeout.
        self.idle_since_s = 0.0
        self.tunnel: TunnelEnd | None = None

    # --- used by the data path -------------------------------------------------------------------

    def begin(self, sink: ResponseSink, head_only: bool) -> None:
        """Attach the exchange that is about to be written; ``head_only`` for HEAD requests."""
        self._sink = sink
        self._head_only = head_only
        self._head_seen = False
        self._complete = False
        self.received_any = False

    @property
    def stale(self) -> bool:
        """Whether the current exchange failed on a pooled connection before any response byte: the
        peer closed it while idle, so nothing of the exchange happened (a retry is safe for an
        idempotent request)."""
        return self.served > 0 and not self.received_any

    def response_version(self) -> str:
        """The HTTP version of the response being parsed ("1.1"); valid from its head to its end."""
        return self._parser.get_http_version()

    @property
    def outstanding(self) -> int:
        """Exchanges attached and not yet finished (0 or 1 here; more on a ``PipelinedConnection``)."""
        return 0 if self._sink is None else 1

    def detach(self) -> None:
        """The exchange is over without this connection finishing it: it cannot be reused."""
        self._sink = None
        self.abort()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            transport.writelines(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self.transport = cast(asyncio.Transport, transport)
        self._pool.track(self)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.received(UPSTREAM_SIDE, data)
            return
        sink = self._sink
        if sink is None:
            # Bytes on an idle connection (a late 408, garbage): it can no longer be trusted.
            self.abort()
            return
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(sink, data[exc.args[0] :])
            return
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _UnexpectedResponse):
                self._fail(BAD_RESPONSE, str(exc.__context__))
                return
            log.exception("response callback failed; closing the %s connection", self._pool.peer)
            self._fail(OTHER, "internal error while relaying the response")
            return
        except httptools.HttpParserError as exc:
            self._fail(BAD_RESPONSE, f"malformed response from {self._pool.peer}: {exc}")
            return
        if self._complete:
            self._finish(sink)
        else:
            sink.flush()

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost ends or fails the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.untrack(self)
        if self.tunnel is not None:
            self.tunnel.lost(UPSTREAM_SIDE)
            return
        sink = self._sink
        if sink is None:
            return
        self._sink = None
        if self._complete:
            self._finish(sink)
        elif self._head_seen and self._until_close():
            # A body delimited by the end of the connection has just ended normally.
            sink.on_complete(False)
        else:
            where = "after the response head" if self._head_seen else "before the response head"
            detail = f": {exc}" if exc is not None else ""
            sink.on_failure(RESET, f"{self._pool.peer} closed the connection {where}{detail}")

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.write_paused(UPSTREAM_SIDE, True)
        elif self._sink is not None:
            self._sink.upstream_write_paused(True)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.write_paused(UPSTREAM_SIDE, False)
        elif self._sink is not None:
            self._sink.upstream_write_paused(False)

    # --- llhttp callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._sink is None or self._complete:
            raise _UnexpectedResponse("response bytes after the response ended")
        self._headers = []
        self._reason = b""
        self._head_bytes = 0

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        self._head_bytes += len(reason)
        if self._head_bytes > self._pool.max_head_bytes:
            raise _UnexpectedResponse(f"response head larger than {self._pool.max_head_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._pool.max_head_bytes:
            raise _UnexpectedResponse(f"response head larger than {self._pool.max_head_bytes} bytes")

    def on_headers_complete(self) -> None:
        sink = self._sink
        assert sink is not None
        status = self._parser.get_status_code()
        self._status = status
        if 100 <= status < 200 and status != 101:
            self._interim = True
            sink.on_interim(status, self._reason, self._headers)
            return
        self._interim = False
        self._head_seen = True
        # llhttp resets its flags once the message completes: ask while the head is current.
        self._keep_alive = self._parser.should_keep_alive()
        sink.on_head(status, self._reason, self._headers)
        if self._head_only and status != 101:
            # llhttp cannot be told that a HEAD response has no body; end it here and give the
            # next exchange a fresh parser so a Content-Length is not read as pending body bytes.
            self._complete = True

    def on_body(self, body: bytes) -> None:
        if not self._complete and self._sink is not None:
            self._sink.on_body(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete = True

    # --- internals -------------------------------------------------------------------------------

    def _finish(self, sink: ResponseSink) -> None:
        reusable = not self.closed and self._keep_alive and self._status != 101
        if self._head_only:
            self._parser = httptools.HttpResponseParser(self)
        self._sink = None
        self._complete = False
        self.served += 1
        self._advance(reusable)
        sink.on_complete(reusable)

    def _advance(self, reusable: bool) -> None:
        """An exchange just finished (before its sink hears so): a pipelining subclass attaches the
        next one here. One exchange at a time on this class, so nothing follows."""
        return None

    def _until_close(self) -> bool:
        """Whether the current response's body is delimited by the end of the connection (worked out
        only when the connection closes mid-body, not for every response)."""
        return http1.body_until_close(self._headers)

    def _upgraded(self, sink: ResponseSink, rest: bytes) -> None:
        self._sink = None
        if self._status != 101:
            self._fail_with(sink, BAD_RESPONSE, f"{self._pool.peer} switched protocols without a 101")
            return
        sink.on_upgraded(rest)

    def _fail(self, kind: str, message: str) -> None:
        sink = self._sink
        self._sink = None
        if sink is not None:
            self._fail_with(sink, kind, message)
        else:
            self.abort()

    def _fail_with(self, sink: ResponseSink, kind: str, message: str) -> None:
        self.abort()
        sink.on_failure(kind, message)


class PipelinedConnection(Http1Connection):
    """An upstream connection that carries several exchanges at once (HTTP/1.1 pipelining, RFC 9112
    section 9.3.2), for the mirror: copies sent in one loop turn leave in one write and their answers
    usually come back in one read, where a connection per copy costs a send and a receive each.

    Sinks are answered in the order their requests were written. A HEAD exchange is never pipelined
    (llhttp cannot tell a HEAD answer has no body), and nothing is queued behind one. When the
    connection fails, every exchange still on it fails: the one being answered with the cause, those
    behind it as ``reset``, marked as having received bytes, so none of them is retried (a request
    behind others may have been processed already).
    """

    __slots__ = ("_outbox", "_queued")

    def __init__(self, pool: Pool) -> None:
        super().__init__(pool)
        self._queued: collections.deque[ResponseSink] = collections.deque()
        self._outbox: list[bytes] = []

    @property
    def outstanding(self) -> int:
        return (0 if self._sink is None else 1) + len(self._queued)

    def can_pipeline(self, depth: int) -> bool:
        """Whether one more (non-HEAD) exchange may be queued behind those on this connection."""
        return not self.closed and not self._head_only and self.outstanding < depth

    def pipeline(self, sink: ResponseSink, data: list[bytes]) -> None:
        """Attach ``sink`` behind the exchanges already here; its request bytes wait in the outbox
        until ``flush_writes`` (one write for everything queued in this loop turn)."""
        if self._sink is None:
            self.begin(sink, head_only=False)
        else:
            self._queued.append(sink)
        self._outbox += data

    def flush_writes(self) -> None:
        outbox = self._outbox
        if outbox:
            self._outbox = []
            self.writelines(outbox)

    def detach(self) -> None:
        # One exchange gave up (its deadline passed): the connection goes, and every exchange on it
        # hears so from connection_lost (the one that gave up has already ended and ignores it).
        self.abort()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        # The next answer may follow in the same read: hand this one over now, inside the parse (so
        # data_received finds nothing complete left to finish after it).
        sink = self._sink
        assert sink is not None
        self._finish(sink)

    def _advance(self, reusable: bool) -> None:
        queued = self._queued
        if not queued:
            return
        if reusable:
            self.begin(queued.popleft(), head_only=False)
            # Written behind another request, it may have been processed already: never retried.
            self.received_any = True
        else:
            self._fail_queued(f"{self._pool.peer} closed the connection after an earlier answer")
            self.close()

    def _fail(self, kind: str, message: str) -> None:
        super()._fail(kind, message)
        self._fail_queued(f"connection failed before this answer: {message}")

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._fail_queued("connection closed before this answer")

    def _fail_queued(self, message: str) -> None:
        queued = self._queued
        if not queued:
            return
        self.received_any = True  # see the class docstring: queued exchanges are never retried
        sinks = list(queued)
        queued.clear()
        for sink in sinks:
            sink.on_failure(RESET, message)


class Pool:
    """Keep-alive connections to one server (host and port; TLS when given a context). It does not
    bound how many are busy: callers do (the proxy by its client connections, the mirror by its
    concurrency cap, the replayer by a semaphore)."""

    __slots__ = (
        "_all",
        "_closed",
        "_connect_timeout_s",
        "_dial",
        "_factory",
        "_host",
        "_idle",
        "_idle_timeout_s",
        "_max_idle",
        "_port",
        "_server_hostname",
        "_ssl",
        "address",
        "max_head_bytes",
        "peer",
        "stats",
    )

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout_s: float,
        max_idle: int,
        pipelined: bool = False,
        max_head_bytes: int = 64 * 1024,
        idle_timeout_s: float | None = None,
        peer: str = "server",
        dial: Dialer | None = None,
    ) -> None:
        self._host = host
        self._port = port
        #: ``host:port``, for messages.
        self.address = f"{host}:{port}"
        #: What failure messages call the other end ("primary", "shadow", "target").
        self.peer = peer
        # Only new connections go through it: one call per dial, nothing per exchange.
        self._dial: Dialer = dial_tcp if dial is None else dial
        #: A response head (status line and fields) beyond this is a bad response (nginx: 502 past
        #: ``proxy_buffer_size``).
        self.max_head_bytes = max_head_bytes
        # Pipelined connections carry several requests at once (the mirror's copies); others never
        # do (one client's request must not wait behind another's).
        self._factory: type[Http1Connection] = PipelinedConnection if pipelined else Http1Connection
        self._ssl = ssl_context
        self._server_hostname = host if ssl_context is not None else None
        self._connect_timeout_s = connect_timeout_s
        self._max_idle = max_idle
        #: A connection idle longer than this is closed rather than reused (the server has likely
        #: dropped it by then); None keeps idle connections until the server closes them.
        self._idle_timeout_s = idle_timeout_s
        # LIFO of idle connections; closed ones are skipped lazily (bounded by max_idle).
        self._idle: list[Http1Connection] = []
        self._all: set[Http1Connection] = set()
        self._closed = False
        self.stats = PoolStats()

    def try_acquire(self) -> Http1Connection | None:
        """An idle connection, or ``None`` when a new one must be dialled."""
        idle = self._idle
        if self._idle_timeout_s is not None and idle:
            self._expire_idle()
        while idle:
            conn = idle.pop()
            if not conn.closed:
                self.stats.reuses += 1
                return conn
        return None

    def _expire_idle(self) -> None:
        assert self._idle_timeout_s is not None
        oldest_ok_s = time.monotonic() - self._idle_timeout_s
        idle = self._idle
        # Oldest first: they sit at the bottom of the LIFO.
        expired = 0
        for conn in idle:
            if conn.idle_since_s >= oldest_ok_s:
                break
            conn.close()
            expired += 1
        if expired:
            del idle[:expired]

    async def connect(self) -> Http1Connection:
        """Dial the server; raises ``TimeoutError`` or ``OSError`` (incl. TLS failures)."""
        if self._closed:
            raise ConnectionRefusedError("the pool is closed (shutting down)")
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                conn = await self._dial(
                    lambda: self._factory(self), self._host, self._port, self._ssl, self._server_hostname
                )
        except (OSError, TimeoutError):
            self.stats.connect_errors += 1
            raise
        self.stats.connects += 1
        return conn

    def release(self, conn: Http1Connection) -> None:
        """Return a connection whose exchange completed cleanly."""
        if conn.closed or conn.outstanding:
            return
        if self._closed or len(self._idle) >= self._max_idle:
            conn.close()
            return
        conn.resume_reading()
        if self._idle_timeout_s is not None:
            conn.idle_since_s = time.monotonic()
        self._idle.append(conn)

    def track(self, conn: Http1Connection) -> None:
        self._all.add(conn)

    def untrack(self, conn: Http1Connection) -> None:
        self._all.discard(conn)

    def close(self) -> None:
        """Close idle connections now and refuse new ones; busy ones close when their exchange ends."""
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    def abort_all(self) -> None:
        """Drop every connection, busy or not (the shutdown deadline passed)."""
        self.close()
        for conn in list(self._all):
            conn.abort()


class FetchedResponse:
    """A whole response as ``fetch`` collected it: the head as received and the body without its
    transfer framing; ``first_byte_ns`` (monotonic) when its first head (1xx included) arrived,
    ``done_ns`` when its last byte did."""

    __slots__ = ("body", "done_ns", "first_byte_ns", "headers", "http_version", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: list[Header],
        body: bytes,
        http_version: str,
        first_byte_ns: int,
        done_ns: int,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.http_version = http_version
        self.first_byte_ns = first_byte_ns
        self.done_ns = done_ns


class FetchFailure:
    """Why ``fetch`` got no response: a failure kind (``CONNECT_ERROR``, ``TIMEOUT``, ...) and a message."""

    __slots__ = ("kind", "message")

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message


class Expiring(Protocol):
    def timed_out(self, timeout_s: float) -> None:
        """The deadline passed before the exchange ended (``Deadlines`` dropped it first)."""


class Deadlines:
    """The deadlines of many exchanges that share one timeout, on one timer of the loop.

    A timer handle for each exchange (``loop.call_later``, its cancel, and the close of the loop's
    own timer behind it) was about 4,800 instructions a request on the replayer's request path;
    here a running exchange is an entry in a dict, dropped when it ends, so nothing outlives its
    exchange. With one timeout, deadlines fall due in the order exchanges were added: the oldest
    entry is the next due. The timer waits for it, then expires every entry whose deadline passed,
    oldest first, and waits for the next one still there (an exchange that ended early is no reason
    to wake). Deadlines are ``time.monotonic()`` values, and an entry is expired only once its own
    has passed: never early, at most the loop timer's granularity late."""

    __slots__ = ("_entries", "_loop", "_timer", "timeout_s")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._loop = loop
        self.timeout_s = timeout_s
        self._entries: dict[Expiring, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, item: Expiring) -> None:
        """Start ``item``'s deadline: ``item.timed_out`` unless it is discarded first."""
        self._entries[item] = time.monotonic() + self.timeout_s
        if self._timer is None:
            self._timer = self._loop.call_later(self.timeout_s, self._expire)

    def discard(self, item: Expiring) -> None:
        """``item`` ended: it has no deadline any more (nothing happens if it had none)."""
        entries = self._entries
        if item in entries:
            del entries[item]

    def close(self) -> None:
        """Forget every deadline (the loop is going): no entry will be told."""
        self._entries.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        entries = self._entries
        now = time.monotonic()
        while entries:
            item = next(iter(entries))
            deadline = entries[item]
            if deadline > now:
                self._timer = self._loop.call_later(deadline - now, self._expire)
                return
            del entries[item]
            try:
                item.timed_out(self.timeout_s)
            except Exception:  # one bad callback must not leave the entries after it without a timer
                log.exception("an exchange's deadline callback failed")


class _Collector:
    """The ``ResponseSink`` behind ``fetch`` and ``start_fetch``: collects one response and resolves
    its future (or calls its callback) once."""

    __slots__ = ("_body", "_first_byte_ns", "_headers", "_max_body", "_reason", "_size", "_status", "_version",
                 "callback", "conn", "deadlines", "pool", "timer", "waiter")  # fmt: skip

    def __init__(
        self,
        pool: Pool,
        waiter: asyncio.Future[FetchedResponse | FetchFailure] | None,
        max_body: int,
        callback: Callable[[FetchedResponse | FetchFailure], None] | None = None,
    ) -> None:
        self.pool = pool
        self.waiter = waiter
        self.callback = callback
        self.conn: Http1Connection | None = None
        self.timer: asyncio.TimerHandle | None = None
        #: Where ``start_fetch`` keeps its deadline (``fetch`` has a ``timer`` instead).
        self.deadlines: Deadlines | None = None
        self._max_body = max_body
        self._status = 0
        self._reason = b""
        self._headers: list[Header] = []
        self._body: list[bytes] = []
        self._size = 0
        self._first_byte_ns = 0
        self._version = "1.1"

    def _resolve(self, result: FetchedResponse | FetchFailure) -> None:
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()
        deadlines = self.deadlines
        if deadlines is not None:
            self.deadlines = None
            deadlines.discard(self)
        waiter = self.waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(result)
            return
        callback = self.callback
        if callback is not None:
            self.callback = None
            callback(result)

    def fail(self, kind: str, message: str) -> None:
        """End the exchange from outside (its deadline): the connection cannot be reused."""
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.detach()
        self._resolve(FetchFailure(kind, message))

    def timed_out(self, timeout_s: float) -> None:
        self.timer = None
        self.deadlines = None  # it dropped this one already
        self.fail(TIMEOUT, f"no response within {timeout_s:g} s")

    # --- ResponseSink ----------------------------------------------------------------------------

    def on_interim(self, status: int, reason: bytes, headers: list[Header]) -> None:
        if not self._first_byte_ns:
            self._first_byte_ns = time.monotonic_ns()

    def on_head(self, status: int, reason: bytes, headers: list[Header]) -> None:
        if not self._first_byte_ns:
            self._first_byte_ns = time.monotonic_ns()
        self._status = status
        self._reason = reason
        self._headers = headers
        conn = self.conn
        if conn is not None:
            self._version = conn.response_version()

    def on_body(self, data: bytes) -> None:
        if self.conn is None:
            return
        self._size += len(data)
        if self._size > self._max_body:
            self.fail(BODY_TOO_LARGE, f"response body over {self._max_body} bytes")
            return
        self._body.append(data)

    def on_complete(self, reusable: bool) -> None:
        conn = self.conn
        if conn is None:
            return
        done_ns = time.monotonic_ns()
        self.conn = None
        if reusable:
            self.pool.release(conn)
        else:
            conn.close()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._resolve(
            FetchedResponse(
                self._status, self._reason, self._headers, body, self._version, self._first_byte_ns, done_ns
            )
        )

    def on_upgraded(self, rest: bytes) -> None:
        self.fail(BAD_RESPONSE, f"{self.pool.peer} switched protocols")

    def on_failure(self, kind: str, message: str) -> None:
        if self.conn is None:
            return
        self.conn = None
        self._resolve(FetchFailure(kind, message))

    def flush(self) -> None:
        return None

    def upstream_write_paused(self, paused: bool) -> None:
        # The request is in memory already; the transport buffers it.
        return None


def start_fetch(
    deadlines: Deadlines,
    conn: Http1Connection,
    method: str,
    request: list[bytes],
    *,
    max_body_bytes: int,
    callback: Callable[[FetchedResponse | FetchFailure], None],
) -> None:
    """Send one request on ``conn``, an open connection from its pool's ``try_acquire``, and call
    ``callback`` once with the whole response or the failure: from the loop's read of its last
    bytes (the connection is back in the pool by then), or when its deadline in ``deadlines``
    passes. No task, no future: the caller carries on from the callback. It does not retry a stale
    connection (``fetch`` does); ``conn.stale`` after a ``RESET`` failure says one would be safe.
    """
    sink = _Collector(conn._pool, None, max_body_bytes, callback)
    sink.conn = conn
    sink.deadlines = deadlines
    deadlines.add(sink)
    conn.begin(sink, method == "HEAD")
    conn.writelines(request)


async def fetch(
    pool: Pool, method: str, request: list[bytes], *, timeout_s: float, max_body_bytes: int
) -> FetchedResponse | FetchFailure:
    """Send one request (``request``: its head and body as buffers) on a pooled or new connection and
    collect the whole response. Never raises for the server's failures: a ``FetchFailure`` says
    what went wrong. ``timeout_s`` bounds each attempt from the write to the response's end.

    A stale pooled connection (``Http1Connection.stale``) is retried once on a fresh one when the
    method is idempotent; the retry is a new attempt with its own deadline.
    """
    conn = pool.try_acquire()
    retry_allowed = method in http1.IDEMPOTENT_METHODS
    head_only = method == "HEAD"
    loop = asyncio.get_running_loop()
    while True:
        if conn is None:
            try:
                conn = await pool.connect()
            except TimeoutError:
                return FetchFailure(TIMEOUT, f"connect to {pool.address} timed out")
            except ssl.SSLError as exc:
                return FetchFailure(CONNECT_ERROR, f"TLS handshake with {pool.address} failed: {exc}")
            except OSError as exc:
                return FetchFailure(CONNECT_ERROR, f"connect to {pool.address}: {exc.strerror or exc}")
        waiter: asyncio.Future[FetchedResponse | FetchFailure] = loop.create_future()
        sink = _Collector(pool, waiter, max_body_bytes)
        sink.conn = conn
        # One timer handle per attempt: cheaper than an asyncio.timeout scope on the hot path.
        sink.timer = loop.call_later(timeout_s, sink.timed_out, timeout_s)
        if conn.closed:
            # Closed between the pool and this turn: the same as a stale connection.
            sink.on_failure(RESET, f"{pool.peer} closed the connection before the request was sent")
        else:
            conn.begin(sink, head_only)
            conn.writelines(request)
        try:
            result = await waiter
        except asyncio.CancelledError:
            sink.fail(OTHER, "cancelled")
            raise
        if retry_allowed and isinstance(result, FetchFailure) and result.kind == RESET and conn.stale:
            retry_allowed = False
            conn = None
            continue
        return result
