"""The HTTP/2 client: an asyncio Protocol around the sans-IO connection of ``shadowtap.wire.h2conn``
(client role), and a small pool of connections that multiplex many streams. The proxy (primary and
shadows) and the replayer use it.

The interface is the HTTP/1 client's shape (``shadowtap.wire.client``), stream by stream: open a
request (``H2Pool.open`` sends its head), send body pieces and the end (``H2Stream.send_data``,
``H2Stream.end``, with trailers), and receive the response through a ``StreamSink``: head, data,
trailers, end, or a reset. Flow control is honoured both ways: request bytes leave only as the
peer's windows allow (the rest waits in the stream's outbox, and ``on_request_drained`` tells the
caller how many left, so it can let its own producer send more; a response that ends before the
request did ends the request too, with RST_STREAM(NO_ERROR)); response bytes are acknowledged to
the peer only when the sink says it passed them on (``H2Stream.consumed``), so a slow reader behind
the sink holds the peer back rather than growing a buffer here.

The pool keeps up to ``max_connections`` connections and opens a stream on the first that has room
(the peer's MAX_CONCURRENT_STREAMS and our own cap); when all are full it dials another, and beyond
``max_connections`` callers wait for a stream to end. A GOAWAY stops new streams on its connection;
streams above its last-stream-id were never processed and fail with ``refused=True`` (the caller may
send them again); the others run to their end. h2c is spoken by prior knowledge; over TLS the pool
asks for ``h2`` by ALPN and refuses a peer that does not agree.

A malformed response is an error of its stream only (RFC 9113 8.1.1): fields HTTP/2 forbids, a bad
:status, a content-length that is no number or disagrees with the DATA (checked here: the connection
leaves content-length to its users) reset that stream with PROTOCOL_ERROR and its sink hears a bad
response; not one byte past an announced length reaches the sink, and a body after HEAD, 204 or 304
is dropped. A connection that fails is shut before its sinks hear of it, so a stream one of them
opens from ``on_reset`` goes elsewhere.

This module has no policy (no metrics, breakers or retries) and never decides what a client sees.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import ssl
from typing import Final, Protocol, cast

import h2.errors

from shadowtap.wire.h2conn import (
    ConnectionTerminated,
    DataReceived,
    Event,
    H2Connection,
    InformationalResponseReceived,
    ProtocolError,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamClosedError,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)

__all__ = [
    "BAD_RESPONSE",
    "CONNECT_ERROR",
    "HEADERS_TOO_LARGE",
    "RESET",
    "H2ClientConnection",
    "H2Pool",
    "H2Stream",
    "Header",
    "StreamSink",
    "error_name",
]

log = logging.getLogger(__name__)

Header = tuple[bytes, bytes]

# Failure kinds, as strings: the same values as ``shadowtap.wire.client`` (and the recorder's).
CONNECT_ERROR: Final = "connect-error"
RESET: Final = "reset"
BAD_RESPONSE: Final = "bad-response"
#: The request's header list is larger than the peer's SETTINGS_MAX_HEADER_LIST_SIZE: the stream was
#: never opened (the peer would have ended the whole connection); the request is not sent again.
HEADERS_TOO_LARGE: Final = "headers-too-large"

#: Our receive window per stream and for the connection: what the peer may send before we
#: acknowledge (the sink's consumer sets the pace). 1 MiB per stream keeps a fast link busy.
STREAM_WINDOW_BYTES: Final = 1024 * 1024
CONNECTION_WINDOW_BYTES: Final = 16 * 1024 * 1024
#: Largest response head (all header fields) accepted from the peer.
MAX_HEADER_LIST_BYTES: Final = 64 * 1024

_PROTOCOL_ERROR: Final = 0x1
_REFUSED_STREAM: Final = 0x7
#: Fields about one HTTP/1 connection, malformed in HTTP/2 (RFC 9113 8.2.2).
_CONNECTION_SPECIFIC: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_CANCEL: Final = 0x8
#: ``H2Stream.length`` of a response that has no content whatever it says (HEAD, 204, 304).
_NO_CONTENT: Final = -2


_CONTROL: Final = re.compile(b"[\r\n\x00]")
#: ``translate`` tables that change what a valid name or value never holds: upper-case letters
#: (names), CR, LF and NUL (values). Compiled, ``bytes.translate`` is a loop in C, no call by name.
_NAME_CHANGES: Final = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
_VALUE_CHANGES: Final = bytes.maketrans(b"\r\n\x00", b"   ")


def _malformed(fields: list[Header]) -> str:
    """Why response fields are malformed for HTTP/2 (RFC 9113 8.2: lowercase names, nothing
    connection-specific, no CR, LF or NUL in values), or "" when they are fine (the connection
    validates no fields)."""
    # All names and all values at once, then field by field only to say which one is wrong.
    names: list[bytes] = []
    values: list[bytes] = []
    suspect = False
    for name, value in fields:
        if name in _CONNECTION_SPECIFIC:
            suspect = True
        names.append(name)
        values.append(value)
    joined = b"".join(names)
    if not suspect and joined.translate(_NAME_CHANGES) == joined:
        joined = b"".join(values)
        if joined.translate(_VALUE_CHANGES) == joined:
            return ""
    for name, value in fields:
        if name != name.lower() or name in _CONNECTION_SPECIFIC:
            return f"field {name!r}"
        if _CONTROL.search(value) is not None:
            return f"a control character in {name!r}"
    return ""


def error_name(code: int) -> str:
    """An HTTP/2 error code as its RFC 9113 name (``REFUSED_STREAM``), or its number."""
    try:
        return str(h2.errors.ErrorCodes(code).name)
    except ValueError:
        return f"0x{code:x}"


class StreamSink(Protocol):
    """Receives one response as it arrives. Every call runs on the event loop."""

    def on_head(self, status: int, headers: list[Header], ended: bool) -> None:
        """The final response head; ``headers`` without pseudo-header fields. ``ended``: the head
        ends the stream (a trailers-only answer, as gRPC errors are); ``on_end`` follows."""

    def on_data(self, data: bytes) -> None:
        """Body bytes; the sink calls ``H2Stream.consumed(len(data))`` once it passed them on."""

    def on_trailers(self, headers: list[Header]) -> None: ...

    def on_end(self) -> None:
        """The response ended cleanly (after its head, data and trailers)."""

    def on_reset(self, kind: str, message: str, refused: bool) -> None:
        """The stream failed: reset by the peer, its connection lost, or a GOAWAY. ``refused`` when
        the peer certainly did not process the request (REFUSED_STREAM, or above a GOAWAY's
        last-stream-id): it may be sent again."""

    def on_request_drained(self, sent: int) -> None:
        """``sent`` bytes of request body left the outbox (the peer's window allowed them)."""


class H2Stream:
    """One request/response on an ``H2ClientConnection``."""

    __slots__ = ("_conn", "_end_pending", "_outbox", "_trailers", "closed", "ended_local", "head_request",
                 "length", "outbox_bytes", "received", "sink", "stream_id")  # fmt: skip

    def __init__(self, conn: H2ClientConnection, stream_id: int, sink: StreamSink) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.sink = sink
        #: The request is a HEAD: its response has no content whatever its content-length says.
        self.head_request = False
        #: The response's content-length, -1 without one, ``_NO_CONTENT`` when it has none (HEAD, 204, 304).
        self.length = -1
        #: Response body bytes received so far (counted only against a ``length``).
        self.received = 0
        self._outbox: collections.deque[bytes] = collections.deque()
        #: Request body bytes waiting for the peer's window (bounded by the caller, which stops
        #: its producer until ``on_request_drained``).
        self.outbox_bytes = 0
        self._end_pending = False
        self._trailers: list[Header] | None = None
        self.ended_local = False
        self.closed = False

    def send_data(self, data: bytes) -> None:
        """Queue request body bytes; they leave as the windows allow."""
        if self.closed or self.ended_local or self._end_pending or not data:
            return
        self._outbox.append(data)
        self.outbox_bytes += len(data)
        self._conn.flush_stream(self)

    def end(self, trailers: list[Header] | None = None) -> None:
        """End the request (with trailers, if any) once the queued body has left."""
        if self.closed or self.ended_local or self._end_pending:
            return
        self._end_pending = True
        self._trailers = trailers
        self._conn.flush_stream(self)

    def consumed(self, size: int) -> None:
        """``size`` response bytes were passed on: the peer may send that much more."""
        if size:
            self._conn.acknowledge(self.stream_id, size)

    def reset(self, code: int = _CANCEL) -> None:
        """Abandon the stream (the caller gave up): RST_STREAM to the peer; the sink hears nothing more."""
        if self.closed:
            return
        self.closed = True
        self._conn.reset_stream(self, code)

    def _drain(self, h2conn: H2Connection) -> int:
        """Send what the windows allow; returns the body bytes sent."""
        sent = 0
        outbox = self._outbox
        stream_id = self.stream_id
        if outbox:
            max_frame = h2conn.max_outbound_frame_size
            while outbox:
                window = h2conn.local_flow_control_window(stream_id)
                if window <= 0:
                    break
                chunk = outbox[0]
                size = min(len(chunk), window, max_frame)
                if size == len(chunk):
                    outbox.popleft()
                    h2conn.send_data(stream_id, chunk)
                else:
                    outbox[0] = chunk[size:]
                    h2conn.send_data(stream_id, chunk[:size])
                sent += size
            self.outbox_bytes -= sent
        if not outbox and self._end_pending:
            self._end_pending = False
            self.ended_local = True
            trailers = self._trailers
            if trailers:
                h2conn.send_headers(stream_id, trailers, end_stream=True)
            else:
                h2conn.end_stream(stream_id)
        return sent


class H2ClientConnection(asyncio.Protocol):
    """One HTTP/2 connection to a server; carries many streams at once."""

    def __init__(self, pool: H2Pool) -> None:
        self._pool = pool
        # Outbound fields are the caller's (the proxy passes on fields validated on their way in), and
        # the server's answers are checked here (``_malformed``), content-length included.
        self._h2 = H2Connection(
            True, initial_window_size=STREAM_WINDOW_BYTES, max_header_list_size=MAX_HEADER_LIST_BYTES
        )
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self.closed = False
        #: The peer sent GOAWAY: no new stream goes here.
        self.going_away = False
        self._write_paused = False
        #: Streams whose request body waits for window or for the transport to drain.
        self._blocked: set[H2Stream] = set()
        #: Whether the peer's first SETTINGS arrived (its MAX_CONCURRENT_STREAMS is known).
        self.settled = False
        self._loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self._loop.create_future()
        #: A write is scheduled for the end of this loop turn (frames of many streams, one send).
        self._write_scheduled = False
        #: The peer's SETTINGS_MAX_HEADER_LIST_SIZE, -1 while it set none (no limit).
        self.max_header_list = -1

    # --- used by the pool and streams --------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """How many more streams may be opened now."""
        if self.closed or self.going_away:
            return 0
        h2conn = self._h2
        limit = min(self._pool.max_streams_per_connection, h2conn.remote_max_concurrent_streams)
        return limit - len(self.streams)

    def open_stream(self, headers: list[Header], sink: StreamSink, end_stream: bool) -> H2Stream:
        """Send a request head on a new stream (the caller checked ``capacity``). A head larger than
        the peer's SETTINGS_MAX_HEADER_LIST_SIZE is not sent: the stream returned is closed and its
        sink hears ``HEADERS_TOO_LARGE`` (soon, not from inside this call)."""
        limit = self.max_header_list
        if limit >= 0:
            size = 32 * len(headers)  # RFC 9113 6.5.2: each field's name and value, and 32
            for name, value in headers:
                size += len(name) + len(value)
            if size > limit:
                return self._refuse(sink, f"a request head of {size} bytes is over {self._pool.peer}'s "
                                          f"SETTINGS_MAX_HEADER_LIST_SIZE of {limit}")  # fmt: skip
        h2conn = self._h2
        stream_id = h2conn.get_next_available_stream_id()
        stream = H2Stream(self, stream_id, sink)
        self.streams[stream_id] = stream
        h2conn.send_headers(stream_id, headers, end_stream=end_stream)
        stream.ended_local = end_stream
        for name, value in headers:
            if name == b":method":
                stream.head_request = value == b"HEAD"
                break
        self._write_soon()
        return stream

    def _refuse(self, sink: StreamSink, message: str) -> H2Stream:
        stream = H2Stream(self, 0, sink)
        stream.closed = True
        stream.ended_local = True
        self._loop.call_soon(sink.on_reset, HEADERS_TOO_LARGE, message, False)
        return stream

    def flush_stream(self, stream: H2Stream) -> None:
        if self.closed:
            return
        if self._write_paused:
            self._blocked.add(stream)
            return
        try:
            sent = stream._drain(self._h2)
        except StreamClosedError:
            return
        self._write_soon()
        if stream._outbox or stream._end_pending:
            self._blocked.add(stream)
        else:
            self._blocked.discard(stream)
        if sent:
            stream.sink.on_request_drained(sent)

    def acknowledge(self, stream_id: int, size: int) -> None:
        if self.closed:
            return
        # A stream that has ended still credits the connection's window.
        self._h2.acknowledge_received_data(size, stream_id)
        self._write_soon()

    def reset_stream(self, stream: H2Stream, code: int) -> None:
        self.streams.pop(stream.stream_id, None)
        self._blocked.discard(stream)
        if not self.closed:
            with contextlib.suppress(ProtocolError):
                self._h2.reset_stream(stream.stream_id, error_code=code)
            self._write()
        self._pool.stream_closed(self)

    def close(self) -> None:
        """Say GOAWAY and close once the transport has written it."""
        if self.closed:
            return
        self.closed = True
        try:
            self._h2.close_connection()
            self._write()
        except ProtocolError:
            pass
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # --- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        h2conn = self._h2
        h2conn.initiate_connection()
        h2conn.increment_flow_control_window(CONNECTION_WINDOW_BYTES - 65535)
        self._write()
        self._pool.track(self)

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except ProtocolError as exc:
            # Shut before the sinks hear: one that opens its next stream from ``on_reset`` (a
            # pipelined request) must be given another connection, not this one.
            self.closed = True
            self._write()  # the connection's GOAWAY
            self._pool.untrack(self)
            self._fail_all(BAD_RESPONSE, f"{self._pool.peer} broke the HTTP/2 protocol: {exc}", refused=False)
            self.abort()
            return
        # What handling queues (acknowledgements, a stream a sink opens) leaves in the write below,
        # not in one scheduled for later: that would be another turn of the loop for each read.
        self._write_scheduled = True
        try:
            for event in events:
                self._handle(event)
        finally:
            self._write()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionResetError(f"{self._pool.peer} closed the connection"))
            self.ready.exception()  # retrieved: whoever awaits it hears, nobody else is told
        detail = f": {exc}" if exc is not None else ""
        self._pool.untrack(self)
        self._fail_all(RESET, f"{self._pool.peer} closed the HTTP/2 connection{detail}", refused=False)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._flush_blocked()

    # --- internals ---------------------------------------------------------------------------------

    def _write(self) -> None:
        self._write_scheduled = False
        data = self._h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _write_soon(self) -> None:
        if not self._write_scheduled:
            self._write_scheduled = True
            self._loop.call_soon(self._write)

    def _flush_blocked(self) -> None:
        if not self._blocked:
            return
        for stream in list(self._blocked):
            if self._write_paused:
                return
            self.flush_stream(stream)

    def _handle(self, event: Event) -> None:
        # isinstance, not type(): compiled, the event's attributes are then read off its struct.
        if isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            length = stream.length
            if length == _NO_CONTENT:
                # A body after HEAD, 204 or 304 is no part of the answer (RFC 9110 6.4.1): dropped.
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            if length >= 0:
                stream.received += len(event.data)
                if stream.received > length:
                    # Not one byte past the announced length reaches the sink (an HTTP/1 client
                    # reading by that length would take the rest for the next response).
                    self._malformed_response(stream, f"more DATA than its content-length of {length}")
                    self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    return
            padding = event.flow_controlled_length - len(event.data)
            if padding:
                self._h2.acknowledge_received_data(padding, event.stream_id)
            if event.data:
                stream.sink.on_data(event.data)
            return
        if isinstance(event, ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                return
            status = 0
            headers: list[Header] = []
            declared = b""
            for field in event.headers:
                # Indexed, not unpacked: a field is a tuple, or hpack's never-indexed tuple.
                name: bytes = field[0]
                value: bytes = field[1]
                if name and name[0] == 0x3A:  # b":"
                    if name == b":status" and value.isdigit():
                        status = int(value)
                else:
                    if len(name) == 14 and name == b"content-length":
                        if not value.isdigit() or (declared and value != declared):
                            self._malformed_response(stream, f"content-length {value!r}")
                            return
                        declared = value
                    headers.append((name, value))
            problem = _malformed(headers)
            if not 200 <= status < 600 or problem:
                self._malformed_response(stream, problem or f"status {status!r}")
                return
            ended = bool(event.stream_ended)
            if stream.head_request or status == 204 or status == 304:
                stream.length = _NO_CONTENT  # whatever its content-length says
            elif declared:
                stream.length = int(declared)
                if ended and stream.length:
                    self._malformed_response(stream, f"no DATA for its content-length of {stream.length}")
                    return
            stream.sink.on_head(status, headers, ended)
            return
        if isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                if stream.length >= 0 and stream.received != stream.length:
                    self._malformed_response(
                        stream, f"{stream.received} bytes of DATA for its content-length of {stream.length}"
                    )
                    return
                del self.streams[event.stream_id]
                stream.closed = True
                self._blocked.discard(stream)
                if not stream.ended_local:
                    self._end_early(stream)
                stream.sink.on_end()
                self._pool.stream_closed(self)
            return
        if isinstance(event, TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                trailers = [(n, v) for n, v in event.headers if n[:1] != b":"]  # (rare: gRPC)
                problem = _malformed(trailers)
                if problem:
                    self._malformed_response(stream, problem)
                    return
                stream.sink.on_trailers(trailers)
            return
        if isinstance(event, (WindowUpdated, RemoteSettingsChanged)):
            if isinstance(event, RemoteSettingsChanged):
                self.max_header_list = self._h2.remote_max_header_list_size
            if isinstance(event, RemoteSettingsChanged) and not self.settled:
                self.settled = True
                if not self.ready.done():
                    self.ready.set_result(None)
                self._pool.stream_closed(self)  # room may have appeared: wake waiters
            self._flush_blocked()
            return
        if isinstance(event, StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream.closed = True
                self._blocked.discard(stream)
                code = int(event.error_code)
                if event.remote_reset:
                    message = f"{self._pool.peer} reset the stream ({error_name(code)})"
                    stream.sink.on_reset(RESET, message, code == _REFUSED_STREAM)
                else:
                    # A frame the stream's state forbids (RFC 9113 5.1): we reset it.
                    message = f"{self._pool.peer} broke HTTP/2 on the stream ({error_name(code)})"
                    stream.sink.on_reset(BAD_RESPONSE, message, False)
                self._pool.stream_closed(self)
            return
        if isinstance(event, ConnectionTerminated):
            self.going_away = True
            last = int(event.last_stream_id)
            code = int(event.error_code)
            for stream_id in [sid for sid in self.streams if sid > last]:
                stream = self.streams.pop(stream_id)
                stream.closed = True
                self._blocked.discard(stream)
                stream.sink.on_reset(
                    RESET, f"{self._pool.peer} sent GOAWAY ({error_name(code)}) before this stream", True
                )
            self._pool.going_away(self)
            if not self.streams:
                self.close()
            return
        if isinstance(event, InformationalResponseReceived):
            return  # 1xx: nothing a proxied HTTP/2 client needs (103 hints are not relayed)
        # SettingsAcknowledged, PingReceived (answered already), PingAckReceived: nothing to do.

    def _end_early(self, stream: H2Stream) -> None:
        """The peer's response is complete before the whole request was sent (an early gRPC error, a
        413): the rest is not sent and our half of the stream ends with RST_STREAM(NO_ERROR), as RFC
        9113 8.1 allows, rather than staying open and counting against the peer's stream limit."""
        stream._outbox.clear()
        stream.outbox_bytes = 0
        stream._end_pending = False
        stream.ended_local = True
        with contextlib.suppress(ProtocolError):
            self._h2.reset_stream(stream.stream_id, error_code=0)

    def _malformed_response(self, stream: H2Stream, problem: str) -> None:
        """RFC 9113 8.1.1: a malformed response is a stream error; the sink hears a bad response."""
        self.streams.pop(stream.stream_id, None)
        self._blocked.discard(stream)
        stream.closed = True
        with contextlib.suppress(ProtocolError):
            self._h2.reset_stream(stream.stream_id, error_code=_PROTOCOL_ERROR)
        stream.sink.on_reset(BAD_RESPONSE, f"{self._pool.peer} sent a malformed response ({problem})", False)
        self._pool.stream_closed(self)

    def _fail_all(self, kind: str, message: str, refused: bool) -> None:
        # The caller marked the connection closed first: no sink is handed it again.
        streams = list(self.streams.values())
        self.streams.clear()
        self._blocked.clear()
        for stream in streams:
            stream.closed = True
            stream.sink.on_reset(kind, message, refused)


class H2Pool:
    """A few HTTP/2 connections to one server, multiplexing many streams."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout_s: float,
        max_connections: int = 4,
        max_streams_per_connection: int = 100,
        peer: str = "server",
        server_hostname: str | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self.address = f"{host}:{port}"
        self.peer = peer
        if ssl_context is not None:
            # The context is the pool's own: it offers h2 only (an HTTP/1 answer would not parse).
            ssl_context.set_alpn_protocols(["h2"])
        self._ssl = ssl_context
        self._server_hostname = (server_hostname or host) if ssl_context is not None else None
        self._connect_timeout_s = connect_timeout_s
        self.max_connections = max_connections
        self.max_streams_per_connection = max_streams_per_connection
        self._conns: list[H2ClientConnection] = []
        self._dialing = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        self.connects = 0
        self.connect_errors = 0

    @property
    def connections(self) -> int:
        return len(self._conns)

    def has_room(self) -> bool:
        """Whether ``try_open`` would open a stream now (a caller that has work to do for one can
        first ask)."""
        return any(conn.settled and conn.capacity > 0 for conn in self._conns)

    def try_open(self, headers: list[Header], sink: StreamSink, end_stream: bool) -> H2Stream | None:
        """Open a stream on a connection with room now, or None (``open`` dials or waits)."""
        for conn in self._conns:
            if conn.settled and conn.capacity > 0:
                return conn.open_stream(headers, sink, end_stream)
        return None

    async def open(self, headers: list[Header], sink: StreamSink, end_stream: bool) -> H2Stream:
        """Open a stream: on a connection with room, a new connection, or after waiting for room.
        Raises ``TimeoutError`` or ``OSError`` (TLS failures and a refused ALPN included) when the
        server cannot be reached."""
        while True:
            stream = self.try_open(headers, sink, end_stream)
            if stream is not None:
                return stream
            if self._closed:
                raise ConnectionRefusedError("the pool is closed (shutting down)")
            pending = [c for c in self._conns if not c.settled and not c.closed]
            if pending:
                await self._settle(pending[0])
                continue
            if len(self._conns) + self._dialing < self.max_connections:
                await self._dial()
                continue
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()

    async def _settle(self, conn: H2ClientConnection) -> None:
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await asyncio.shield(conn.ready)
        except TimeoutError:
            conn.abort()
            raise

    async def _dial(self) -> None:
        self._dialing += 1
        loop = asyncio.get_running_loop()
        conn: H2ClientConnection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: H2ClientConnection(self),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname,
                )
                if self._ssl is not None and conn.transport is not None:
                    ssl_object = conn.transport.get_extra_info("ssl_object")
                    chosen = None if ssl_object is None else ssl_object.selected_alpn_protocol()
                    if chosen != "h2":
                        conn.abort()
                        raise ConnectionRefusedError(f"{self.peer} did not agree to HTTP/2 by ALPN (got {chosen!r})")
                await asyncio.shield(conn.ready)
        except (OSError, TimeoutError):
            self.connect_errors += 1
            if conn is not None:
                conn.abort()  # connected, but no SETTINGS in time: not a connection to keep
            raise
        finally:
            self._dialing -= 1
        self.connects += 1

    def track(self, conn: H2ClientConnection) -> None:
        self._conns.append(conn)

    def untrack(self, conn: H2ClientConnection) -> None:
        if conn in self._conns:
            self._conns.remove(conn)
        self._wake()

    def going_away(self, conn: H2ClientConnection) -> None:
        # It takes no new stream: the next open dials a replacement, so it no longer counts.
        if conn in self._conns:
            self._conns.remove(conn)
        self._wake()

    def stream_closed(self, conn: H2ClientConnection) -> None:
        if conn.going_away and not conn.streams:
            conn.close()
        self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Refuse new streams; connections close (GOAWAY) as their streams end."""
        self._closed = True
        for conn in list(self._conns):
            conn.going_away = True
            if not conn.streams:
                conn.close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def abort_all(self) -> None:
        self._closed = True
        for conn in list(self._conns):
            conn.abort()
