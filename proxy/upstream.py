"""Keep-alive connections to the primary: an asyncio Protocol with llhttp's response parser, and a pool.

One ``UpstreamConnection`` carries one exchange at a time (no upstream pipelining) and hands the
response to a ``ResponseSink`` as it is parsed: head, body pieces, end or failure. The pool keeps idle
connections (LIFO, so the warmest is reused) and dials new ones with a connect timeout, through a
``Dialer`` (``dial_tcp`` unless one is given: tests inject failures there). This module must never
buffer a whole body, decode one, or decide what the client sees: that is the sink's job.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from shadowtap.proxy import http1
from shadowtap.proxy.forward import PrimaryTarget
from shadowtap.proxy.upgrade import PRIMARY_SIDE, Tunnel
from shadowtap.recorder.model import FailureKind, Header

__all__ = [
    "Dialer",
    "PipelinedConnection",
    "PoolStats",
    "ResponseSink",
    "UpstreamConnection",
    "UpstreamPool",
    "dial_tcp",
]

log = logging.getLogger(__name__)


class _UnexpectedResponse(Exception):
    """Raised inside a parser callback when the primary sends bytes no request asked for."""


class ResponseSink(Protocol):
    """Receives one primary response as it is parsed. Every call runs on the event loop."""

    def on_interim(self, status: int, reason: bytes, headers: list[Header]) -> None: ...

    def on_head(self, status: int, reason: bytes, headers: list[Header]) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_complete(self, reusable: bool) -> None: ...

    def on_upgraded(self, rest: bytes) -> None: ...

    def on_failure(self, kind: str, message: str) -> None: ...

    def flush(self) -> None: ...

    def upstream_write_paused(self, paused: bool) -> None: ...


class Dialer(Protocol):
    """Opens one connection for a pool: calls ``factory`` for the protocol (which tracks itself in the
    pool once connected) and returns it. Raises ``OSError`` (TLS failures included) when it cannot;
    the pool applies the connect timeout and counts the outcome."""

    async def __call__(
        self,
        factory: Callable[[], UpstreamConnection],
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
    ) -> UpstreamConnection: ...


async def dial_tcp(
    factory: Callable[[], UpstreamConnection],
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
) -> UpstreamConnection:
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


class UpstreamConnection(asyncio.Protocol):
    """One connection to the primary; parses responses and feeds the attached sink."""

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
        "received_any",
        "served",
        "transport",
        "tunnel",
    )

    def __init__(self, pool: UpstreamPool) -> None:
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
        self.tunnel: Tunnel | None = None

    # --- used by the data path -------------------------------------------------------------------

    def begin(self, sink: ResponseSink, head_only: bool) -> None:
        """Attach the exchange that is about to be written; ``head_only`` for HEAD requests."""
        self._sink = sink
        self._head_only = head_only
        self._head_seen = False
        self._complete = False
        self.received_any = False

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
            self.tunnel.received(PRIMARY_SIDE, data)
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
                self._fail(FailureKind.BAD_RESPONSE, str(exc.__context__))
                return
            log.exception("response callback failed; closing the primary connection")
            self._fail(FailureKind.OTHER, "internal error while relaying the response")
            return
        except httptools.HttpParserError as exc:
            self._fail(FailureKind.BAD_RESPONSE, f"malformed response from primary: {exc}")
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
            self.tunnel.lost(PRIMARY_SIDE)
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
            sink.on_failure(FailureKind.RESET, f"primary closed the connection {where}{detail}")

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.write_paused(PRIMARY_SIDE, True)
        elif self._sink is not None:
            self._sink.upstream_write_paused(True)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.write_paused(PRIMARY_SIDE, False)
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
            self._fail_with(sink, FailureKind.BAD_RESPONSE, "primary switched protocols without a 101")
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


class PipelinedConnection(UpstreamConnection):
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

    def __init__(self, pool: UpstreamPool) -> None:
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
            self._fail_queued("shadow closed the connection after an earlier answer")
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
            sink.on_failure(FailureKind.RESET, message)


class UpstreamPool:
    """Keep-alive connections to one primary. Concurrency is bounded by client connections: each
    client connection uses at most one primary connection at a time."""

    __slots__ = (
        "_all",
        "_closed",
        "_connect_timeout_s",
        "_dial",
        "_factory",
        "_idle",
        "_max_idle",
        "_ssl",
        "_target",
        "max_head_bytes",
        "stats",
    )

    def __init__(
        self,
        target: PrimaryTarget,
        *,
        ssl_context: ssl.SSLContext | None,
        connect_timeout_s: float,
        max_idle: int,
        pipelined: bool = False,
        max_head_bytes: int = 64 * 1024,
        dial: Dialer | None = None,
    ) -> None:
        self._target = target
        # Only new connections go through it: one call per dial, nothing per exchange.
        self._dial: Dialer = dial_tcp if dial is None else dial
        #: A response head (status line and fields) beyond this is a bad response (nginx: 502 past
        #: ``proxy_buffer_size``).
        self.max_head_bytes = max_head_bytes
        # Pipelined connections carry several requests at once (the mirror's copies); the primary's
        # never do (one client's request must not wait behind another's).
        self._factory: type[UpstreamConnection] = PipelinedConnection if pipelined else UpstreamConnection
        self._ssl = ssl_context
        self._connect_timeout_s = connect_timeout_s
        self._max_idle = max_idle
        # LIFO of idle connections; closed ones are skipped lazily (bounded by max_idle).
        self._idle: list[UpstreamConnection] = []
        self._all: set[UpstreamConnection] = set()
        self._closed = False
        self.stats = PoolStats()

    def try_acquire(self) -> UpstreamConnection | None:
        """An idle connection, or ``None`` when a new one must be dialled."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                self.stats.reuses += 1
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        """Dial the primary; raises ``TimeoutError`` or ``OSError`` (incl. TLS failures)."""
        if self._closed:
            raise ConnectionRefusedError("the proxy is shutting down")
        target = self._target
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                conn = await self._dial(
                    lambda: self._factory(self),
                    target.host,
                    target.port,
                    self._ssl,
                    target.host if self._ssl is not None else None,
                )
        except (OSError, TimeoutError):
            self.stats.connect_errors += 1
            raise
        self.stats.connects += 1
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection whose exchange completed cleanly."""
        if conn.closed or conn.outstanding:
            return
        if self._closed or len(self._idle) >= self._max_idle:
            conn.close()
            return
        conn.resume_reading()
        self._idle.append(conn)

    def track(self, conn: UpstreamConnection) -> None:
        self._all.add(conn)

    def untrack(self, conn: UpstreamConnection) -> None:
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
