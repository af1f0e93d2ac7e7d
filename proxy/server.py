"""The proxy's data path: client connections in, primary connections out, stages told at each step.

``ProxyServer`` listens (plain or TLS, optionally with SO_REUSEPORT), parses requests with llhttp
(httptools) in an ``asyncio.Protocol`` per client connection, and relays each request to the primary
through the keep-alive pool, streaming bodies both ways with back-pressure. Pipelined requests are
answered in order, one at a time. Each request fills one ``ProxiedExchange`` and every stage is called
through ``call_stage`` when the request body is known and (if it watches completion) when the
exchange is over; observers are told each primary outcome without a record being built.

The primary path is sacred: this module must never wait on a stage, never buffer a body beyond the
capture limit and the configured bounds, never decode a body, and never leave a client hanging (a
failing primary gives 502/504 before the response head, a closed connection after it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Final, cast

import httptools

from shadowtap.proxy import h2server
from shadowtap.proxy.context import Context, ServerStats
from shadowtap.proxy.forward import ForwardSettings, upstream_ssl_context
from shadowtap.proxy.stages import PrimaryObserver, ProxiedExchange, Stage, call_stage
from shadowtap.proxy.upgrade import CLIENT, Tunnel
from shadowtap.recorder.model import Failure, FailureKind, Header, new_response, new_timing
from shadowtap.wire import http1
from shadowtap.wire.client import Dialer, Http1Connection, Pool
from shadowtap.wire.http1 import (
    add_fields,
    add_value,
    chunk,
    end_head,
    end_to_end,
    field_line,
    field_prefix,
    response_fields,
    response_head,
    status_line,
)

__all__ = ["ProxyServer", "ServerStats"]

log = logging.getLogger(__name__)

# Why the client's reading is paused; reading resumes only when no reason is left.
#: Response fields the proxy sets, serialised once by the wire layer.
_TRANSFER_ENCODING: Final = field_prefix(b"Transfer-Encoding")
_CONNECTION_CLOSE: Final = field_line(b"Connection", b"close")
_CONNECTION_KEEP_ALIVE: Final = field_line(b"Connection", b"keep-alive")
_VIA: Final = field_prefix(b"Via")

_PAUSE_PIPELINE: Final = 1  # too many pipelined requests waiting for their turn
_PAUSE_BUFFER: Final = 2  # request body buffered while no primary connection is attached
_PAUSE_UPSTREAM: Final = 4  # the primary's socket buffer is full (slow upload consumer)
_PAUSE_DRAIN: Final = 8  # shutting down: no new requests

# How a response body is written to the client.
_BODY_NONE: Final = 0  # HEAD, 204, 304, 101
_BODY_RAW: Final = 1  # Content-Length, or delimited by closing the client connection
_BODY_CHUNKED: Final = 2  # re-framed as chunked

#: Deadlines (timeouts, keep-alive idle) are checked by one sweep per server at this period,
#: instead of a timer per request: timeouts are seconds long, so 50 ms of slack is fine.
_SWEEP_PERIOD_S: Final = 0.05

#: What an HTTP/2 primary is sent for an HTTP/1.1 request: a Host that is an authority and nothing
#: else (no userinfo, path or whitespace: RFC 9113 8.3.1, RFC 9110 7.2), and a header list within
#: the size h2-based servers accept by default (python-h2, hypercorn, this proxy's own HTTP/2
#: client), counted as HTTP/2 counts it (name + value + 32 per field): beyond a server's limit the
#: head is a connection error that ends every other client's stream on that connection.
_AUTHORITY_CHARS: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:[]%"
_H2_MAX_HEADER_LIST_BYTES: Final = 64 * 1024
#: What an HTTP/2 primary's answer may hold to be written as HTTP/1.1 (RFC 9110 5.1, 5.5): names are
#: tokens, values visible characters, SP, HTAB and obs-text; HPACK carries any byte, and a name with a
#: CR LF, a colon or a space would write fields (or a response) the primary never sent.
_TOKEN_CHARS: Final = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VALUE_CHARS: Final = bytes(range(0x20, 0x7F)) + b"\t" + bytes(range(0x80, 0x100))
#: Fields a sender must not put in trailers (RFC 9110 6.5.1: framing, routing, request modifiers,
#: authentication, response control, content processing): a client that merges trailers into the
#: head would act on them, so they are not written to the client's trailer section (the tape keeps them).
_TRAILER_FORBIDDEN: Final = frozenset(
    (b"content-length", b"transfer-encoding", b"host", b"trailer", b"te", b"connection", b"keep-alive",
     b"upgrade", b"proxy-connection", b"content-encoding", b"content-type", b"content-range", b"cache-control",
     b"expires", b"date", b"location", b"retry-after", b"vary", b"age", b"authorization", b"www-authenticate",
     b"proxy-authenticate", b"proxy-authorization", b"set-cookie", b"cookie", b"max-forwards", b"expect",
     b"range", b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"if-range")
)  # fmt: skip


#: SO_LINGER on with a zero timeout: closing the socket sends a TCP reset instead of a FIN.
_LINGER_RESET: Final = struct.pack("ii", 1, 0)


def _unsafe_field(name: bytes, value: bytes) -> bool:
    """Whether a field from an HTTP/2 peer cannot be written as an HTTP/1.1 field line as it is."""
    return not name or bool(name.translate(None, _TOKEN_CHARS)) or bool(value.translate(None, _VALUE_CHARS))


_REASONS: Final = {
    400: "Bad Request",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
}


def error_response(status: int, reason: str, message: str, *, close: bool) -> bytes:
    """A short plain-text response that shadowtap itself sends (502, 504, 400, 431 ...), marked with
    ``X-Shadowtap-Error`` so a client can tell it from the primary's."""
    body = (message.rstrip("\n") + "\n").encode("utf-8", "replace")
    own: list[Header] = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", b"%d" % len(body)),
        (b"X-Shadowtap-Error", b"1"),
    ]
    if close:
        own.append((b"Connection", b"close"))
    return response_head(status, reason.encode("ascii"), own) + body


class _Refused(Exception):
    """Raised inside a parser callback to refuse a request before anything of it reaches the primary:
    the client gets ``status`` with ``message``, then the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _H2Request:
    """An HTTP/1.1 request's HTTP/2 header list for an HTTP/2 primary, settled while its head is read
    (``_h2_request``), so a request HTTP/2 cannot carry is refused there, as the HTTP/1 path refuses a
    malformed one: before any stage sees it."""

    __slots__ = ("expect_continue", "head", "te_trailers")

    def __init__(self, head: list[Header], expect_continue: bool, te_trailers: bool) -> None:
        self.head = head
        #: The client sent ``Expect: 100-continue`` (answered by the proxy when the request's turn comes).
        self.expect_continue = expect_continue
        #: The client offered ``TE: trailers``: the primary gets it, and the client the trailers.
        self.te_trailers = te_trailers


def _with_host(headers: list[Header], authority: bytes) -> list[Header]:
    """``headers`` with ``authority`` as the Host field's value (added when there is none: HTTP/1.0)."""
    out: list[Header] = []
    found = False
    for name, value in headers:
        if len(name) == 4 and name.lower() == b"host":
            found = True
            value = authority
        out.append((name, value))
    if not found:
        out.append((b"Host", authority))
    return out


def _h2_request(
    ctx: Context,
    method: bytes,
    target: bytes,
    headers: list[Header],
    uri_authority: bytes | None,
    client_ip: bytes,
    scheme: bytes,
) -> _H2Request:
    """The HTTP/2 request for an HTTP/1.1 client's request (see ``_H2Upstream``); raises ``_Refused``
    (400, 431) for one HTTP/2 cannot carry. ``uri_authority`` is an absolute-form target's authority:
    it names the host instead of Host (RFC 9112 3.2.2), for ``:authority`` and X-Forwarded-Host alike."""
    settings_target = ctx.settings.target
    source = tuple(headers)
    if uri_authority is not None:
        source = tuple((n, uri_authority) if n.lower() == b"host" else (n, v) for n, v in source)
    fields, added, _ = ctx.rewriter.forwarding(source, client_ip, scheme)
    client_host: bytes | None = uri_authority
    kept: list[Header] = []
    expect_continue = False
    # Counted as HTTP/2 counts a header list: the four pseudo-header fields come to about 160.
    list_bytes = 160 + len(target)
    for name, value in end_to_end(fields):
        lower = name.lower()
        if lower == b"host":
            if uri_authority is None:
                client_host = value.strip(b" \t")
        elif lower == b"expect":
            # Answered here (as nginx does): the body is streamed as it comes, never held back.
            expect_continue = value.strip().lower() == b"100-continue"
        else:
            # llhttp leaves trailing whitespace in a value; HTTP/2 forbids it (RFC 9113 8.2.1).
            value = value.strip(b" \t")
            kept.append((lower, value))
            list_bytes += len(lower) + len(value) + 32
    if list_bytes > _H2_MAX_HEADER_LIST_BYTES:
        raise _Refused(431, "request header fields too large for the HTTP/2 primary")
    if not client_host:
        client_host = None  # none, or empty (RFC 9113 8.3.1: never an empty :authority)
    elif client_host.translate(None, _AUTHORITY_CHARS):
        what = "the Host header" if uri_authority is None else "the request target's authority"
        raise _Refused(400, f"{what} is not a valid authority")
    if target == b"*" and method != b"OPTIONS":
        raise _Refused(400, "only OPTIONS may have the request target *")
    te_trailers = False
    for name, value in headers:
        if name.lower() == b"te" and b"trailers" in [t.strip() for t in value.lower().split(b",")]:
            te_trailers = True
    path = target
    fragment = path.find(b"#")
    if fragment >= 0:
        # Not part of a request target (RFC 9110 7.1), nor of :path (RFC 9113 8.3.1).
        path = path[:fragment]
    if path[:1] == b"/":
        path = settings_target.path_prefix + path
    head: list[Header] = [
        (b":method", method),
        (b":scheme", b"https" if settings_target.tls else b"http"),
        (b":authority", ctx.rewriter.host_sent(client_host)),
        (b":path", path),
    ]
    if te_trailers:
        head.append((b"te", b"trailers"))
    head += kept
    for name, value in added:
        head.append((name.lower(), value))
    return _H2Request(head, expect_continue, te_trailers)


class _Context(Context):
    """The shared state, with the HTTP/1 client connections (the HTTP/2 side never touches them)."""

    __slots__ = ("connections",)

    def __init__(
        self,
        settings: ForwardSettings,
        stages: Sequence[Stage],
        observers: Sequence[PrimaryObserver],
        pool: Pool,
        loop: asyncio.AbstractEventLoop,
        scheme: str,
    ) -> None:
        super().__init__(settings, stages, observers, pool, loop, scheme)
        self.connections: set[_ClientConnection] = set()


class _Forward:
    """One request on its way to the primary and back: the ``ResponseSink`` for its exchange.

    ``ex`` is the ``ProxiedExchange`` stages see; with no stages (plain pass-through) there is none,
    and nothing of the response is copied. The request body is always kept up to the capture limit:
    a request on a pooled connection the primary had closed is resent from it.
    """

    __slots__ = (
        "_body_buffer",
        "_body_buffered",
        "_capture",
        "_captured",
        "_client",
        "_close_after",
        "_connect_task",
        "_ctx",
        "_first_byte_ns",
        "_head_sent",
        "_held",
        "_mode",
        "_out",
        "_resp_capture",
        "_resp_captured",
        "_resp_head",
        "_resp_read_at",
        "_resp_room",
        "_resp_size",
        "_retried",
        "_sent_ns",
        "_started_ns",
        "_streaming",
        "_tunneled",
        "body_done",
        "chunked",
        "conn",
        "deadline",
        "ex",
        "failure",
        "finished",
        "first_byte_deadline",
        "h2",
        "h2_request",
        "headers",
        "http10",
        "keep_alive",
        "method",
        "request_body",
        "request_body_size",
        "target",
        "upgrade",
    )

    def __init__(
        self,
        client: _ClientConnection,
        ex: ProxiedExchange | None,
        started_ns: int,
        method: bytes,
        target: bytes,
        headers: list[Header],
        http10: bool,
        keep_alive: bool,
        chunked: bool,
        upgrade: bool,
    ) -> None:
        ctx = client.ctx
        self._client = client
        self._ctx = ctx
        self.ex = ex
        self._started_ns = started_ns
        self.method = method
        self.target = target
        self.headers = headers
        self.http10 = http10
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.upgrade = upgrade
        self.conn: Http1Connection | None = None
        #: The stream to an HTTP/2 primary carrying this request (``_H2Upstream``), else None.
        self.h2: _H2Upstream | None = None
        #: Its HTTP/2 form, settled with its head when the primary speaks HTTP/2.
        self.h2_request: _H2Request | None = None
        self.finished = False
        self.body_done = False
        self.failure: Failure | None = None
        self.deadline = math.inf
        self.first_byte_deadline = math.inf
        self._streaming = False
        self._body_buffer: list[bytes] = []
        self._body_buffered = 0
        # The request body copy (stages, retries); None once it passed the capture limit.
        self._capture: list[bytes] | None = []
        self._captured = 0
        self.request_body: bytes | None = b""
        self.request_body_size = 0
        self._head_sent = False
        self._mode = _BODY_NONE
        # Client-bound bytes produced while handling one primary read, written by flush().
        self._out: list[bytes] = []
        self._close_after = False
        # The response copy for stages: nothing is kept when no stage will read it.
        self._resp_capture: list[bytes] = []
        self._resp_room = ctx.capture_limit if ex is not None else 0
        self._resp_captured = 0
        self._resp_head: tuple[int, bytes, list[Header]] | None = None
        self._resp_size = 0
        #: When the primary last sent response bytes (the sweep's clock), for its read timeout.
        self._resp_read_at = 0.0
        #: Bytes this exchange's copies add to ``capture_held`` (given back when it finishes).
        self._held = 0
        self._retried = False
        #: A CONNECT the primary accepted: the connection is a tunnel from its answer's head on.
        self._tunneled = False
        self._connect_task: asyncio.Task[None] | None = None
        self._sent_ns: int | None = None
        self._first_byte_ns: int | None = None

    # --- request side (driven by the client connection's parser) ---------------------------------

    def client_body(self, data: bytes) -> None:
        size = len(data)
        self.request_body_size += size
        capture = self._capture
        if capture is not None:
            ctx = self._ctx
            if self._captured + size <= ctx.capture_limit and (
                self.finished or ctx.capture_held + size <= ctx.capture_budget
            ):
                capture.append(data)
                self._captured += size
                if not self.finished:
                    ctx.capture_held += size
                    self._held += size
            else:
                self._drop_request_capture(self._captured + size <= ctx.capture_limit)
        if self.finished:
            return
        conn = self.conn
        if self._streaming and conn is not None:
            if self.chunked:
                conn.writelines(chunk(data))
            else:
                conn.write(data)
        elif self.h2 is not None:
            self.h2.send(data)
        else:
            self._body_buffer.append(data)
            self._body_buffered += size
            if self._body_buffered > self._ctx.max_buffered:
                self._client.pause_reading(_PAUSE_BUFFER)

    def _drop_request_capture(self, over_budget: bool) -> None:
        """Stop copying the request body (past the capture limit, or the budget shared by everything
        in flight): stages see it as not captured, and what the copy held is given back."""
        ctx = self._ctx
        if not self.finished:
            # After the finish the copy's bytes were given back already.
            ctx.capture_held -= self._captured
            self._held -= self._captured
        if over_budget:
            ctx.stats.capture_budget_cuts += 1
        self._capture = None
        self._captured = 0

    def client_body_done(self) -> None:
        self.body_done = True
        capture = self._capture
        if capture:
            self.request_body = b"".join(capture)
        elif capture is None:
            self.request_body = None
        ctx = self._ctx
        ex = self.ex
        if ex is not None:
            ex.request_body = self.request_body
            ex.request_body_size = self.request_body_size
            for stage in ctx.request_stages:
                call_stage(ctx.stats.stage_errors, stage, stage.request_complete, ex)
        if self._streaming and self.conn is not None and not self.finished:
            if self.chunked:
                self.conn.write(http1.CHUNKED_END)
            self.first_byte_deadline = ctx.loop.time() + ctx.settings.first_byte_timeout_s
        elif self.h2 is not None and not self.finished:
            self.h2.end()
            self.first_byte_deadline = ctx.loop.time() + ctx.settings.first_byte_timeout_s

    # --- forwarding ------------------------------------------------------------------------------

    def start(self) -> None:
        """Our turn on the client connection: get a primary connection and send the request."""
        ctx = self._ctx
        self.deadline = ctx.loop.time() + ctx.settings.total_timeout_s
        # An HTTP/2 primary (asked once: ``h2_pool`` is False from the first request on otherwise).
        if ctx.h2_pool is not False and self._start_h2():
            return
        conn = ctx.pool.try_acquire()
        if conn is None:
            self._connect_task = ctx.loop.create_task(self._connect())
        else:
            self._send(conn)

    def _start_h2(self) -> bool:
        """Send the request as a stream on the HTTP/2 pool ``shadowtap.proxy.h2server`` uses for the
        primary; False when the primary speaks HTTP/1."""
        pool = h2server.upstream_pool(self._ctx)
        if pool is None:
            return False
        if self.upgrade:
            # HTTP/2 has no Upgrade and no CONNECT to a tunnel of HTTP/1 bytes (RFC 9113 8.6, 8.5).
            # The connection closes after the 502: what the client sent behind the offer (tunnel or
            # WebSocket bytes) is never read as a request.
            self.keep_alive = False
            self._fail(FailureKind.BAD_RESPONSE, "the primary speaks HTTP/2: an Upgrade or CONNECT cannot reach it")
            return True
        self.h2 = _H2Upstream(self, pool)
        self.h2.start()
        return True

    async def _connect(self) -> None:
        settings = self._ctx.settings
        try:
            conn = await self._ctx.pool.connect()
        except TimeoutError:
            self._connect_task = None
            self._fail(FailureKind.TIMEOUT, f"primary connect timed out after {settings.connect_timeout_s:g} s")
            return
        except ssl.SSLError as exc:
            self._connect_task = None
            self._fail(FailureKind.CONNECT_ERROR, f"TLS handshake with primary failed: {exc.reason or exc}")
            return
        except OSError as exc:
            self._connect_task = None
            self._fail(FailureKind.CONNECT_ERROR, f"cannot connect to primary: {exc.strerror or exc}")
            return
        self._connect_task = None
        if self.finished:
            self._ctx.pool.release(conn)
            return
        if conn.closed:
            # Lost between the dial and this task's turn (the primary accepted, then hung up):
            # nobody would ever answer on it, so fail now rather than at the first-byte timeout.
            self._fail(FailureKind.RESET, "primary closed the connection before the request was sent")
            return
        self._send(conn)

    def _send(self, conn: Http1Connection) -> None:
        self.conn = conn
        conn.begin(self, self.method == b"HEAD")
        client = self._client
        ctx = self._ctx
        head = ctx.rewriter.head(
            self.method, self.target, self.headers, client.client_ip, client.scheme, self.chunked, self.upgrade
        )
        self._streaming = True
        # An Upgrade offer goes like any request, with its own body: the bytes the client sent
        # behind it stay with the client connection until the primary switches protocols.
        if self._retried:
            # A retry resends the captured body (a retry is only tried when it is complete).
            buffered = [self.request_body] if self.request_body else []
        else:
            buffered = self._body_buffer
            self._body_buffer = []
        if buffered:
            parts = [head]
            if self.chunked:
                for piece in buffered:
                    parts += chunk(piece)
            else:
                parts += buffered
            if self.body_done and self.chunked:
                parts.append(http1.CHUNKED_END)
            conn.writelines(parts)
        elif self.body_done and self.chunked:
            conn.writelines([head, http1.CHUNKED_END])
        elif conn.transport is not None and not conn.closed:
            # The usual request, a head alone: straight to the transport.
            conn.transport.write(head)
        else:
            conn.write(head)
        if self._body_buffered:
            self._body_buffered = 0
            client.resume_reading(_PAUSE_BUFFER)
        self._sent_ns = time.monotonic_ns() - self._started_ns
        if self.body_done:
            self.first_byte_deadline = ctx.loop.time() + ctx.settings.first_byte_timeout_s
        if client.write_paused:
            conn.pause_reading()

    # --- ResponseSink ----------------------------------------------------------------------------

    def upstream_write_paused(self, paused: bool) -> None:
        if paused:
            self._client.pause_reading(_PAUSE_UPSTREAM)
        else:
            self._client.resume_reading(_PAUSE_UPSTREAM)

    def on_interim(self, status: int, reason: bytes, headers: list[Header]) -> None:
        # 1xx (100 Continue, 103 Early Hints) go to HTTP/1.1 clients as they come.
        if not self.http10 and not self._head_sent:
            self._out.append(response_head(status, reason, end_to_end(headers)))

    def on_head(self, status: int, reason: bytes, headers: list[Header]) -> None:
        if status < 100 or (status == 101 and not self.upgrade):
            # Nothing a client could take for an answer (nginx: "upstream sent invalid status").
            self._fail(FailureKind.BAD_RESPONSE, f"primary sent status {status} to a request that cannot have it")
            return
        if self.ex is not None:
            self._first_byte_ns = time.monotonic_ns() - self._started_ns
        self.first_byte_deadline = math.inf
        ctx = self._ctx
        self._resp_read_at = ctx.now
        parts = status_line(status, reason)
        close = not self.keep_alive or ctx.closing or not self.body_done
        if status == 101:
            add_fields(parts, end_to_end(headers, upgrade=True))
            self._mode = _BODY_NONE
        elif 200 <= status < 300 and self.method == b"CONNECT":
            # RFC 9110 9.3.6: a 2xx to CONNECT has no body; what follows its head is the tunnel's.
            framing = (b"content-length", b"transfer-encoding")
            add_fields(parts, [h for h in end_to_end(headers) if h[0].lower() not in framing])
            self._mode = _BODY_RAW
            self._resp_room = 0
            if self._start_tunnel() is None:
                return
        else:
            transfer_encoding, content_length = response_fields(parts, headers)
            if status == 204 and (transfer_encoding is not None or (content_length or b"0").strip() != b"0"):
                # Its body would be read by the client as the start of the next response.
                self._fail(FailureKind.BAD_RESPONSE, "primary sent a 204 response with a body")
                return
            if self.method == b"HEAD" or status == 204 or status == 304:
                self._mode = _BODY_NONE
                if transfer_encoding is not None and not self.http10 and self.method == b"HEAD":
                    add_value(parts, _TRANSFER_ENCODING, transfer_encoding)
            elif content_length is not None and transfer_encoding is None:
                self._mode = _BODY_RAW
            elif self.http10:
                # An HTTP/1.0 client knows no chunked: the body ends when we close.
                self._mode = _BODY_RAW
                close = True
            else:
                self._mode = _BODY_CHUNKED
                add_value(parts, _TRANSFER_ENCODING, transfer_encoding or b"chunked")
            if close:
                parts.append(_CONNECTION_CLOSE)
            elif self.http10:
                parts.append(_CONNECTION_KEEP_ALIVE)
        self._resp_head = (status, reason, headers)
        self._close_after = close
        if ctx.via is not None:
            add_value(parts, _VIA, ctx.via)
        self._head_sent = True
        self._out.append(end_head(parts))

    def flush(self) -> None:
        """Write what this read produced in one call: head and body usually leave in one segment."""
        out = self._out
        if out:
            self._out = []
            self._client.writelines(out)

    def on_body(self, data: bytes) -> None:
        if self.finished:
            return
        size = len(data)
        self._resp_size += size
        ctx = self._ctx
        self._resp_read_at = ctx.now
        room = self._resp_room
        if room > 0:
            piece = data if size <= room else data[:room]
            taken = len(piece)
            if ctx.capture_held + taken <= ctx.capture_budget:
                self._resp_capture.append(piece)
                self._resp_captured += taken
                self._resp_room = room - taken
                ctx.capture_held += taken
                self._held += taken
            else:
                # The rest of the copy is cut (the response is marked truncated), never the wire.
                self._resp_room = 0
                ctx.stats.capture_budget_cuts += 1
        mode = self._mode
        if mode == _BODY_RAW:
            self._out.append(data)
        elif mode == _BODY_CHUNKED and size:
            self._out += chunk(data)

    def on_complete(self, reusable: bool) -> None:
        if self.finished or self._tunneled:
            return
        if self._mode == _BODY_CHUNKED:
            self._out.append(http1.CHUNKED_END)
        conn = self.conn
        self.conn = None
        if conn is not None:
            # After an Upgrade offer the primary may still act on it: its connection is not reused.
            if reusable and self.body_done and not self.upgrade:
                self._ctx.pool.release(conn)
            else:
                conn.close()
        self._finish(self._close_after)

    def on_upgraded(self, rest: bytes) -> None:
        self.flush()
        tunnel = self._start_tunnel()
        if tunnel is not None:
            tunnel.received(1 - CLIENT, rest)

    def _start_tunnel(self) -> Tunnel | None:
        """Splice the client and the primary (after a 101, or a 2xx to CONNECT) with the bytes the
        client sent behind its request; None when either side is gone (the exchange then ends)."""
        conn = self.conn
        client = self._client
        if conn is None or conn.transport is None or client.transport is None or client.closed:
            self.conn = None
            if conn is not None:
                conn.abort()
            self._finish(True)
            return None
        self.conn = None  # the tunnel has it now
        self._tunneled = True
        self._ctx.stats.upgrades += 1
        tunnel = Tunnel(client.transport, conn.transport, self._tunnel_closed)
        conn.tunnel = tunnel
        client.start_tunnel(tunnel)
        tunnel.received(CLIENT, client.take_upgrade_rest())
        return tunnel

    def _tunnel_closed(self) -> None:
        self._finish(True)

    def on_failure(self, kind: str, message: str) -> None:
        conn = self.conn
        self.conn = None
        if self.finished:
            return
        if (
            kind == FailureKind.RESET
            and conn is not None
            and conn.stale
            and not self._head_sent
            and not self._retried
            and not self.upgrade
            and self.body_done
            and self.request_body is not None
            and self.method in http1.IDEMPOTENT_METHOD_BYTES
        ):
            # A pooled connection the primary had already closed: nothing of the exchange happened,
            # so the idempotent request is sent once more on a fresh connection.
            self._retried = True
            self._streaming = False
            self._connect_task = self._ctx.loop.create_task(self._connect())
            return
        self._fail(kind, message)

    # --- endings ---------------------------------------------------------------------------------

    def reading_resumed(self, now: float) -> None:
        """The client drained its buffer and the primary is read again: its silence counts from now."""
        self._resp_read_at = now

    def read_stalled(self, now: float, limit_s: float) -> bool:
        """Whether the primary has sent nothing for ``limit_s`` since its response head began."""
        return (
            self._head_sent
            and not self.finished
            and (self.conn is not None or self.h2 is not None)
            and now - self._resp_read_at >= limit_s
        )

    def timed_out(self, what: str, limit_s: float) -> None:
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.detach()
        self._fail(FailureKind.TIMEOUT, f"primary {what} timed out after {limit_s:g} s")

    def _fail(self, kind: str, message: str) -> None:
        if self.finished:
            return
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.detach()
        if self.h2 is not None:
            self.h2.cancel()
        ctx = self._ctx
        failures = ctx.stats.primary_failures
        failures[kind] = failures.get(kind, 0) + 1
        self.failure = Failure(kind, message)
        if self._head_sent:
            # The status is on the wire already: closing is the only honest signal left.
            self._finish(True)
            return
        if kind == FailureKind.TIMEOUT:
            status, reason = 504, "Gateway Timeout"
        else:
            status, reason = 502, "Bad Gateway"
        close = not self.body_done or not self.keep_alive or ctx.closing
        self._out.append(error_response(status, reason, f"shadowtap: {message}", close=close))
        self._finish(close)

    def client_timed_out(self, message: str) -> None:
        """The client stalled its request body past ``client_body_timeout_s``: 408 if the response
        has not started, and the connection closes (the primary's connection goes with it)."""
        if not self.finished and not self._head_sent:
            self._out.append(error_response(408, "Request Timeout", f"shadowtap: {message}", close=True))
        self._abandon(message)

    def client_body_cut(self) -> None:
        """The client ended its side of the connection before the request body was whole: 400 if
        the response has not started, and the exchange ends (the primary's stream or connection too)."""
        if not self.finished and not self._head_sent:
            message = "shadowtap: the client closed its side before the request body was whole"
            self._out.append(error_response(400, "Bad Request", message, close=True))
        self._abandon("client closed its side before the request body was whole")

    def client_gone(self) -> None:
        """The client connection closed before this exchange ended."""
        self._abandon("client closed the connection")

    def _abandon(self, why: str) -> None:
        """End the exchange for the client's sake: nothing more is sent or read for it."""
        if self.finished:
            return
        task = self._connect_task
        if task is not None:
            task.cancel()
            self._connect_task = None
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.detach()
        if self.h2 is not None:
            self.h2.cancel()
        if self.failure is None:
            self.failure = Failure(FailureKind.CANCELLED, why)
        if not self.body_done:
            self.request_body = None
        self._finish(True)

    def _finish(self, close_client: bool, refused: bool = False) -> None:
        """End the exchange. ``refused``: the proxy answered it (400, 431) before the primary saw it,
        a client error and no outcome of the primary's: the observers do not count it."""
        if self.finished:
            return
        self.finished = True
        self._body_buffer = []
        self.flush()
        ctx = self._ctx
        ctx.capture_held -= self._held
        self._held = 0
        if refused:
            self._finish_refused(close_client)
            return
        head = self._resp_head
        sent_ns = self._sent_ns
        done_ns = None if sent_ns is None else time.monotonic_ns() - self._started_ns
        failed = self.failure is not None
        for observer in ctx.observers:
            try:
                observer.observe_primary(None if head is None else head[0], failed, done_ns)
            except Exception:
                errors = ctx.stats.stage_errors.by_stage
                errors[observer.name] = errors.get(observer.name, 0) + 1
                log.exception("proxy observer %s failed on a primary exchange", observer.name)
        ex = self.ex
        if ex is not None and ctx.completion_stages:
            failure = self.failure
            ex.failure = failure
            ex.request_body = self.request_body
            ex.request_body_size = self.request_body_size
            ex.timing = new_timing(sent_ns, self._first_byte_ns, done_ns)
            if head is not None and failure is not None:
                # Cut after its head (reset, short body, bad chunk, timeout): no answer to compare or
                # replay, however normal its status looked.
                ex.failure = Failure(
                    FailureKind.INCOMPLETE,
                    f"{head[0]} response cut after {self._resp_size} body bytes: {failure.message}",
                )
            elif head is not None:
                size = self._resp_size
                body = b"".join(self._resp_capture) if size else b""
                truncated_from = size if size > self._resp_captured else None
                if self.h2 is not None:
                    ex.response = self.h2.response(head[0], head[2], body, truncated_from)
                else:
                    ex.response = new_response(
                        head[0], head[1].decode("latin-1"), tuple(head[2]), body, "1.1", truncated_from
                    )
            for stage in ctx.completion_stages:
                call_stage(ctx.stats.stage_errors, stage, stage.exchange_complete, ex)
        self._client.request_done(self, close_client)

    def _finish_refused(self, close_client: bool) -> None:
        ctx = self._ctx
        ex = self.ex
        if ex is not None and self.body_done and ctx.completion_stages:
            # The stages saw the request whole (it may have been mirrored): the tape gets it, with
            # the refusal as its primary outcome (a kind the differ counts as never sent).
            ex.failure = self.failure
            ex.request_body = self.request_body
            ex.request_body_size = self.request_body_size
            ex.timing = new_timing(None, None, time.monotonic_ns() - self._started_ns)
            for stage in ctx.completion_stages:
                call_stage(ctx.stats.stage_errors, stage, stage.exchange_complete, ex)
        else:
            # Not yet seen whole by any stage: as a request refused while its head was read, it
            # never reaches one (never mirrored, never taped).
            self.ex = None
        self._client.request_done(self, close_client)


class _H2Upstream:
    """An HTTP/1.1 client's request to an HTTP/2 primary (``h2c://``, or https with
    ``forward.primary_http2``): one stream on the pool ``shadowtap.proxy.h2server`` uses for the
    primary, and the ``StreamSink`` that hands its answer to the ``_Forward`` as an HTTP/1.1 response.

    The request loses its hop-by-hop fields (``te: trailers`` stays when the client offered it, as
    HTTP/2 allows) and Expect (a ``100 Continue`` is sent from here), Host becomes ``:authority``
    (an absolute-form target's authority instead, RFC 9112 3.2.2) and the forwarding fields are the
    HTTP/1 path's. The
    response's trailers reach the client only when it sent ``TE: trailers`` and the body goes chunked
    (as the chunked trailer section); otherwise they are dropped on the wire (the tape keeps them).
    Request bytes waiting for the primary's window beyond ``max_buffered_body_bytes`` pause the
    client's reading; response bytes are acknowledged to the primary only once written to a client
    that is reading, so a slow client holds the primary back rather than a buffer here.

    What is legal in HTTP/1.1 but malformed in HTTP/2 is settled while the head is read
    (``_h2_request``): values lose the whitespace around them, an empty Host is as none (the
    primary's authority), a Host that is not an authority or an asterisk target other than OPTIONS
    gets 400, a header list beyond ``_H2_MAX_HEADER_LIST_BYTES`` 431, refused as the HTTP/1 path
    refuses a malformed head (no stage sees it). A head over the primary's own header list limit is
    refused here with 431 (``_refuse``): a client error, never a failure of the primary's. An answer whose
    fields cannot be written as HTTP/1.1 is a 502 (the stream is reset); trailers lose the fields
    RFC 9110 forbids there; a close-delimited body (HTTP/1.0 client) cut by a reset ends with a TCP
    reset, so the cut cannot pass for the end.
    """

    __slots__ = ("_close_delimited", "_forward", "_head", "_pending", "_pending_bytes", "_pool", "_retried",
                 "_task", "_te_trailers", "_unacked", "stream", "trailers")  # fmt: skip

    def __init__(self, forward: _Forward, pool: Any) -> None:
        self._forward = forward
        #: ``shadowtap.wire.h2.H2Pool`` and ``H2Stream`` (typed loosely: this module imports no h2).
        self._pool: Any = pool
        self.stream: Any = None
        self._task: asyncio.Task[None] | None = None
        self._head: list[Header] = []
        # Request body that came while the stream was being opened (bounded: reading pauses).
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._unacked = 0
        self._te_trailers = False
        self._retried = False
        #: The answer goes to the client delimited by closing its connection (HTTP/1.0, no length).
        self._close_delimited = False
        self.trailers: list[Header] = []

    def start(self) -> None:
        forward = self._forward
        request = forward.h2_request
        if request is None:
            # Settled with the head whenever the primary speaks HTTP/2; kept for a request read
            # before anything asked (it is refused here the same way, only later).
            client = forward._client
            try:
                request = _h2_request(
                    forward._ctx, forward.method, forward.target, forward.headers, None, client.client_ip, client.scheme
                )
            except _Refused as refused:
                self._refuse(refused.status, refused.message)
                return
        self._head = request.head
        self._te_trailers = request.te_trailers
        if request.expect_continue and not forward.body_done and not forward.http10:
            forward._client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._pending = forward._body_buffer
        self._pending_bytes = forward._body_buffered
        forward._body_buffer = []
        forward._body_buffered = 0
        if forward.body_done:
            ctx = forward._ctx
            forward.first_byte_deadline = ctx.loop.time() + ctx.settings.first_byte_timeout_s
        self._open_stream()

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` ourselves, before anything of the request reached the primary: a client
        error (``client_errors``), never a failure of the primary's; the connection closes after it
        (the rest of the body is read and dropped)."""
        forward = self._forward
        errors = forward._ctx.stats.client_errors
        errors[status] = errors.get(status, 0) + 1
        forward.failure = Failure(FailureKind.CANCELLED, f"refused by the proxy with {status}: {message}")
        forward._out.append(error_response(status, _REASONS[status], f"shadowtap: {message}", close=True))
        forward._finish(True, refused=True)

    def _open_stream(self) -> None:
        forward = self._forward
        end_stream = forward.body_done and not self._pending
        try:
            stream = self._pool.try_open(self._head, self, end_stream)
        except Exception:
            # Opened from inside the failure of a connection (this request was pipelined behind one
            # that connection failed): that connection is shut, the open task takes another.
            stream = None
        if stream is None:
            self._task = forward._ctx.loop.create_task(self._open(end_stream))
        else:
            self._attached(stream)

    async def _open(self, end_stream: bool) -> None:
        forward = self._forward
        settings = forward._ctx.settings
        try:
            stream = await self._pool.open(self._head, self, end_stream)
        except TimeoutError:
            self._task = None
            forward._fail(FailureKind.TIMEOUT, f"primary connect timed out after {settings.connect_timeout_s:g} s")
            return
        except OSError as exc:
            self._task = None
            forward._fail(FailureKind.CONNECT_ERROR, f"cannot connect to primary: {exc.strerror or exc}")
            return
        self._task = None
        if forward.finished:
            stream.reset()
            return
        self._attached(stream)

    def _attached(self, stream: Any) -> None:
        forward = self._forward
        self.stream = stream
        forward._sent_ns = time.monotonic_ns() - forward._started_ns
        pending = self._pending
        if pending:
            self._pending = []
            self._pending_bytes = 0
            for piece in pending:
                stream.send_data(piece)
            forward._client.resume_reading(_PAUSE_BUFFER)
        if forward.body_done and not stream.ended_local:
            stream.end()
        if stream.outbox_bytes > forward._ctx.max_buffered:
            forward._client.pause_reading(_PAUSE_UPSTREAM)

    # --- the request body, from the client connection --------------------------------------------

    def send(self, data: bytes) -> None:
        forward = self._forward
        stream = self.stream
        if stream is None:
            if self._task is not None:
                self._pending.append(data)
                self._pending_bytes += len(data)
                if self._pending_bytes > forward._ctx.max_buffered:
                    forward._client.pause_reading(_PAUSE_BUFFER)
            return
        stream.send_data(data)
        if stream.outbox_bytes > forward._ctx.max_buffered:
            forward._client.pause_reading(_PAUSE_UPSTREAM)

    def end(self) -> None:
        stream = self.stream
        if stream is not None and not stream.ended_local:
            stream.end()

    def cancel(self) -> None:
        """The exchange is over for the client's sake (failure, timeout, client gone)."""
        task = self._task
        if task is not None:
            self._task = None
            task.cancel()
        stream = self.stream
        if stream is not None:
            self.stream = None
            stream.reset()

    def resume(self) -> None:
        """The client reads again: what it was written may be acknowledged to the primary."""
        unacked = self._unacked
        stream = self.stream
        if unacked and stream is not None:
            self._unacked = 0
            stream.consumed(unacked)

    def response(self, status: int, headers: list[Header], body: bytes, truncated_from: int | None) -> Any:
        """The primary's answer as the tape holds it (a ``Response``): HTTP/2, with its trailers."""
        from shadowtap.recorder.model import Response  # this path only

        return Response(status, "", tuple(headers), body, "2", truncated_from, tuple(self.trailers))

    # --- StreamSink ------------------------------------------------------------------------------

    def on_request_drained(self, sent: int) -> None:
        stream = self.stream
        forward = self._forward
        if stream is not None and stream.outbox_bytes <= forward._ctx.max_buffered:
            forward._client.resume_reading(_PAUSE_UPSTREAM)

    def on_head(self, status: int, headers: list[Header], ended: bool) -> None:
        forward = self._forward
        if forward.finished:
            return
        from http import HTTPStatus  # this path only

        try:
            reason = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            reason = b""
        lengths = 0
        length = b""
        for name, value in headers:
            if _unsafe_field(name, value):
                forward._fail(FailureKind.BAD_RESPONSE, f"primary sent a field HTTP/1.1 cannot carry: {name!r}")
                return
            if len(name) == 14 and name == b"content-length":
                # h2 reads "+2" or a repeated field as a length; an HTTP/1.1 client must get one
                # field of digits (llhttp refuses either, other parsers disagree on which one wins).
                if not value.isdigit() or (lengths and value != length):
                    forward._fail(FailureKind.BAD_RESPONSE, f"primary sent a content-length of {value!r}")
                    return
                lengths += 1
                length = value
        if lengths > 1:
            headers = [field for field in headers if field[0] != b"content-length"]
            headers.append((b"content-length", length))
        if forward.http10:
            self._close_delimited = all(name.lower() != b"content-length" for name, _ in headers)
        forward.on_head(status, reason, headers)
        forward.flush()

    def on_data(self, data: bytes) -> None:
        forward = self._forward
        stream = self.stream
        if forward.finished or stream is None:
            return
        forward.on_body(data)
        forward.flush()
        if forward._client.write_paused:
            self._unacked += len(data)
        else:
            stream.consumed(len(data))

    def on_trailers(self, headers: list[Header]) -> None:
        self.trailers = headers

    def on_end(self) -> None:
        self.stream = None
        forward = self._forward
        if forward.finished:
            return
        trailers = self.trailers
        if trailers and self._te_trailers and forward._mode == _BODY_CHUNKED:
            parts = [b"0\r\n"]
            sent = end_to_end(trailers)
            kept = [(n, v) for n, v in sent if not _unsafe_field(n, v) and n.lower() not in _TRAILER_FORBIDDEN]
            add_fields(parts, kept)
            parts.append(b"\r\n")
            forward._out.append(b"".join(parts))
            forward._mode = _BODY_RAW  # the last chunk is written: on_complete adds none
        forward.on_complete(False)

    def on_reset(self, kind: str, message: str, refused: bool) -> None:
        if self.stream is None and self._task is not None:
            # A stream a failing connection was handed while it failed (``_open_stream``): the
            # open task is already taking another connection for this request.
            return
        self.stream = None
        forward = self._forward
        if forward.finished:
            return
        body = forward.request_body
        if refused and not forward._head_sent and not self._retried and forward.body_done and body is not None:
            # The primary never processed it (REFUSED_STREAM, or above a GOAWAY's last stream): once more.
            self._retried = True
            self._pending = [body] if body else []
            self._open_stream()
            return
        if kind == _H2_HEADERS_TOO_LARGE and not forward._head_sent:
            # Above the primary's SETTINGS_MAX_HEADER_LIST_SIZE, never sent: the client's to mend.
            self._refuse(431, message)
            return
        cut = forward._head_sent and self._close_delimited
        forward._fail(kind, message)
        transport = forward._client.transport
        if cut and transport is not None:
            # A FIN would end the body as if it were whole: a TCP reset says it was cut.
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            transport.abort()


#: ``shadowtap.wire.h2.HEADERS_TOO_LARGE`` (this module imports no h2; a test pins the two equal).
_H2_HEADERS_TOO_LARGE: Final = "headers-too-large"


def _content_length(headers: list[Header]) -> int:
    """An Upgrade offer's Content-Length (llhttp has checked the value), 0 without one."""
    for name, value in headers:
        if len(name) == 14 and name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


class _LocalReply:
    """A response shadowtap writes itself (malformed request, head too large), then closes."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class _ClientConnection(asyncio.Protocol):
    """One client connection: parses requests and relays them in order."""

    __slots__ = (
        "_active",
        "_chunked",
        "_bad_transfer_encoding",
        "_ending",
        "_eof",
        "_head_bytes",
        "_head_since",
        "_headers",
        "_hosts",
        "_linger_bytes",
        "_linger_until",
        "_lingering",
        "_parser",
        "_parsing",
        "_pause_mask",
        "_pending",
        "_tunnel",
        "_upgrade_body_left",
        "_upgrade_rest",
        "_url",
        "_write_paused_since",
        "client_addr",
        "client_ip",
        "closed",
        "conn_id",
        "ctx",
        "idle_since",
        "last_read",
        "scheme",
        "transport",
        "write_paused",
    )

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._pending: deque[_Forward | _LocalReply] = deque()  # bounded by max_pipelined (pause)
        self._active: _Forward | None = None
        self._parsing: _Forward | None = None
        self._pause_mask = 0
        self._tunnel: Tunnel | None = None
        # Bytes the client sent behind an Upgrade offer: held (never forwarded) until the primary
        # switches protocols, parsed as the next request if it declines. None: no offer pending.
        self._upgrade_rest: bytes | None = None
        #: Body bytes of the pending Upgrade offer still to come (llhttp leaves its body to us).
        self._upgrade_body_left = 0
        self._url = b""
        self._headers: list[Header] = []
        self._head_bytes = 0
        self._chunked = False
        self._hosts = 0
        self._bad_transfer_encoding = False
        self._eof = False
        #: An answer closed the connection: no request queued behind it is started.
        self._ending = False
        #: When the request head being read began (the sweep's clock); 0.0 between heads.
        self._head_since = 0.0
        # Lingering close: the response went out before its request body came in; the rest of the
        # body is read and dropped until it ends, then the connection closes.
        self._lingering = False
        self._linger_until = 0.0
        self._linger_bytes = 0
        self.write_paused = False
        self._write_paused_since = 0.0
        self.closed = False
        self.client_addr = ""
        self.client_ip = b""
        self.conn_id = ""
        self.scheme = ctx.scheme.encode("ascii")
        self.idle_since = ctx.now
        self.last_read = ctx.now

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self.transport = cast(asyncio.Transport, transport)
        ctx = self.ctx
        if len(ctx.connections) + len(ctx.h2_sessions) >= ctx.max_connections and not self._make_room():
            # Accept and close at once: no request of ours is lost, and the descriptor is free again.
            ctx.stats.connections_refused += 1
            self.closed = True
            transport.close()
            return
        ctx.connections.add(self)
        ctx.stats.connections = len(ctx.connections)
        self.conn_id = f"{ctx.id_prefix}-c{next(ctx.conn_ids):x}"
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            host = str(peer[0])
            self.client_ip = host.encode("ascii", "replace")
            self.client_addr = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
        if ctx.closing:
            transport.close()
        elif self.scheme == b"https" and h2server.wants_h2(transport):
            self._to_h2(b"")

    def _to_h2(self, replay: bytes) -> None:
        """The client speaks HTTP/2: its connection goes to an ``h2server.H2Session``."""
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.stats.connections = len(ctx.connections)
        self.closed = True
        assert self.transport is not None
        h2server.start_session(ctx, self.transport, self.client_addr, self.client_ip, self.conn_id, replay)

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.received(CLIENT, data)
            return
        now = self.ctx.now
        self.last_read = now
        if self._lingering:
            self._linger(data)
            return
        if self._upgrade_rest is not None:
            self._hold(data)
            return
        if self._parsing is None and not self._head_since:
            self._head_since = now
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # llhttp stops after an Upgrade offer's head (or a CONNECT) and leaves the rest to us.
            self._upgrade_rest = b""
            self._hold(data[exc.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._reject(refused.status, refused.message)
            else:
                log.error("request callback failed on %s", self.client_addr, exc_info=exc.__context__ or exc)
                self._reject(400, "cannot process request")
        except httptools.HttpParserError as exc:
            # llhttp stops on the h2c preface (PRI * HTTP/2.0): only this error path looks for it.
            replay = None if not self.idle else h2server.h2c_replay(exc, data)
            if replay is not None:
                self._to_h2(replay)
                return
            self._reject(400, f"malformed request: {exc}")
        self._pump()

    def eof_received(self) -> bool | None:
        if self._tunnel is not None:
            # Tunnelled protocols get no half-close: the end of either side ends the tunnel.
            self._tunnel.lost(CLIENT)
            return None
        # A client that half-closes after its request still wants the response (HTTP/1.0 style);
        # TLS transports cannot stay half-open, so they close as usual.
        self._eof = True
        parsing = self._parsing
        if parsing is not None and parsing is self._active and not self._lingering:
            # Its body can never be whole: given up now, not at the body timeout (a request to an
            # HTTP/2 primary would hold a stream open with part of a body until then).
            self._parsing = None
            parsing.client_body_cut()
            return False
        return self.scheme == b"http" and (self._active is not None or bool(self._pending))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.stats.connections = len(ctx.connections)
        if self._tunnel is not None:
            self._tunnel.lost(CLIENT)
        active = self._active
        self._active = None
        pending = list(self._pending)
        self._pending.clear()
        if active is not None:
            active.client_gone()
        for item in pending:
            if isinstance(item, _Forward):
                item.client_gone()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._write_paused_since = self.ctx.now
        if self._tunnel is not None:
            self._tunnel.write_paused(CLIENT, True)
        elif self._active is not None and self._active.conn is not None:
            self._active.conn.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._tunnel is not None:
            self._tunnel.write_paused(CLIENT, False)
        elif self._active is not None and self._active.conn is not None:
            self._active.reading_resumed(self.ctx.now)
            self._active.conn.resume_reading()
        elif self._active is not None and self._active.h2 is not None:
            self._active.reading_resumed(self.ctx.now)
            self._active.h2.resume()

    # --- llhttp callbacks ------------------------------------------------------------------------

    # No on_message_begin: the head state is reset when a head is complete (and is fresh on a new
    # connection), which saves a callback per request.

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.ctx.max_header_bytes:
            raise _Refused(431, "request head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.ctx.max_header_bytes:
            raise _Refused(431, "request head too large")
        size = len(name)
        if size == 4:
            if name.lower() == b"host":
                self._hosts += 1
        elif size == 17 and name.lower() == b"transfer-encoding":
            # Only a lone "chunked" is relayed: any other coding (or a second field) would be
            # re-framed as plain chunked and reach the primary as something the client did not send.
            if self._chunked or value.strip().lower() != b"chunked":
                self._bad_transfer_encoding = True
            self._chunked = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        ctx = self.ctx
        url = self._url
        headers = self._headers
        chunked = self._chunked
        hosts = self._hosts
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._chunked = False
        self._hosts = 0
        self._head_since = 0.0
        if self._lingering:
            raise _Refused(400, "no request is read after a response closed the connection")
        if self._bad_transfer_encoding:
            self._bad_transfer_encoding = False
            raise _Refused(501, "only Transfer-Encoding: chunked is supported")
        method = parser.get_method()
        upgrade = parser.should_upgrade()
        uri_authority: bytes | None = None
        if upgrade and method == b"CONNECT":
            if url.lower() not in ctx.connect_targets:
                raise _Refused(405, "CONNECT is not allowed to this target (forward.connect_targets)")
        elif url[:1] != b"/" and url != b"*":
            # absolute-form (http://host/path): the primary gets origin-form.
            scheme_end = url.find(b"://")
            if scheme_end <= 0:
                raise _Refused(400, "the request target must be a path, * or an absolute URL")
            path_start = url.find(b"/", scheme_end + 3)
            query_start = url.find(b"?", scheme_end + 3)
            authority_end = len(url)
            for stop in (path_start, query_start):
                if 0 < stop < authority_end:
                    authority_end = stop
            uri_authority = url[scheme_end + 3 : authority_end] or None
            if query_start > 0 and (path_start < 0 or query_start < path_start):
                url = b"/" + url[query_start:]  # http://host?q: the query is kept
            else:
                url = url[path_start:] if path_start > 0 else b"/"
        version = parser.get_http_version()
        if hosts != 1 and (hosts > 1 or version != "1.0"):
            raise _Refused(400, "an HTTP/1.1 request needs exactly one Host header")
        if upgrade:
            if chunked:
                raise _Refused(501, "an Upgrade request with a chunked body is not supported")
            self._upgrade_body_left = _content_length(headers)
        if ctx.rewriter.escapes_prefix(url):
            raise _Refused(400, "the request path climbs above the root")
        if uri_authority is not None:
            # RFC 9112 3.2.2: an absolute-form target's authority names the host, whatever Host said;
            # the primary (HTTP/1 or HTTP/2), the stages and the tape get the one the client addressed.
            if uri_authority.translate(None, _AUTHORITY_CHARS):
                raise _Refused(400, "the request target's authority is not a valid authority")
            headers = _with_host(headers, uri_authority)
        h2_request: _H2Request | None = None
        if not upgrade and ctx.h2_pool is not False and h2server.upstream_pool(ctx) is not None:
            # An HTTP/2 primary: what HTTP/2 cannot carry is refused now, like any malformed head.
            h2_request = _h2_request(ctx, method, url, headers, uri_authority, self.client_ip, self.scheme)
        started_ns = time.monotonic_ns()
        # Plain pass-through has no stage to hand an exchange to: none is built.
        ex = None
        if ctx.stages:
            ex = self._exchange(method, url, version, headers, started_ns, upgrade)
        forward = _Forward(
            self, ex, started_ns, method, url, headers, version == "1.0", parser.should_keep_alive(), chunked, upgrade
        )
        forward.h2_request = h2_request
        stats = ctx.stats
        stats.requests += 1
        stats.in_flight += 1
        self._parsing = forward
        pending = self._pending
        pending.append(forward)
        if len(pending) > ctx.max_pipelined:
            self.pause_reading(_PAUSE_PIPELINE)

    def _exchange(
        self,
        method: bytes,
        url: bytes,
        version: str,
        headers: list[Header],
        started_ns: int,
        upgrade: bool,
    ) -> ProxiedExchange:
        ctx = self.ctx
        host = b""
        for name, value in headers:
            if len(name) == 4 and name.lower() == b"host":
                host = value
        return ProxiedExchange(
            id=f"{ctx.id_prefix}-{next(ctx.ids):x}",
            connection_id=self.conn_id,
            client_addr=self.client_addr,
            started_at_ns=time.time_ns(),
            started_mono_ns=started_ns,
            method=method.decode("ascii", "replace"),
            target=url.decode("latin-1"),
            http_version=version,
            request_headers=tuple(headers),
            scheme=ctx.scheme,
            authority=host.decode("latin-1"),
            upgraded=upgrade,
        )

    def on_body(self, body: bytes) -> None:
        forward = self._parsing
        if forward is not None:
            forward.client_body(body)

    def on_message_complete(self) -> None:
        forward = self._parsing
        if self._upgrade_body_left:
            return  # llhttp skips an Upgrade offer's body: it comes through _hold
        self._parsing = None
        if self._headers:
            self._drop_trailers()
        if forward is not None:
            forward.client_body_done()
        if self.ctx.closing:
            self.pause_reading(_PAUSE_DRAIN)

    def _drop_trailers(self) -> None:
        """A chunked body's trailer section ended its request: llhttp hands trailer fields to
        ``on_header`` as it does a head's, and they must never become the next request's fields (a
        Host, Transfer-Encoding or any field smuggled into the request behind). Trailers are dropped
        (RFC 9110 6.5.1 allows it): an HTTP/1 primary gets the last chunk alone, an HTTP/2 one no
        trailers."""
        self._headers = []
        self._head_bytes = 0
        self._chunked = False
        self._hosts = 0
        self._bad_transfer_encoding = False

    # --- called by _Forward ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            transport.writelines(data)

    def pause_reading(self, reason: int) -> None:
        transport = self.transport
        if not self._pause_mask and transport is not None and not transport.is_closing():
            transport.pause_reading()
        self._pause_mask |= reason

    def resume_reading(self, reason: int) -> None:
        if not self._pause_mask & reason:
            return
        self._pause_mask &= ~reason
        transport = self.transport
        if not self._pause_mask and transport is not None and not transport.is_closing():
            # The body-read timeout counts the client's silence, not ours.
            self.last_read = self.ctx.now
            transport.resume_reading()

    def start_tunnel(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel
        self._pause_mask = 0
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def take_upgrade_rest(self) -> bytes:
        """The primary switched protocols: the bytes held behind the offer, for the tunnel."""
        rest = self._upgrade_rest or b""
        self._upgrade_rest = None
        self._upgrade_body_left = 0
        return rest

    def request_done(self, forward: _Forward, close: bool) -> None:
        ctx = self.ctx
        ctx.stats.in_flight -= 1
        if forward is not self._active:
            return  # a pending request cancelled with its connection
        self._active = None
        if self.closed:
            return
        if close:
            self._ending = True
            if self._parsing is forward and self._tunnel is None:
                self._start_linger()
            else:
                self.close()
            return
        rest = self._upgrade_rest
        if rest is not None:
            # The primary declined the Upgrade offer: plain HTTP/1.1 goes on, and what the client
            # sent behind the offer is read as its next request (as nginx does).
            self._upgrade_rest = None
            self.resume_reading(_PAUSE_BUFFER)
            if rest:
                self.data_received(rest)
                return
        self._pump()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    @property
    def idle(self) -> bool:
        return self._active is None and not self._pending and self._parsing is None and self._tunnel is None

    # --- internals -------------------------------------------------------------------------------

    def _hold(self, data: bytes) -> None:
        """Bytes behind an Upgrade offer: its own body (framed by its Content-Length) goes on to the
        exchange; the rest waits for the primary's answer, bounded (reading stops beyond it)."""
        left = self._upgrade_body_left
        if left:
            piece = data[:left]
            left -= len(piece)
            self._upgrade_body_left = left
            forward = self._parsing
            if forward is not None:
                forward.client_body(piece)
                if not left:
                    self._parsing = None
                    forward.client_body_done()
            data = data[len(piece) :]
        if not data:
            return
        held = (self._upgrade_rest or b"") + data
        self._upgrade_rest = held
        if len(held) > self.ctx.max_buffered:
            self.pause_reading(_PAUSE_BUFFER)

    def _make_room(self) -> bool:
        """At the connection cap: close a connection that has no exchange in progress (idle between
        requests, or still sending a head) so a new client gets in. False when every one is busy."""
        ctx = self.ctx
        for conn in ctx.connections:
            if conn._active is None and not conn._pending and conn._parsing is None and conn._tunnel is None:
                ctx.stats.connections_evicted += 1
                ctx.connections.discard(conn)
                conn.close()
                return True
        return False

    def _start_linger(self) -> None:
        """The response is out before the request body is in: keep reading (and dropping) the body,
        bounded in time and bytes, then close, so a client that sends its whole body before it reads
        gets the answer instead of a reset."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        ctx = self.ctx
        self._lingering = True
        self._linger_until = ctx.now + ctx.settings.lingering_time_s
        self._linger_bytes = 0
        self._upgrade_rest = None
        self._upgrade_body_left = 0
        if self._pause_mask:
            self._pause_mask = 0
            self.last_read = ctx.now
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()

    def _linger(self, data: bytes) -> None:
        self._linger_bytes += len(data)
        if self._linger_bytes > self.ctx.settings.lingering_max_bytes:
            self._client_timeout("linger")
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.close()
            return
        if self._parsing is None:
            self.close()  # the body has ended

    def _client_timeout(self, what: str) -> None:
        timeouts = self.ctx.stats.client_timeouts
        timeouts[what] = timeouts.get(what, 0) + 1
        self.close()

    def _pump(self) -> None:
        pending = self._pending
        while self._active is None and pending and not self.closed and not self._ending:
            item = pending.popleft()
            if self._pause_mask & _PAUSE_PIPELINE and len(pending) <= self.ctx.max_pipelined:
                self.resume_reading(_PAUSE_PIPELINE)
            if isinstance(item, _LocalReply):
                self.write(item.payload)
                self.close()
                return
            self._active = item
            item.start()
        if self._active is None and not pending:
            self.idle_since = self.ctx.loop.time()
            if (self.ctx.closing or self._eof) and self._parsing is None:
                self.close()

    def _reject(self, status: int, message: str) -> None:
        """Answer a bad request after those before it, then close (the stream cannot be trusted)."""
        errors = self.ctx.stats.client_errors
        errors[status] = errors.get(status, 0) + 1
        self.pause_reading(_PAUSE_DRAIN)
        partial = self._parsing
        if partial is not None:
            # The request whose head we accepted is broken mid-body: nothing sane can follow.
            self._parsing = None
            if self.transport is not None:
                self.transport.abort()
            return
        self._pending.append(_LocalReply(error_response(status, _REASONS[status], message, close=True)))

    def sweep(self, now: float) -> None:
        """Enforce deadlines: the client's (head, body, reading its answer, lingering), the active
        exchange's (first byte, primary silence, whole exchange) and the keep-alive idle limit."""
        settings = self.ctx.settings
        if self._lingering:
            if now >= self._linger_until or now - self.last_read >= settings.lingering_timeout_s:
                self._client_timeout("linger")
            return
        if self._tunnel is not None:
            return  # a tunnel's bytes are the two ends' business (either closing ends it)
        if self._head_since and now - self._head_since >= settings.client_header_timeout_s:
            self._head_since = 0.0
            if self._active is None and not self._pending and self._parsing is None:
                message = "shadowtap: request head timed out"
                self.write(error_response(408, "Request Timeout", message, close=True))
            self._client_timeout("head")
            return
        if self.write_paused and now - self._write_paused_since >= settings.send_timeout_s:
            self._client_timeout("send")
            if self.transport is not None:
                self.transport.abort()  # what is buffered for it would never be read
            return
        parsing = self._parsing
        if (
            parsing is not None
            and not self._pause_mask
            and not parsing.body_done
            and now - self.last_read >= settings.client_body_timeout_s
        ):
            self._parsing = None  # no lingering for a client that stopped sending
            parsing.client_timed_out(f"request body stalled for {settings.client_body_timeout_s:g} s")
            self._client_timeout("body")
            return
        active = self._active
        if active is not None:
            if now >= active.first_byte_deadline:
                active.timed_out("first byte", settings.first_byte_timeout_s)
            elif now >= active.deadline:
                active.timed_out("exchange", settings.total_timeout_s)
            elif active.read_stalled(now, settings.primary_read_timeout_s) and not self.write_paused:
                active.timed_out("read", settings.primary_read_timeout_s)
        elif self.idle and now - self.idle_since >= settings.keepalive_timeout_s:
            self.close()


class ProxyServer:
    """The data path: listens, forwards every request to the primary, and calls the stages."""

    def __init__(
        self,
        settings: ForwardSettings,
        stages: Sequence[Stage] = (),
        ssl_context: ssl.SSLContext | None = None,
        observers: Sequence[PrimaryObserver] = (),
        dial: Dialer | None = None,
    ) -> None:
        """``dial`` opens the primary connections (``shadowtap.wire.client.dial_tcp`` when not given)."""
        self.settings = settings
        self._dial = dial
        self._stages = tuple(stages)
        self._observers = tuple(observers)
        self._listen_ssl = ssl_context
        self._upstream_ssl = upstream_ssl_context(settings)
        self._ctx: _Context | None = None
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._stats = ServerStats()

    @property
    def stats(self) -> ServerStats:
        return self._ctx.stats if self._ctx is not None else self._stats

    @property
    def port(self) -> int:
        # uvloop's servers list their sockets where asyncio's typing says a tuple.
        server: Any = self._server
        sockets = None if server is None else server.sockets
        if not sockets:
            raise RuntimeError("the proxy is not listening")
        port: int = sockets[0].getsockname()[1]
        return port

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        reuse_port: bool = False,
        sock: socket.socket | None = None,
        backlog: int = 1024,
    ) -> None:
        """Listen on ``host:port`` (or an already bound ``sock``) and start serving."""
        if self._server is not None:
            raise RuntimeError("the proxy is already started")
        loop = asyncio.get_running_loop()
        settings = self.settings
        pool = Pool(
            settings.target.host,
            settings.target.port,
            ssl_context=self._upstream_ssl,
            connect_timeout_s=settings.connect_timeout_s,
            max_idle=settings.pool_max_idle,
            max_head_bytes=settings.max_header_bytes,
            peer="primary",
            dial=self._dial,
        )
        ctx = _Context(
            settings, self._stages, self._observers, pool, loop, "https" if self._listen_ssl is not None else "http"
        )
        self._ctx = ctx
        if sock is not None:
            self._server = await loop.create_server(
                lambda: _ClientConnection(ctx), sock=sock, ssl=self._listen_ssl, backlog=backlog
            )
        else:
            self._server = await loop.create_server(
                lambda: _ClientConnection(ctx),
                host,
                port,
                reuse_port=reuse_port or None,
                ssl=self._listen_ssl,
                backlog=backlog,
            )
        self._sweeper = loop.call_later(_SWEEP_PERIOD_S, self._sweep)

    def _sweep(self) -> None:
        ctx = self._ctx
        if ctx is None:
            return
        now = ctx.now = ctx.loop.time()
        for conn in list(ctx.connections):
            conn.sweep(now)
        if ctx.h2_sessions:
            for session in list(ctx.h2_sessions):
                session.sweep(now)
        self._sweeper = ctx.loop.call_later(_SWEEP_PERIOD_S, self._sweep)

    async def shutdown(self, timeout_s: float) -> None:
        """Stop accepting, let in-flight exchanges finish up to ``timeout_s``, then close everything."""
        ctx = self._ctx
        server = self._server
        if ctx is None or server is None or ctx.closing:
            return
        ctx.closing = True
        server.close()
        loop = ctx.loop
        deadline = loop.time() + timeout_s
        for conn in list(ctx.connections):
            if conn.idle:
                conn.close()
        for session in list(ctx.h2_sessions):
            session.go_away()
        while (ctx.connections or ctx.h2_sessions) and loop.time() < deadline:
            await asyncio.sleep(min(_SWEEP_PERIOD_S, max(0.0, deadline - loop.time())))
        for conn in list(ctx.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for session in list(ctx.h2_sessions):
            session.abort()
        if ctx.h2_pool:
            ctx.h2_pool.abort_all()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        ctx.pool.abort_all()
        await server.wait_closed()
        # Let the aborted transports run connection_lost (stages hear about the cancelled exchanges).
        await asyncio.sleep(0)
