"""The proxy's HTTP/2 side: client connections that speak h2 (TLS with ALPN ``h2``) or h2c (by prior
knowledge), and their streams forwarded to the primary.

The HTTP/1 connection (``shadowtap.proxy.server``) hands its transport over when it meets the h2c
preface (llhttp stops on ``PRI * HTTP/2.0``: nothing is checked on the HTTP/1 path) or when TLS
chose ``h2``; an ``H2Session`` then owns the connection, on ``shadowtap.wire.h2conn`` (server
role). Each client stream becomes an ``_H2Forward``: to an HTTP/2 primary (``h2c://`` or ``https://``
with ``forward.primary_http2``) it is a stream on the shared ``shadowtap.wire.h2.H2Pool``; to an
HTTP/1 primary the request is translated and sent on the HTTP/1 pool.

Flow control both ways, with a bound per stream and per connection (``CLIENT_STREAM_WINDOW``,
``CLIENT_CONNECTION_WINDOW``): the client's DATA is acknowledged (its window reopened) only when the
bytes left for the primary, and the primary's DATA only when they were
written to the client; a stream whose client does not read holds the primary back, never a buffer
here. Trailers pass through; pseudo-header and connection-specific fields are handled per RFC 9113
(malformed ones are refused on the way in: ``shadowtap.wire.h2fields``). A primary that resets a
stream resets the client's; a primary that cannot be reached answers gRPC clients (``content-type:
application/grpc*``) with a trailers-only ``grpc-status: 14`` (UNAVAILABLE) and others with 502
(504 for timeouts).

Bad input ends only what it touches: a protocol error closes its connection (GOAWAY with the
error), a malformed request or trailers (``shadowtap.wire.h2fields``; a content-length that is no
number, or disagrees with the DATA, checked here) resets its stream with PROTOCOL_ERROR, and what
the primary had of that request is broken off, never sent whole (the DATA that completes an
announced length waits for END_STREAM); a stream that stalls past a deadline is reset; each is
counted by cause in ``ServerStats.h2_errors`` and logged once per cause per process.

When any stage runs, streams are handed to the proxy's stages as ``ProxiedExchange``s with
``http_version`` "2": the request stages (the mirror) once the client's request stream ended, with
its body (up to the capture limit, else None: not mirrored), trailers and, for gRPC, its messages'
framing and timing; the completion stages (the record stage) when the stream ends, with the
primary's head, body (capped likewise), trailers and messages. A gRPC body that is not valid
length-prefixed framing keeps its bytes and loses only its message list. Without stages nothing is
copied. The primary observers (metrics) hear every stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from typing import Final, cast

from shadowtap.proxy.context import Context
from shadowtap.proxy.stages import ProxiedExchange, call_stage
from shadowtap.recorder.model import Failure, FailureKind, Response, StreamMessage, new_timing
from shadowtap.wire import http1
from shadowtap.wire.client import Http1Connection
from shadowtap.wire.grpc import GrpcFramingError, MessageSplitter
from shadowtap.wire.h2 import H2Pool, H2Stream, Header, error_name
from shadowtap.wire.h2conn import (
    ConnectionTerminated,
    DataReceived,
    H2Connection,
    ProtocolError,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TooManyStreamsError,
    TrailersReceived,
    WindowUpdated,
)
from shadowtap.wire.h2fields import request_problem, trailers_problem

__all__ = ["PREFACE", "H2Session", "h2c_replay", "start_session", "upstream_pool", "wants_h2"]

log = logging.getLogger(__name__)

#: The client connection preface of RFC 9113 section 3.4.
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: What llhttp has read when it stops on the preface (it knows PRI as a method).
_PREFACE_HEAD: Final = PREFACE[:18]

#: Streams a client may have open at once (advertised); more is a connection error (GOAWAY
#: ENHANCE_YOUR_CALM), which is what a HEADERS flood gets.
MAX_CONCURRENT_STREAMS: Final = 128
#: Our receive window per client stream: request bytes held here for one stream never exceed it
#: (they are acknowledged only once sent on to the primary).
CLIENT_STREAM_WINDOW: Final = 256 * 1024
#: Our receive window for a client connection, across its streams: four streams' windows. Request
#: bytes held here for one client connection never exceed it. RFC 9113's default (64 KiB) would cap
#: a client's uploads at 64 KiB a round trip however many streams it opens.
CLIENT_CONNECTION_WINDOW: Final = 4 * CLIENT_STREAM_WINDOW
# Every HTTP/2 window's size until SETTINGS or WINDOW_UPDATE change it (RFC 9113, 6.9.2).
_DEFAULT_WINDOW: Final = 65_535
#: Streams a client may reset before their answer beyond those answered: past it the connection is
#: ended with ENHANCE_YOUR_CALM. A stream opened and reset at once frees its place under
#: MAX_CONCURRENT_STREAMS but has already started a request to the primary ("rapid reset",
#: CVE-2023-44487); a client that cancels some calls (gRPC deadlines) answers far more.
RESET_ALLOWANCE: Final = 128
#: Bytes waiting in the client's socket buffer, while it reads nothing, past which the connection is
#: dropped: response DATA waits for the client, but what its frames make us answer (PING and
#: SETTINGS acknowledgements, resets, response heads) would otherwise pile up without bound (the
#: PING and SETTINGS floods of CVE-2019-9512 and -9515).
UNREAD_OUTPUT_BYTES: Final = 1024 * 1024
#: Response bytes an HTTP/1 primary may have waiting for one stream's client before its reading stops.
_HTTP1_READ_BOUND: Final = 256 * 1024
#: Causes already logged (once per process each; every case is counted).
_CAUSES_LOGGED: set[str] = set()

_GRPC_UNAVAILABLE: Final = b"14"
_GRPC_DEADLINE_EXCEEDED: Final = b"4"
_INTERNAL_ERROR: Final = 0x2
_CANCEL: Final = 0x8
_PROTOCOL_ERROR: Final = 0x1
_ENHANCE_YOUR_CALM: Final = 0xB

#: Response fields that are about one HTTP/1 connection and have no place in HTTP/2 (RFC 9113 8.2.2).
_CONNECTION_SPECIFIC: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)


def h2c_replay(exc: Exception, data: bytes) -> bytes | None:
    """When llhttp stopped on the HTTP/2 preface (called on its error path only): the bytes to feed
    an HTTP/2 session, the whole preface and what followed it in ``data``; else None."""
    if not str(exc).startswith("Pause on PRI"):
        return None
    rest = _preface_rest(data)
    return None if rest is None else _PREFACE_HEAD + rest


def _preface_rest(data: bytes) -> bytes | None:
    """What follows the part of the preface llhttp read, within ``data`` (the read it stopped in):
    ``data`` starts with the end of the preface's first 18 bytes, then the rest of the stream."""
    tail = PREFACE[18:]
    for taken in range(min(len(data), 18), 0, -1):
        if data[:taken] == _PREFACE_HEAD[18 - taken :]:
            rest = data[taken:]
            if rest[: len(tail)] == tail[: len(rest)]:
                return rest
    return None


def wants_h2(transport: asyncio.BaseTransport) -> bool:
    """Whether TLS chose ``h2`` by ALPN on this connection."""
    ssl_object = transport.get_extra_info("ssl_object")
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"


def upstream_pool(ctx: Context) -> H2Pool | None:
    """The HTTP/2 pool to the primary when it speaks HTTP/2 (made on first use), else None."""
    pool = ctx.h2_pool
    if pool is not None:
        return None if pool is False else cast(H2Pool, pool)
    settings = ctx.settings
    target = settings.target
    if target.scheme == "h2c":
        ssl_context = None
    elif target.tls and settings.primary_http2:
        from shadowtap.proxy.forward import upstream_ssl_context

        ssl_context = upstream_ssl_context(settings)  # a context of its own: the pool sets its ALPN
    else:
        ctx.h2_pool = False  # an HTTP/1 primary: streams are translated (asked once)
        return None
    pool = H2Pool(
        target.host,
        target.port,
        ssl_context=ssl_context,
        connect_timeout_s=settings.connect_timeout_s,
        max_connections=settings.primary_http2_connections,
        peer="primary",
    )
    ctx.h2_pool = pool
    return pool


def start_session(
    ctx: Context, transport: asyncio.Transport, client_addr: str, client_ip: bytes, conn_id: str, replay: bytes
) -> None:
    """Take a client connection over for HTTP/2; ``replay`` is what to feed the session first (the
    preface and what followed it for h2c, nothing after ALPN)."""
    session = H2Session(ctx, transport, client_addr, client_ip, conn_id)
    transport.set_protocol(session)
    session.start(replay)


def _count(ctx: Context, cause: str, detail: str) -> None:
    errors = ctx.stats.h2_errors
    errors[cause] = errors.get(cause, 0) + 1
    if cause not in _CAUSES_LOGGED:
        _CAUSES_LOGGED.add(cause)
        log.warning("HTTP/2: %s (%s); further cases are counted, not logged", cause, detail)


class H2Session(asyncio.Protocol):
    """One client connection speaking HTTP/2."""

    def __init__(
        self, ctx: Context, transport: asyncio.Transport, client_addr: str, client_ip: bytes, conn_id: str
    ) -> None:
        self.ctx = ctx
        self.transport = transport
        self.client_addr = client_addr
        self.client_ip = client_ip
        self.conn_id = conn_id
        self.scheme = b"https" if transport.get_extra_info("ssl_object") is not None else b"http"
        # What the client sends is validated here (``h2fields``: one compiled pass); what we send was
        # validated on its way in (or is ours). The advertised header list limit holds from the first
        # HEADERS frame on.
        self.h2 = H2Connection(
            False,
            max_concurrent_streams=MAX_CONCURRENT_STREAMS,
            initial_window_size=CLIENT_STREAM_WINDOW,
            max_header_list_size=ctx.settings.max_header_bytes,
        )
        self.streams: dict[int, _H2Forward] = {}
        #: Streams whose response bytes wait for the client's window or for the socket to drain.
        self.blocked: set[_H2Forward] = set()
        #: Streams with response bytes (or their end) to send at the end of this loop turn.
        self.dirty: set[_H2Forward] = set()
        self.closed = False
        self.write_paused = False
        self._write_paused_since = 0.0
        self.idle_since = ctx.now
        self._preface_deadline = ctx.now + ctx.settings.client_header_timeout_s
        self._going_away = False
        #: Streams the client reset before they ended, and streams ended (either way).
        self._client_resets = 0
        self._streams_ended = 0
        #: The primary URL taken apart once per connection (``ForwardSettings.target`` parses it).
        self.target = ctx.settings.target
        self._write_scheduled = False

    def start(self, initial: bytes) -> None:
        ctx = self.ctx
        ctx.h2_sessions.add(self)
        ctx.stats.h2_connections += 1
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CLIENT_CONNECTION_WINDOW - _DEFAULT_WINDOW)
        self._write()
        if ctx.closing:
            self.go_away()
        if initial:
            self.data_received(initial)

    # --- asyncio.Protocol (set_protocol: connection_made is not called again) ---------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except TooManyStreamsError as flood:  # a name of its own: compiled, one name has one type
            self._protocol_error("too many concurrent streams", str(flood), _ENHANCE_YOUR_CALM)
            return
        except ProtocolError as exc:
            cause = "continuation flood" if "continuation" in str(exc).lower() else "protocol error"
            self._protocol_error(cause, str(exc), _PROTOCOL_ERROR)
            return
        self._preface_deadline = math.inf
        now = self.ctx.now
        for event in events:
            if isinstance(event, DataReceived):
                forward = self.streams.get(event.stream_id)
                padding = event.flow_controlled_length - len(event.data)
                if forward is None or padding:
                    # Nothing will consume it (a stream we ended), or padding: credit it at once.
                    self._ack(event.stream_id, event.flow_controlled_length if forward is None else padding)
                if forward is not None:
                    forward.last_read = now
                    forward.owed += len(event.data)
                    if forward.length >= 0:
                        self._counted_body(forward, event.data, event.stream_ended)
                    else:
                        forward.client_body(event.data)
            elif isinstance(event, RequestReceived):
                problem = request_problem(event.headers)
                if problem:
                    self._malformed(event.stream_id, problem)
                else:
                    self._request(event.stream_id, event.headers, event.stream_ended)
            elif isinstance(event, StreamEnded):
                forward = self.streams.get(event.stream_id)
                if forward is not None and not forward.body_done:
                    self._body_done(forward, None)
            elif isinstance(event, TrailersReceived):
                forward = self.streams.get(event.stream_id)
                problem = trailers_problem(event.headers)
                if problem:
                    self._malformed(event.stream_id, problem)
                    if forward is not None:
                        forward.client_reset(_PROTOCOL_ERROR)
                elif forward is not None:
                    self._body_done(forward, list(event.headers))
            elif isinstance(event, (WindowUpdated, RemoteSettingsChanged)):
                self.flush_blocked()
            elif isinstance(event, StreamReset):
                forward = self.streams.get(event.stream_id)
                if forward is not None:
                    resets = self._client_resets + 1
                    self._client_resets = resets
                    forward.client_reset(int(event.error_code))
                    if 2 * resets > RESET_ALLOWANCE + self._streams_ended:  # resets beyond those answered
                        answered = self._streams_ended - resets
                        detail = f"{resets} streams reset by the client, {answered} answered"
                        self._protocol_error("rapid reset", detail, _ENHANCE_YOUR_CALM)
                        return
            elif isinstance(event, ConnectionTerminated):
                self._going_away = True
                for forward in list(self.streams.values()):
                    if forward.stream_id > event.last_stream_id:
                        forward.client_reset(_CANCEL)
                if not self.streams:
                    self.close()
        self._write()
        if self.write_paused and self.transport.get_write_buffer_size() > UNREAD_OUTPUT_BYTES:
            detail = f"{self.transport.get_write_buffer_size()} bytes wait for a client that reads nothing"
            self._protocol_error("unread output", detail, _ENHANCE_YOUR_CALM)
            self.abort()  # what is buffered would never leave: closing would wait for it

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ctx = self.ctx
        ctx.h2_sessions.discard(self)
        for forward in list(self.streams.values()):
            forward.client_reset(_CANCEL)
        self.streams.clear()
        self.blocked.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._write_paused_since = self.ctx.now

    def resume_writing(self) -> None:
        self.write_paused = False
        self.flush_blocked()
        self._write()

    # --- used by the streams ---------------------------------------------------------------------------

    def _write(self) -> None:
        dirty = self.dirty
        if dirty:
            self.dirty = set()
            for forward in dirty:
                forward.flush_response()
        self._write_scheduled = False
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.transport.write(data)

    def write_soon(self) -> None:
        """Write what the state machine has for the client at the end of this loop turn (called when
        a stream acted outside ``data_received``: a primary event, a timer), so the frames of many
        streams answered in one turn leave in one send."""
        if not self._write_scheduled:
            self._write_scheduled = True
            self.ctx.loop.call_soon(self._write)

    def _ack(self, stream_id: int, size: int) -> None:
        if size and not self.closed:
            self.h2.acknowledge_received_data(size, stream_id)

    def ack_request_bytes(self, forward: _H2Forward, size: int) -> None:
        """``size`` request bytes of ``forward`` are done with (sent on, or dropped at its end): the
        client may send as many more. Never more than it sent and was not given back (a request sent
        once more drains its bytes twice)."""
        size = min(size, forward.owed)
        if size > 0:
            forward.owed -= size
            self._ack(forward.stream_id, size)
            self.write_soon()

    def flush_blocked(self) -> None:
        for forward in list(self.blocked):
            if self.write_paused or self.closed:
                return
            forward.flush_response()

    def stream_done(self, forward: _H2Forward) -> None:
        self._streams_ended += 1
        self.streams.pop(forward.stream_id, None)
        self.blocked.discard(forward)
        if not self.streams:
            self.idle_since = self.ctx.now
            if self._going_away:
                self.close()

    def reset_client(self, stream_id: int, code: int) -> None:
        if self.closed:
            return
        with contextlib.suppress(ProtocolError):
            self.h2.reset_stream(stream_id, error_code=code)
        self._write()

    def go_away(self) -> None:
        """Shutting down: no new stream; the connection closes when its streams end."""
        if self.closed or self._going_away:
            return
        self._going_away = True
        with contextlib.suppress(ProtocolError):
            self.h2.close_connection(last_stream_id=self.h2.highest_inbound_stream_id)
        self._write()
        if not self.streams:
            self.close()

    def close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    # --- internals -------------------------------------------------------------------------------------

    def _protocol_error(self, cause: str, detail: str, code: int) -> None:
        _count(self.ctx, cause, f"{self.client_addr}: {detail}")
        with contextlib.suppress(ProtocolError):
            self.h2.close_connection(error_code=code, additional_data=cause.encode("ascii"))
        self._write()
        self.closed = True
        self.close()
        for forward in list(self.streams.values()):
            forward.client_reset(_CANCEL)

    def _malformed(self, stream_id: int, problem: str) -> None:
        """A malformed request or trailers: a stream error of type PROTOCOL_ERROR (RFC 9113 8.1.1),
        counted; the connection and its other streams go on."""
        _count(self.ctx, "malformed request", f"{self.client_addr}: {problem}")
        with contextlib.suppress(ProtocolError):
            self.h2.reset_stream(stream_id, error_code=_PROTOCOL_ERROR)

    def _counted_body(self, forward: _H2Forward, data: bytes, ended: bool) -> None:
        """DATA of a request that announced a content-length: not one byte past it is sent on, and the
        piece that completes it waits for END_STREAM (the primary must not see the request whole
        before the client's stream proves it is)."""
        received = forward.received + len(data)
        forward.received = received
        length = forward.length
        if received > length:
            self.ack_request_bytes(forward, len(data))  # dropped: the client's connection window reopens
            self._bad_length(forward, f"more DATA than its content-length of {length}")
            return
        if received == length and not ended:
            if data:  # an empty frame after it keeps the piece held
                forward.tail = data
            return
        forward.client_body(data)

    def _body_done(self, forward: _H2Forward, trailers: list[Header] | None) -> None:
        length = forward.length
        if length >= 0:
            if forward.received != length:
                self._bad_length(forward, f"{forward.received} bytes of DATA for its content-length of {length}")
                return
            tail = forward.tail
            if tail:
                forward.tail = b""
                forward.client_body(tail)
        forward.client_body_done(trailers)

    def _bad_length(self, forward: _H2Forward, problem: str) -> None:
        """A request whose DATA disagrees with its content-length is malformed (RFC 9113 8.1.1): its
        stream is reset, and the primary's copy of it (never sent whole) is aborted."""
        self._malformed(forward.stream_id, problem)
        forward.client_malformed(problem)

    def _request(self, stream_id: int, raw: list[Header], ended: bool) -> None:
        ctx = self.ctx
        method = path = authority = declared = b""
        headers: list[Header] = []
        for name, value in raw:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
            elif name == b"host":
                if not authority:
                    authority = value
            else:
                if len(name) == 14 and name == b"content-length":
                    if not value.isdigit() or (declared and value != declared):
                        self._malformed(stream_id, f"content-length {value!r}")
                        return
                    declared = value
                headers.append((name, value))
        length = int(declared) if declared else -1
        if ended and length > 0:
            self._malformed(stream_id, f"no DATA for its content-length of {length}")
            return
        ctx.stats.requests += 1
        ctx.stats.h2_streams += 1
        if method == b"CONNECT" or not path.startswith(b"/") or ctx.rewriter.escapes_prefix(path):
            errors = ctx.stats.client_errors
            errors[400] = errors.get(400, 0) + 1
            self._local_response(stream_id, 400, "shadowtap: this request cannot be forwarded over HTTP/2")
            return
        ctx.stats.in_flight += 1
        forward = _H2Forward(self, stream_id, method, path, authority, headers)
        forward.length = length
        self.streams[stream_id] = forward
        if ctx.stages:
            forward.watch(raw)
        if ended:
            forward.body_done = True
        forward.start()
        if ended and forward.ex is not None:
            forward.request_ended(None)

    def _local_response(self, stream_id: int, status: int, message: str) -> None:
        body = (message + "\n").encode("utf-8", "replace")
        with contextlib.suppress(ProtocolError):
            self.h2.send_headers(
                stream_id,
                [(b":status", b"%d" % status), (b"content-type", b"text/plain; charset=utf-8"),
                 (b"content-length", b"%d" % len(body)), (b"x-shadowtap-error", b"1")],
            )  # fmt: skip
            self.h2.send_data(stream_id, body, end_stream=True)

    def sweep(self, now: float) -> None:
        """Deadlines: the preface, idle keep-alive, a client that reads nothing, and each stream's."""
        if self.closed:
            return
        settings = self.ctx.settings
        if now >= self._preface_deadline:
            self._client_timeout("head")
            return
        if self.write_paused and now - self._write_paused_since >= settings.send_timeout_s:
            self._client_timeout("send")
            self.abort()
            return
        if not self.streams:
            if now - self.idle_since >= settings.keepalive_timeout_s or self.ctx.closing:
                self.go_away()
                self.close()
            return
        for forward in list(self.streams.values()):
            forward.sweep(now)
        self._write()

    def _client_timeout(self, what: str) -> None:
        timeouts = self.ctx.stats.client_timeouts
        timeouts[what] = timeouts.get(what, 0) + 1
        self.close()


class _H2Forward:
    """One client stream on its way to the primary and back (the primary's ``StreamSink``, or the
    HTTP/1 ``ResponseSink`` when the primary speaks HTTP/1)."""

    __slots__ = ("_chunked", "_copied", "_copy", "_failure", "_first_byte_ns", "_held", "_out", "_out_end",
                 "_out_trailers", "_pending", "_pending_trailers", "_req_cap", "_req_msgs", "_req_split",
                 "_resp_cap", "_resp_captured", "_resp_headers", "_resp_msgs", "_resp_size", "_resp_split",
                 "_resp_trailers", "_retried", "_sent_ns", "_task", "_unacked", "authority", "body_done", "ctx",
                 "deadline", "ex", "finished", "first_byte_deadline", "grpc", "head_sent", "headers", "http1",
                 "last_read", "length", "method", "owed", "path", "received", "resp_read_at", "session", "started_ns",
                 "status", "stream_id", "tail", "upstream")  # fmt: skip

    def __init__(
        self, session: H2Session, stream_id: int, method: bytes, path: bytes, authority: bytes, headers: list[Header]
    ) -> None:
        self.session = session
        self.ctx = session.ctx
        self.stream_id = stream_id
        self.method = method
        self.path = path
        self.authority = authority
        self.headers = headers
        self.grpc = False
        for name, value in headers:
            if name == b"content-type" and value.startswith(b"application/grpc"):
                self.grpc = True
        self.upstream: H2Stream | None = None
        self.http1: Http1Connection | None = None
        self.finished = False
        self.body_done = False
        self.head_sent = False
        #: The request's content-length, -1 without one; its DATA bytes received so far (counted
        #: only against a length), and the piece that completed it, held until END_STREAM.
        self.length = -1
        self.received = 0
        self.tail = b""
        now = self.ctx.now
        self.last_read = now
        self.resp_read_at = now
        self.deadline = math.inf
        self.first_byte_deadline = math.inf
        self.started_ns = time.monotonic_ns()
        self.status: int | None = None
        # Request body bytes read before the primary stream opened (bounded by our window: they
        # are not acknowledged until sent on).
        self._pending: list[bytes] = []
        self._pending_trailers: list[Header] | None = None
        #: A copy of the request body while it is small, so a refused stream can be sent again.
        self._copy: list[bytes] | None = []
        self._copied = 0
        self._retried = False
        # Response bytes waiting for the client's window, and what the client gets after them.
        self._out: collections.deque[bytes] = collections.deque()
        self._out_trailers: list[Header] | None = None
        self._out_end = False
        self._task: asyncio.Task[None] | None = None
        #: The HTTP/1 request body is chunked (the client sent no content-length).
        self._chunked = False
        #: Request bytes written to an HTTP/1 primary whose socket is full, not yet acknowledged to
        #: the client (-1: the socket takes them, they are acknowledged at once).
        self._unacked = -1
        #: Request bytes the client sent on this stream that its windows have not had back yet: given
        #: back as they leave for the primary, and whatever is left when the stream ends (a reset by
        #: either side, an early answer, a malformed request), so that no end shrinks the client's
        #: connection window for good.
        self.owed = 0
        # What the stages see (``watch``): nothing is copied while ``ex`` is None.
        self.ex: ProxiedExchange | None = None
        self._failure: Failure | None = None
        #: Bytes of this stream's copies counted in the process's ``capture_held`` (given back at the end).
        self._held = 0
        self._sent_ns: int | None = None
        self._first_byte_ns: int | None = None
        self._req_cap: list[bytes] | None = None
        self._req_split: MessageSplitter | None = None
        self._req_msgs: list[StreamMessage] = []
        self._resp_headers: tuple[Header, ...] = ()
        self._resp_cap: list[bytes] = []
        self._resp_captured = 0
        self._resp_size = 0
        self._resp_split: MessageSplitter | None = None
        self._resp_msgs: list[StreamMessage] = []
        self._resp_trailers: tuple[Header, ...] = ()

    # --- what the stages see ----------------------------------------------------------------------------

    def watch(self, raw: list[Header]) -> None:
        """Copy this stream for the stages (some run): its exchange, request and response copies."""
        ctx = self.ctx
        session = self.session
        scheme = "http"
        for name, value in raw:
            if name == b":scheme":
                scheme = value.decode("latin-1")
        self.ex = ProxiedExchange(
            id=f"{ctx.id_prefix}-{next(ctx.ids):x}",
            connection_id=session.conn_id,
            client_addr=session.client_addr,
            started_at_ns=time.time_ns(),
            started_mono_ns=self.started_ns,
            method=self.method.decode("ascii", "replace"),
            target=self.path.decode("latin-1"),
            http_version="2",
            request_headers=tuple(self.headers),
            scheme=scheme,
            authority=self.authority.decode("latin-1"),
            grpc=self.grpc,
        )
        self._req_cap = []
        if self.grpc:
            self._req_split = MessageSplitter()

    def request_ended(self, trailers: list[Header] | None) -> None:
        """The client's request stream ended: the request stages (the mirror) see the whole request."""
        ex = self.ex
        if ex is None:
            return
        cap = self._req_cap
        ex.request_body = None if cap is None else b"".join(cap)
        ex.request_body_size = self._copied
        if trailers:
            ex.request_trailers = tuple(trailers)
        if self._req_msgs:
            ex.request_messages = tuple(self._req_msgs)
        ctx = self.ctx
        for stage in ctx.request_stages:
            call_stage(ctx.stats.stage_errors, stage, stage.request_complete, ex)

    def _complete(self) -> None:
        """The stream ended: the completion stages (the record stage) see the exchange."""
        ex = self.ex
        ctx = self.ctx
        ctx.capture_held -= self._held
        self._held = 0
        if ex is None or not ctx.completion_stages:
            return
        now = time.monotonic_ns()
        base = self.started_ns
        if ex.request_body is not None and ex.request_body_size != self._copied:
            # The stream ended before its request did (reset, failure): what came of it.
            cap = self._req_cap
            ex.request_body = None if cap is None else b"".join(cap)
            ex.request_body_size = self._copied
        sent = self._sent_ns
        first = self._first_byte_ns
        ex.timing = new_timing(
            None if sent is None else sent - base, None if first is None else first - base, now - base
        )
        failure = self._failure
        status = self.status
        if failure is not None:
            if self._first_byte_ns is not None and status is not None:
                failure = Failure(
                    FailureKind.INCOMPLETE,
                    f"{status} response cut after {self._resp_size} body bytes: {failure.message}",
                )
            ex.failure = failure
        elif self._first_byte_ns is not None and status is not None:
            size = self._resp_size
            body = b"".join(self._resp_cap) if size else b""
            ex.response = Response(
                status, "", self._resp_headers, body, "1.1" if ctx.h2_pool is False else "2",
                size if size > len(body) else None, self._resp_trailers, tuple(self._resp_msgs),
            )  # fmt: skip
        else:
            ex.failure = Failure(FailureKind.OTHER, "the stream ended without a response")
        for stage in ctx.completion_stages:
            call_stage(ctx.stats.stage_errors, stage, stage.exchange_complete, ex)

    # --- request side ---------------------------------------------------------------------------------

    def start(self) -> None:
        ctx = self.ctx
        settings = ctx.settings
        self.deadline = ctx.now + settings.total_timeout_s
        if self.body_done:
            self.first_byte_deadline = ctx.now + settings.first_byte_timeout_s
        pool = upstream_pool(ctx)
        if pool is None:
            conn = ctx.pool.try_acquire()
            if conn is None:
                self._task = ctx.loop.create_task(self._connect_http1())
            else:
                self._send_http1(conn)
            return
        headers = self._upstream_headers(pool)
        stream = pool.try_open(headers, self, self.body_done and not self._pending)
        if stream is not None:
            self._attached(stream)
        else:
            self._task = ctx.loop.create_task(self._open(pool, headers))

    def _upstream_headers(self, pool: H2Pool | None) -> list[Header]:
        ctx = self.ctx
        settings = ctx.settings
        session = self.session
        target = session.target
        authority = self.authority if settings.preserve_host and self.authority else target.authority
        out: list[Header] = [
            (b":method", self.method),
            (b":scheme", b"https" if target.tls else b"http"),
            (b":authority", authority),
            (b":path", target.path_prefix + self.path),
        ]
        xff_seen = proto_seen = host_seen = False
        for name, value in self.headers:
            if name == b"x-forwarded-for" and settings.x_forwarded_for and not xff_seen:
                xff_seen = True
                value = value + b", " + session.client_ip
            elif name == b"x-forwarded-proto":
                proto_seen = True
            elif name == b"x-forwarded-host":
                host_seen = True
            out.append((name, value))
        if settings.x_forwarded_for and not xff_seen:
            out.append((b"x-forwarded-for", session.client_ip))
        if settings.x_forwarded_proto and not proto_seen:
            out.append((b"x-forwarded-proto", session.scheme))
        if settings.x_forwarded_host and not host_seen and self.authority:
            out.append((b"x-forwarded-host", self.authority))
        via = ctx.via
        if via is not None:
            out.append((b"via", b"2 " + via[4:]))
        return out

    async def _open(self, pool: H2Pool, headers: list[Header]) -> None:
        settings = self.ctx.settings
        try:
            stream = await pool.open(headers, self, self.body_done and not self._pending)
        except TimeoutError:
            self._task = None
            self._fail(FailureKind.TIMEOUT, f"primary connect timed out after {settings.connect_timeout_s:g} s")
            return
        except OSError as exc:
            self._task = None
            self._fail(FailureKind.CONNECT_ERROR, f"cannot connect to primary: {exc.strerror or exc}")
            return
        self._task = None
        if self.finished:
            stream.reset()
            return
        self._attached(stream)
        self.session.write_soon()

    def _attached(self, stream: H2Stream) -> None:
        self.upstream = stream
        if self.ex is not None and self._sent_ns is None:
            self._sent_ns = time.monotonic_ns()
        pending = self._pending
        if pending:
            self._pending = []
            for piece in pending:
                stream.send_data(piece)
        if self.body_done and not stream.ended_local:
            stream.end(self._pending_trailers)

    def client_body(self, data: bytes) -> None:
        if self.finished or not data:
            return
        copy = self._copy
        self._copied += len(data)
        if copy is not None:
            if self._copied <= self.ctx.settings.max_buffered_body_bytes:
                copy.append(data)
            else:
                self._copy = None
        if self.ex is not None:
            cap = self._req_cap
            if cap is not None:
                ctx = self.ctx
                size = len(data)
                if self._copied <= ctx.capture_limit and ctx.capture_held + size <= ctx.capture_budget:
                    cap.append(data)
                    ctx.capture_held += size
                    self._held += size
                else:
                    # Past the capture limit, or the budget every copy in flight shares: the stages
                    # see the request as not captured (never mirrored; its size still recorded).
                    if self._copied <= ctx.capture_limit:
                        ctx.stats.capture_budget_cuts += 1
                    self._req_cap = None
                    ctx.capture_held -= self._held
                    self._held = 0
            if self._req_split is not None:
                self._req_split = _split(self._req_split, self._req_msgs, data, self.started_ns)
        upstream = self.upstream
        if upstream is not None:
            upstream.send_data(data)
        elif self.http1 is not None:
            self.http1.writelines(http1.chunk(data) if self._chunked else [data])
            if self._unacked >= 0:
                self._unacked += len(data)  # the primary's socket is full: the client waits
            else:
                self.session.ack_request_bytes(self, len(data))
        else:
            self._pending.append(data)

    def client_body_done(self, trailers: list[Header] | None) -> None:
        if self.finished or self.body_done:
            return
        self.body_done = True
        if self.ex is not None:
            self.request_ended(trailers)
        self.first_byte_deadline = self.ctx.now + self.ctx.settings.first_byte_timeout_s
        upstream = self.upstream
        if upstream is not None:
            upstream.end(trailers)
        elif self.http1 is not None:
            if self._chunked:
                self.http1.write(http1.CHUNKED_END)  # request trailers have no HTTP/1 translation here
        else:
            self._pending_trailers = trailers

    def client_malformed(self, problem: str) -> None:
        """The client's request broke HTTP/2 (its stream is reset): the primary's stream goes too, and
        the bytes held here for it give the client's connection window back (``_finish``)."""
        self.tail = b""
        self._pending = []
        self._abandon(f"malformed request: {problem}")

    def client_reset(self, code: int) -> None:
        """The client reset the stream (or its connection went): the primary's stream goes too."""
        self._abandon(f"client reset the stream ({error_name(code)})")

    # --- StreamSink (HTTP/2 primary) -------------------------------------------------------------------

    def on_request_drained(self, sent: int) -> None:
        self.session.ack_request_bytes(self, sent)

    def on_head(self, status: int, headers: list[Header], ended: bool) -> None:
        if self.finished:
            return
        session = self.session
        self.status = status
        if self.ex is not None:
            self._first_byte_ns = time.monotonic_ns()
            self._resp_headers = tuple(headers)
            for name, value in headers:
                if name == b"content-type" and value.startswith(b"application/grpc"):
                    self._resp_split = MessageSplitter()
        self.first_byte_deadline = math.inf
        self.resp_read_at = self.ctx.now
        out: list[Header] = [(b":status", b"%d" % status)]
        for name, value in headers:
            if name not in _CONNECTION_SPECIFIC:
                out.append((name, value))
        via = self.ctx.via
        if via is not None:
            out.append((b"via", b"2 " + via[4:]))
        self.head_sent = True
        try:
            session.h2.send_headers(self.stream_id, out, end_stream=ended)
        except ProtocolError as exc:
            self._count_and_reset("bad response head", str(exc))
            return
        if ended:
            # Trailers-only (a gRPC error): the one HEADERS frame ends the stream, as it came.
            self.upstream = None
            self._finish()
        session.write_soon()

    def on_data(self, data: bytes) -> None:
        if self.finished:
            return
        self.resp_read_at = self.ctx.now
        self._out.append(data)
        if self.ex is not None:
            self._response_copy(data)
        # Sent at the end of this loop turn: a response that ends in the same read leaves as one
        # DATA frame carrying END_STREAM.
        session = self.session
        session.dirty.add(self)
        session.write_soon()

    def on_trailers(self, headers: list[Header]) -> None:
        if not self.finished:
            self._out_trailers = headers
            if self.ex is not None:
                self._resp_trailers = tuple(headers)

    def _response_copy(self, data: bytes) -> None:
        size = len(data)
        ctx = self.ctx
        room = ctx.capture_limit - self._resp_captured
        if room > 0:
            piece = data if size <= room else data[:room]
            taken = len(piece)
            if ctx.capture_held + taken <= ctx.capture_budget:
                self._resp_cap.append(piece)
                self._resp_captured += taken
                ctx.capture_held += taken
                self._held += taken
            else:
                # The rest of the copy is cut (the response is marked truncated), never the wire.
                self._resp_captured = ctx.capture_limit
                ctx.stats.capture_budget_cuts += 1
        self._resp_size += size
        if self._resp_split is not None:
            self._resp_split = _split(self._resp_split, self._resp_msgs, data, self.started_ns)

    def on_end(self) -> None:
        if self.finished:
            return
        # ``upstream`` stays: what is still to be sent is acknowledged to its connection when sent.
        self._out_end = True
        session = self.session
        session.dirty.add(self)
        session.write_soon()

    def on_reset(self, kind: str, message: str, refused: bool) -> None:
        self.upstream = None
        if self.finished:
            return
        if refused and not self.head_sent and not self._retried and self.body_done and self._copy is not None:
            # The primary never processed it (REFUSED_STREAM, or above a GOAWAY's last stream): once more.
            self._retried = True
            self._pending = list(self._copy)
            self.start()
            return
        if self.head_sent or kind == FailureKind.RESET:
            # A reset by the primary is a reset to the client (not a made-up answer, not a hang).
            self._count_failure(kind)
            if self._failure is None:
                self._failure = Failure(kind, message)
            self.session.reset_client(self.stream_id, _INTERNAL_ERROR if kind != FailureKind.RESET else _CANCEL)
            self._finish()
            return
        self._fail(kind, message)

    # --- the response towards the client -----------------------------------------------------------------

    def flush_response(self) -> None:
        """Send what the client's window allows; acknowledge to the primary what left."""
        session = self.session
        if session.closed or self.finished:
            return
        if session.write_paused:
            session.blocked.add(self)
            return
        h2conn = session.h2
        out = self._out
        stream_id = self.stream_id
        sent = 0
        ended = False
        try:
            if out:
                max_frame = h2conn.max_outbound_frame_size
                end_with_data = self._out_end and not self._out_trailers
                while out:
                    window = h2conn.local_flow_control_window(stream_id)
                    if window <= 0:
                        break
                    chunk = out[0]
                    size = min(len(chunk), window, max_frame)
                    if size == len(chunk):
                        out.popleft()
                        ended = end_with_data and not out
                        h2conn.send_data(stream_id, chunk, end_stream=ended)
                    else:
                        out[0] = chunk[size:]
                        h2conn.send_data(stream_id, chunk[:size])
                    sent += size
            if not out and self._out_end and not ended:
                trailers = self._out_trailers
                if trailers:
                    h2conn.send_headers(stream_id, trailers, end_stream=True)
                else:
                    h2conn.end_stream(stream_id)
                ended = True
        except ProtocolError:
            # The client closed the stream, or its connection ended with an error.
            self._abandon("client closed the stream")
            return
        if out:
            session.blocked.add(self)
        else:
            session.blocked.discard(self)
        if sent:
            upstream = self.upstream
            if upstream is not None:
                upstream.consumed(sent)
            elif self.http1 is not None and sum(map(len, out)) < _HTTP1_READ_BOUND:
                self.http1.resume_reading()
        if ended:
            self._finish()
        session.write_soon()

    # --- endings -------------------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        settings = self.ctx.settings
        if self.finished:
            return
        if now >= self.first_byte_deadline:
            self._timed_out("first byte", settings.first_byte_timeout_s)
        elif now >= self.deadline:
            self._timed_out("exchange", settings.total_timeout_s)
        elif (
            not self.body_done
            and (self.upstream is None or not self.upstream.outbox_bytes)
            and now - self.last_read >= settings.client_body_timeout_s
        ):
            # The client stopped sending its body (and nothing of ours held it back).
            timeouts = self.ctx.stats.client_timeouts
            timeouts["body"] = timeouts.get("body", 0) + 1
            _count(self.ctx, "stream body timeout", f"stalled for {settings.client_body_timeout_s:g} s")
            self.session.reset_client(self.stream_id, _CANCEL)
            self._abandon("request body stalled")
        elif (
            self.head_sent
            and not self._out
            and not self.session.write_paused
            and now - self.resp_read_at >= settings.primary_read_timeout_s
        ):
            self._timed_out("read", settings.primary_read_timeout_s)

    def _timed_out(self, what: str, limit_s: float) -> None:
        self._drop_upstream()
        self._fail(FailureKind.TIMEOUT, f"primary {what} timed out after {limit_s:g} s")

    def _count_failure(self, kind: str) -> None:
        failures = self.ctx.stats.primary_failures
        failures[kind] = failures.get(kind, 0) + 1

    def _count_and_reset(self, cause: str, detail: str) -> None:
        _count(self.ctx, cause, detail)
        if self._failure is None:
            self._failure = Failure(FailureKind.BAD_RESPONSE, f"{cause}: {detail}")
        self._drop_upstream()
        self.session.reset_client(self.stream_id, _INTERNAL_ERROR)
        self._finish()

    def _fail(self, kind: str, message: str) -> None:
        if self.finished:
            return
        if self._failure is None:
            self._failure = Failure(kind, message)
        self._drop_upstream()
        self._count_failure(kind)
        session = self.session
        if self.head_sent:
            session.reset_client(self.stream_id, _INTERNAL_ERROR)
            self._finish()
            return
        timeout = kind == FailureKind.TIMEOUT
        try:
            if self.grpc:
                # Trailers-only (gRPC over HTTP/2): the status is in the one HEADERS frame.
                grpc_status = _GRPC_DEADLINE_EXCEEDED if timeout else _GRPC_UNAVAILABLE
                session.h2.send_headers(
                    self.stream_id,
                    [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", grpc_status),
                     (b"grpc-message", _grpc_message(f"shadowtap: {message}")), (b"x-shadowtap-error", b"1")],
                    end_stream=True,
                )  # fmt: skip
                self.status = 200
            else:
                status = 504 if timeout else 502
                session._local_response(self.stream_id, status, f"shadowtap: {message}")
                self.status = status
        except ProtocolError:
            pass
        if not self.body_done:
            # The request is answered: the client need not send the rest (RFC 9113 8.1).
            with contextlib.suppress(ProtocolError):
                session.h2.reset_stream(self.stream_id, error_code=0)
        self._finish(failed=True)
        session.write_soon()

    def _abandon(self, why: str) -> None:
        if self.finished:
            return
        if self._failure is None:
            self._failure = Failure(FailureKind.ABORTED, why)
        self._drop_upstream()
        self._finish(failed=True)

    def _drop_upstream(self) -> None:
        task = self._task
        if task is not None:
            self._task = None
            task.cancel()
        upstream = self.upstream
        self.upstream = None
        if upstream is not None:
            upstream.reset()
        conn = self.http1
        self.http1 = None
        if conn is not None:
            conn.detach()

    def _finish(self, failed: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        self._out.clear()
        ctx = self.ctx
        ctx.stats.in_flight -= 1
        if self.owed:
            # Held here (or in the primary's outbox) and never to be sent: the client's windows get them back.
            self.session.ack_request_bytes(self, self.owed)
        self.session.stream_done(self)
        done_ns = time.monotonic_ns() - self.started_ns
        for observer in ctx.observers:
            try:
                observer.observe_primary(self.status, failed, done_ns)
            except Exception:
                errors = ctx.stats.stage_errors.by_stage
                errors[observer.name] = errors.get(observer.name, 0) + 1
                log.exception("proxy observer %s failed on a primary exchange", observer.name)
        if self.ex is not None:
            self._complete()

    # --- HTTP/1 primary (translation) ----------------------------------------------------------------------

    async def _connect_http1(self) -> None:
        """Dial the HTTP/1 primary for this stream (no idle connection was at hand)."""
        ctx = self.ctx
        pool = ctx.pool
        try:
            conn = await pool.connect()
        except TimeoutError:
            self._task = None
            self._fail(FailureKind.TIMEOUT, f"primary connect timed out after {ctx.settings.connect_timeout_s:g} s")
            return
        except OSError as exc:
            self._task = None
            self._fail(FailureKind.CONNECT_ERROR, f"cannot connect to primary: {exc.strerror or exc}")
            return
        self._task = None
        if self.finished:
            pool.release(conn)
        elif conn.closed:
            self._fail(FailureKind.RESET, "primary closed the connection before the request was sent")
        else:
            self._send_http1(conn)
            self.session.write_soon()

    def retry_http1(self) -> bool:
        """A pooled HTTP/1 connection the primary had closed while idle failed this stream before any
        answer: send the request once more on a fresh connection when it is whole here (as the HTTP/1
        path does for idempotent requests; a request that never reached the primary is safe to send)."""
        if self._retried or self.head_sent or not self.body_done or self._copy is None:
            return False
        self._retried = True
        self._pending = list(self._copy)
        self._task = self.ctx.loop.create_task(self._connect_http1())
        return True

    def _send_http1(self, conn: Http1Connection) -> None:
        """Translate the stream into an HTTP/1.1 exchange on ``conn`` (from the primary's HTTP/1 pool)."""
        ctx = self.ctx
        self.http1 = conn
        if self.ex is not None and self._sent_ns is None:
            self._sent_ns = time.monotonic_ns()
        sink = _Http1Sink(self, conn)
        conn.begin(sink, self.method == b"HEAD")
        target = self.session.target
        headers = [(n, v) for n, v in self._upstream_headers(None)[4:] if n != b"te"]
        authority = self.authority if ctx.settings.preserve_host and self.authority else target.authority
        pending = self._pending
        self._pending = []
        length = None
        for name, value in headers:
            if name == b"content-length":
                length = value
        extra: list[Header] = [(b"host", authority)]
        framed = length is None and not (self.body_done and not pending)
        if framed:
            extra.append((b"transfer-encoding", b"chunked"))
        elif length is None and self.method in (b"POST", b"PUT", b"PATCH"):
            extra.append((b"content-length", b"0"))
        parts = [http1.request_head(self.method, target.path_prefix + self.path, http1.end_to_end(headers), extra)]
        sent = 0
        for piece in pending:
            sent += len(piece)
            parts += http1.chunk(piece) if framed else [piece]
        if self.body_done and framed:
            parts.append(http1.CHUNKED_END)
        self._chunked = framed
        conn.writelines(parts)
        if sent and not self._retried:
            self.session.ack_request_bytes(self, sent)


class _Http1Sink:
    """The HTTP/1 ``ResponseSink`` of a stream translated for an HTTP/1 primary."""

    __slots__ = ("_conn", "_forward")

    def __init__(self, forward: _H2Forward, conn: Http1Connection) -> None:
        self._forward = forward
        self._conn = conn

    def on_interim(self, status: int, reason: bytes, headers: list[Header]) -> None:
        return None  # 1xx are not relayed to HTTP/2 clients

    def on_head(self, status: int, reason: bytes, headers: list[Header]) -> None:
        fields = [(name.lower(), value) for name, value in http1.end_to_end(headers)]
        self._forward.on_head(status, fields, False)

    def on_body(self, data: bytes) -> None:
        forward = self._forward
        if data:
            forward.on_data(data)
            if forward.http1 is not None and sum(map(len, forward._out)) >= _HTTP1_READ_BOUND:
                # The client's window is shut: stop reading the primary until it opens.
                self._conn.pause_reading()

    def on_complete(self, reusable: bool) -> None:
        forward = self._forward
        conn = self._conn
        if forward.http1 is conn:
            forward.http1 = None
            if reusable and forward.body_done:
                forward.ctx.pool.release(conn)
            else:
                conn.close()
        forward.on_end()

    def on_upgraded(self, rest: bytes) -> None:
        self.on_failure(FailureKind.BAD_RESPONSE, "primary switched protocols on an HTTP/2 stream")

    def on_failure(self, kind: str, message: str) -> None:
        forward = self._forward
        conn = self._conn
        if forward.http1 is conn:
            forward.http1 = None
            conn.abort()
        if kind == FailureKind.RESET and conn.stale and forward.retry_http1():
            return
        forward._fail(kind, message)

    def flush(self) -> None:
        return None

    def upstream_write_paused(self, paused: bool) -> None:
        forward = self._forward
        if paused:
            forward._unacked = max(forward._unacked, 0)
            return
        unacked = forward._unacked
        forward._unacked = -1
        if unacked > 0:
            forward.session.ack_request_bytes(forward, unacked)


def _split(
    splitter: MessageSplitter, messages: list[StreamMessage], data: bytes, base_ns: int
) -> MessageSplitter | None:
    """Feed a gRPC body piece to ``splitter``: each message it completes joins ``messages`` as
    (compressed flag, length, when, relative to ``base_ns``); None after a framing error (the list
    stops there, the body stays whole)."""
    try:
        done = splitter.feed(data)
    except GrpcFramingError:
        return None
    if done:
        at_ns = time.monotonic_ns() - base_ns
        for message in done:
            messages.append(StreamMessage(int(message.compressed), len(message.data), at_ns))
    return splitter


def _grpc_message(text: str) -> bytes:
    """Percent-encode a grpc-message value (the gRPC HTTP/2 protocol's rule for non-printable bytes)."""
    out = bytearray()
    for byte in text.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)
