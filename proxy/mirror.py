"""The mirror stage: decides per shadow whether a request is mirrored, and sends the copies.

``request_complete`` runs on the data path and only decides and enqueues: kill switch and flags,
route rule, method, body size, sampling (consistent by key when configured), rate cap, queue space,
breaker. It writes the decision into ``exchange.decisions[shadow]`` and counts it. Each shadow
sends at most ``concurrency`` copies at a time (the rest wait in a bounded queue) over a keep-alive
pool of the same llhttp-based upstream connections the data path uses for the primary
(``shadowtap.wire.client``), driven by callbacks rather than a task per copy (a fraction of aiohttp's
client cost), with its own timeouts (checked by one sweep per shadow, not a timer per copy), a
response-size cap and a circuit breaker; each outcome (``Response`` or ``Failure``) goes to the
``on_outcome`` listener (the record stage) with the copy's request delta.

A copy is the request the primary got, as far as the shadow may see it: the same forwarding fields
(``X-Forwarded-*``, ``Via``: the primary's rewriter computes them once per request, from the first
copy's loop turn, for all the shadows), minus hop-by-hop fields and credentials, plus the shadow's
own credentials, the marker and the correlation id, with the shadow's Host. What a copy got that the
primary did not, or lost, is its request delta (``shadowtap.recorder.model.RequestDelta``, in wire form), which
the tape keeps so that the differ can tell an answer that echoes it from a regression.

HTTP/2 requests (``ProxiedExchange.http_version`` "2", from ``shadowtap.proxy.h2server``) are offered
once the client's request stream has ended, the whole stream buffered up to the capture limit (a
longer one is not mirrored: ``body-too-large``); gRPC calls only where a route opts them in
(``shadowtap.proxy.rules``), and only when their request stream ended within the shadow's
``total_timeout_s`` (else ``timeout``). A shadow whose URL is ``h2c://``, or ``https://`` with
``http2`` (TLS, ALPN ``h2``), is spoken to over HTTP/2 (``shadowtap.wire.h2.H2Pool``, ``_H2Copy``):
the copy is a stream with the same fields, minus the same ones as over HTTP/1, its body and request
trailers, and its answer comes back with trailers and, for gRPC, its messages' framing and timing.
Any other shadow gets an HTTP/2 request as HTTP/1.1 (a gRPC shadow needs HTTP/2).

This module must never delay, fail or alter the primary exchange: nothing here awaits on the data
path, raises into it, or touches the objects the client's response is built from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

from shadowtap.proxy.breaker import CircuitBreaker
from shadowtap.proxy.config import MirrorSettings, ShadowSettings
from shadowtap.proxy.flags import RuntimeFlags
from shadowtap.proxy.forward import ForwardSettings, PrimaryTarget, parse_primary
from shadowtap.proxy.metrics import ProxyMetrics
from shadowtap.proxy.rewrite import Forwarding, RequestRewriter, no_forwarding
from shadowtap.proxy.rules import RouteTable
from shadowtap.proxy.sampling import TokenBucket, in_sample, key_in_sample
from shadowtap.proxy.stages import ProxiedExchange
from shadowtap.recorder.errors import ConfigError, ShadowtapError
from shadowtap.recorder.model import (
    UNRECORDED,
    Failure,
    FailureKind,
    Header,
    Headers,
    Outcome,
    Response,
    StreamMessage,
    Timing,
    new_response,
    new_timing,
)
from shadowtap.recorder.redact import RULE_KINDS, RedactionRules, Redactor, resolve_redaction_key
from shadowtap.wire import http1
from shadowtap.wire.client import Dialer, Http1Connection, PipelinedConnection, Pool
from shadowtap.wire.grpc import GrpcFramingError, MessageSplitter
from shadowtap.wire.h2 import H2Pool, H2Stream
from shadowtap.wire.http1 import add_field, add_fields, add_value, end_head, field_line, field_prefix, request_line

__all__ = [
    "CORRELATION_HEADER",
    "MARKER_HEADER",
    "MIRRORED",
    "MirrorStage",
    "OutcomeListener",
    "ShadowMirror",
    "client_ip",
    "copy_host",
    "mirror_request_head",
    "shadow_ssl_context",
]

log = logging.getLogger(__name__)

MIRRORED: Final = "mirrored"
MARKER_HEADER: Final = "X-Shadowtap-Shadow"
CORRELATION_HEADER: Final = "X-Shadowtap-Correlation-Id"
#: Hop-by-hop, framing and routing fields, set for the shadow here, and Expect (``http1.REGENERATED``).
_NOT_FORWARDED: Final = http1.REGENERATED
#: The rules of a shadow whose copies keep their secrets (``redact_secrets: false``).
_NO_RULES: Final = RedactionRules(extend_defaults=False)
#: The rule kinds a copy's target or body may need rewriting for (headers are dropped in the head).
_VALUE_KINDS: Final = tuple(kind for kind in RULE_KINDS if kind != "headers")
#: The timing of a copy that was never sent (shared: Timing is frozen).
_NO_TIMING: Final = Timing()
_MARKER: Final = (MARKER_HEADER.encode(), b"1")
#: The fields every copy's head gets, serialised once by the wire layer.
_MARKER_LINE: Final = field_line(*_MARKER)
_CORRELATION_FIELD: Final = field_prefix(CORRELATION_HEADER.encode())
_HOST: Final = field_prefix(b"Host")
_CONTENT_LENGTH: Final = field_prefix(b"Content-Length")
_CORRELATION: Final = CORRELATION_HEADER.encode()
#: Fields a copy is sent without that are no change of the request: the primary is sent without
#: them too (hop-by-hop), or they are framing, or the Host rule (the delta's ``authority``).
_NOT_A_CHANGE: Final = _NOT_FORWARDED - {b"expect"}
#: The fields the data path may add to the primary's request (``RequestRewriter.forwarding``).
_FORWARDED_NAMES: Final = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via"})
#: A delta's query when the copy's target is the request's (a tuple: shared, never changed).
_NO_QUERY: Final = ()
#: A secret a delta does not record (a shadow's own credential): it stands for "some value".
_UNRECORDED: Final = UNRECORDED.encode()
#: The marker and correlation field names as HTTP/2 sends them (lower case).
_H2_MARKER: Final = (MARKER_HEADER.lower().encode(), b"1")
_H2_CORRELATION: Final = CORRELATION_HEADER.lower().encode()
#: HTTP/2 copies may carry ``te: trailers`` (gRPC requires it), and no content-length is needed.
_TE: Final = b"te"
#: HTTP/2 streams to one shadow share this many connections at most.
_H2_SHADOW_CONNECTIONS: Final = 2

#: Queued copies ended without sending (stale, breaker open, kill switch) per loop turn. A
#: black-holed shadow can leave a full queue (1,000 by default) to be dropped at once; each drop
#: also joins a record, so ending them all in one turn stalls the primary path for tens of ms. The
#: rest are ended on the next turns, with primary I/O between.
_MAX_DROPS_PER_TURN: Final = 32
#: How often a shadow's in-flight copies are checked against their deadlines, at most.
_SWEEP_PERIOD_S: Final = 0.05

#: (the exchange, shadow name, outcome, timing relative to the exchange start, the copy's request
#: delta in wire form or None when no copy was sent): the exchange, not its id, so the listener can
#: tell whether its primary has ended yet (``stages.NOT_TIMED``).
OutcomeListener = Callable[[ProxiedExchange, str, Outcome, Timing, list[Any] | None], None]


class _Offer:
    """One request offered to the shadows, queued by each that took it: what all its copies share
    (the forwarding fields) is computed once, by the first copy that starts."""

    __slots__ = ("exchange", "forwarding", "offered_s")

    def __init__(self, exchange: ProxiedExchange, offered_s: float) -> None:
        self.exchange = exchange
        self.offered_s = offered_s
        self.forwarding: Forwarding | None = None


def client_ip(client_addr: str) -> bytes:
    """The client address as the data path writes it into X-Forwarded-For, from ``host:port`` or
    ``[v6]:port`` (``ProxiedExchange.client_addr``)."""
    if client_addr.startswith("["):
        return client_addr[1 : client_addr.find("]")].encode("ascii", "replace")
    return client_addr.rpartition(":")[0].encode("ascii", "replace")


def _connection_listed(headers: Headers) -> frozenset[bytes]:
    listed: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            listed.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return frozenset(listed)


def _copy_fields(
    parts: list[bytes],
    headers: Headers,
    drop: frozenset[bytes],
    removable: frozenset[bytes],
    removed: list[bytes] | None,
) -> tuple[bool, bool]:
    """Append the fields not in ``drop`` to ``parts``; return whether a length field (Content-Length,
    Transfer-Encoding) and whether a Connection field were dropped. ``drop`` holds both. Dropped
    fields named in ``removable`` go to ``removed``."""
    had_length = saw_connection = False
    for name, value in headers:
        lower = name.lower()
        if lower in drop:
            if lower == b"connection":
                saw_connection = True
            elif lower == b"content-length" or lower == b"transfer-encoding":
                had_length = True
            elif removed is not None and lower in removable:
                removed.append(name)
            continue
        add_field(parts, name, value)
    return had_length, saw_connection


def copy_host(shadow: ShadowSettings, upstream: PrimaryTarget, authority: str) -> bytes:
    """The Host a shadow's copy is sent with: ``host`` when set, the client's with ``preserve_host``,
    else the shadow URL's authority."""
    if shadow.host is not None:
        return shadow.host.encode("latin-1")
    if shadow.preserve_host and authority:
        return authority.encode("latin-1")
    return upstream.authority


def mirror_request_head(
    method: str,
    target: str,
    headers: Headers,
    body_size: int,
    shadow: ShadowSettings,
    upstream: PrimaryTarget,
    drop: frozenset[bytes],
    credentials: Sequence[tuple[bytes, bytes]],
    exchange_id: str,
    authority: str,
    forwarding: Forwarding | None = None,
    removable: frozenset[bytes] = frozenset(),
    removed: list[bytes] | None = None,
    drops_forwarded: bool = False,
) -> bytes:
    """The request head a shadow gets: same method, target and headers (order, case, repeats) and the
    same forwarding fields as the primary's (``RequestRewriter.forwarding`` of ``headers``; None:
    none), minus hop-by-hop fields and credentials, plus shadow credentials, the marker and the
    correlation id. The names of the dropped fields in ``removable`` (what the primary got and the
    copy did not) go to ``removed``. ``drops_forwarded``: ``drop`` names a forwarding field."""
    path = target.encode("latin-1")
    parts = request_line(method.encode("ascii"), upstream.path_prefix + path if upstream.path_prefix else path)
    add_value(parts, _HOST, copy_host(shadow, upstream, authority))
    start = len(parts)
    if forwarding is not None:
        headers = forwarding[0]
    had_length, saw_connection = _copy_fields(parts, headers, drop, removable, removed)
    if saw_connection:
        # Rare: the names a Connection field lists are hop-by-hop too (RFC 9110 section 7.6.1).
        del parts[start:]
        if removed is not None:
            del removed[:]
        listed = _connection_listed(headers)
        had_length, _ = _copy_fields(parts, headers, drop | listed, removable - listed, removed)
    if forwarding is not None:
        if not drops_forwarded:
            parts.append(forwarding[2])
        else:
            for name, value in forwarding[1]:
                if name.lower() in drop:
                    # A shadow told to strip a forwarding field (``strip_headers``) goes without it.
                    if removed is not None:
                        removed.append(name)
                    continue
                add_field(parts, name, value)
    add_fields(parts, credentials)
    parts.append(_MARKER_LINE)
    add_value(parts, _CORRELATION_FIELD, exchange_id.encode("ascii"))
    if body_size or had_length:
        add_value(parts, _CONTENT_LENGTH, str(body_size).encode("ascii"))
    return end_head(parts)


class _Copy:
    """One copy in flight: the ``ResponseSink`` of its upstream connection, and its deadline.

    Callback-driven (no task per copy): the connection calls ``on_head`` / ``on_body`` /
    ``on_complete`` / ``on_failure`` as bytes arrive, the shadow's sweep enforces the deadline, and the shadow
    is told once through ``ShadowMirror.copy_done``.
    """

    __slots__ = (
        "body", "chunks", "conn", "connecting", "deadline", "delta", "exchange", "first_byte_ns", "head",
        "headers", "mirror", "reason", "retried", "reused", "sent_ns", "size", "status",
    )  # fmt: skip

    def __init__(
        self, mirror: ShadowMirror, exchange: ProxiedExchange, head: bytes, body: bytes, sent_ns: int, delta: list[Any]
    ) -> None:
        self.mirror = mirror
        #: The exchange copied: its request fields never change once it is offered to the mirror.
        self.exchange = exchange
        self.head = head
        #: What this copy's request has that the primary's had not, or lacks (wire form).
        self.delta = delta
        #: The body sent: the request's, with the fields the redaction rules name rewritten.
        self.body = body
        self.sent_ns = sent_ns
        self.conn: Http1Connection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.reused = False
        self.retried = False
        self.deadline = 0.0
        self.chunks: list[bytes] = []
        self.size = 0
        self.status = 0
        self.reason = b""
        self.headers: list[Header] = []
        self.first_byte_ns: int | None = None

    def send(self, conn: Http1Connection) -> None:
        """Attach to ``conn`` and send: behind the copies already on it when it pipelines (the bytes
        leave with theirs at ``flush_writes``), else at once."""
        self.conn = conn
        self.chunks.clear()
        self.size = 0
        body = self.body
        data = [self.head, body] if body else [self.head]
        head_only = self.exchange.method == "HEAD"
        if not head_only and isinstance(conn, PipelinedConnection):
            conn.pipeline(self, data)
            return
        conn.begin(self, head_only)
        conn.writelines(data)

    # --- ResponseSink ------------------------------------------------------------------------------

    def on_interim(self, status: int, reason: bytes, headers: list[Header]) -> None:
        return None

    def on_head(self, status: int, reason: bytes, headers: list[Header]) -> None:
        self.first_byte_ns = time.monotonic_ns()
        self.status, self.reason, self.headers = status, reason, headers

    def on_body(self, data: bytes) -> None:
        room = self.mirror.settings.max_response_bytes - self.size
        if room > 0:
            self.chunks.append(data if len(data) <= room else data[:room])
        self.size += len(data)

    def on_complete(self, reusable: bool) -> None:
        conn = self.conn
        self.conn = None
        if conn is not None:
            self.mirror.release(conn, reusable)
        cap = self.mirror.settings.max_response_bytes
        response = new_response(
            self.status,
            self.reason.decode("latin-1"),
            tuple(self.headers),
            b"".join(self.chunks),
            "1.1",
            self.size if self.size > cap else None,
        )
        self.mirror.copy_done(self, response)

    def on_upgraded(self, rest: bytes) -> None:
        self.on_failure(FailureKind.BAD_RESPONSE, "shadow switched protocols")

    def on_failure(self, kind: str, message: str) -> None:
        conn = self.conn
        self.conn = None
        if (
            kind == FailureKind.RESET
            and self.reused
            and not self.retried
            and conn is not None
            and not conn.received_any
        ):
            # A pooled connection the shadow closed while idle: resend once on a fresh one.
            self.retried = True
            self.reused = False
            self.mirror.connect_for(self)
            return
        self.mirror.copy_done(self, Failure(kind, message.replace("primary", "shadow")))

    def flush(self) -> None:
        return None

    def upstream_write_paused(self, paused: bool) -> None:
        # A copy's body is at most max_body_bytes and already in memory; the transport buffers it.
        return None

    def abandon(self) -> None:
        """Deadline passed or shutting down: drop the connection (it cannot be reused) and the dial."""
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.detach()


class _H2Copy:
    """One copy in flight to an HTTP/2 shadow (``h2c://``, or https with ``http2``): a stream's
    ``StreamSink``. Same life as a ``_Copy``: the sweep enforces its deadline, and
    ``ShadowMirror.h2_copy_done`` hears it once."""

    __slots__ = (
        "body", "chunks", "connecting", "deadline", "delta", "exchange", "first_byte_ns", "headers", "messages",
        "mirror", "request_headers", "request_trailers", "response_trailers", "sent_ns", "size", "splitter",
        "status", "stream",
    )  # fmt: skip

    def __init__(
        self,
        mirror: ShadowMirror,
        exchange: ProxiedExchange,
        request_headers: list[Header],
        body: bytes,
        sent_ns: int,
        delta: list[Any],
    ) -> None:
        self.mirror = mirror
        self.exchange = exchange
        self.request_headers = request_headers
        self.body = body
        self.request_trailers: list[Header] | None = list(exchange.request_trailers) or None
        self.sent_ns = sent_ns
        self.delta = delta
        self.stream: H2Stream | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.deadline = 0.0
        self.first_byte_ns: int | None = None
        self.status = 0
        self.headers: tuple[Header, ...] = ()
        self.chunks: list[bytes] = []
        self.size = 0
        self.splitter: MessageSplitter | None = None
        self.messages: list[StreamMessage] = []
        self.response_trailers: tuple[Header, ...] = ()

    @property
    def ends_at_open(self) -> bool:
        """Whether the request is its head alone (the HEADERS frame ends the stream)."""
        return not self.body and self.request_trailers is None

    def attach(self, stream: H2Stream) -> None:
        """The stream is open (its head sent): send the body and end the request."""
        self.stream = stream
        if self.ends_at_open:
            return
        if self.body:
            stream.send_data(self.body)
        stream.end(self.request_trailers)

    # --- StreamSink --------------------------------------------------------------------------------------

    def on_head(self, status: int, headers: list[Header], ended: bool) -> None:
        self.first_byte_ns = time.monotonic_ns()
        self.status = status
        self.headers = tuple(headers)
        for name, value in headers:
            if name == b"content-type" and value.startswith(b"application/grpc"):
                self.splitter = MessageSplitter()

    def on_data(self, data: bytes) -> None:
        size = len(data)
        room = self.mirror.settings.max_response_bytes - self.size
        if room > 0:
            self.chunks.append(data if size <= room else data[:room])
        self.size += size
        splitter = self.splitter
        if splitter is not None:
            try:
                done = splitter.feed(data)
            except GrpcFramingError:
                self.splitter = None  # not gRPC framing: the body stays, its message list stops
                done = []
            if done:
                at_ns = time.monotonic_ns() - self.exchange.started_mono_ns
                for message in done:
                    self.messages.append(StreamMessage(int(message.compressed), len(message.data), at_ns))
        stream = self.stream
        if stream is not None:
            stream.consumed(size)  # kept (up to the cap) or dropped here: the shadow may send more

    def on_trailers(self, headers: list[Header]) -> None:
        self.response_trailers = tuple(headers)

    def on_end(self) -> None:
        self.stream = None
        cap = self.mirror.settings.max_response_bytes
        response = Response(
            self.status, "", self.headers, b"".join(self.chunks), "2", self.size if self.size > cap else None,
            self.response_trailers, tuple(self.messages),
        )  # fmt: skip
        self.mirror.h2_copy_done(self, response)

    def on_reset(self, kind: str, message: str, refused: bool) -> None:
        self.stream = None
        self.mirror.h2_copy_done(self, Failure(kind, message.replace("primary", "shadow")))

    def on_request_drained(self, sent: int) -> None:
        return None

    def abandon(self) -> None:
        """Deadline passed or shutting down: reset the stream, cancel the opening."""
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        stream = self.stream
        self.stream = None
        if stream is not None:
            stream.reset()


def shadow_ssl_context(settings: ShadowSettings) -> ssl.SSLContext:
    """The client TLS context for an https shadow: verification on unless ``tls_verify`` is false.

    Reads ``ca_file`` (blocking: call it off the event loop); a bad file is a ``ConfigError``.
    """
    try:
        context = ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA file: {exc}", field=f"shadows.{settings.name}.ca_file") from exc
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class ShadowMirror:
    """One shadow's bounded queue, copies in flight (at most ``concurrency``), pool, breaker, rate cap."""

    def __init__(
        self,
        settings: ShadowSettings,
        flags: RuntimeFlags,
        metrics: ProxyMetrics,
        on_outcome: OutcomeListener | None,
        redaction: RedactionRules | None = None,
        rewriter: RequestRewriter | None = None,
        dial: Dialer | None = None,
    ) -> None:
        self.settings = settings
        #: Opens the shadow's connections (``shadowtap.wire.client.dial_tcp`` when None).
        self._dial = dial
        self._flags = flags
        #: The primary's rewriter: for the forwarding fields and the Host the primary got.
        self._rewriter = rewriter
        self.index = flags.shadow_index[settings.name]
        self._metrics = metrics
        self._on_outcome = on_outcome
        self._credentials = settings.credential_values()
        # The tape's rules strip the shadow's copies too (its defaults when none are given), unless
        # this shadow keeps secrets; its own credentials are swapped in either way.
        if not settings.redact_secrets:
            self._rules = _NO_RULES
        else:
            self._rules = redaction if redaction is not None else RedactionRules()
        self._swaps = settings.field_credentials()
        self._drop = (
            _NOT_FORWARDED
            | {h.encode("latin-1") for h in settings.strip_headers}
            | {name.encode("latin-1") for name in self._rules.names("headers")}
            | {name.lower() for name, _ in self._credentials}
        )
        #: Dropped fields that are a change of the request (the primary got them): its delta's removed.
        self._removable = self._drop - _NOT_A_CHANGE
        self._drops_forwarded = not self._drop.isdisjoint(_FORWARDED_NAMES)
        #: Shadow credential header names: replacing the client's when it sent one, else added.
        self._credential_names = frozenset(name.lower() for name, _ in self._credentials)
        self._added_credentials = tuple((name, _UNRECORDED) for name, _ in self._credentials)
        #: Rewrites the query parameters and body fields the rules name (None: nothing to rewrite).
        self._redactor: Redactor | None = None
        self._target = parse_primary(settings.url, field=f"shadows.{settings.name}.url")
        #: The Host every copy gets (None: the client's, ``preserve_host``), as text for the delta.
        self._target_authority = self._target.authority.decode("latin-1")
        self._fixed_host: str | None = (
            settings.host if settings.host is not None else None if settings.preserve_host else self._target_authority
        )
        self.breaker = CircuitBreaker(settings.breaker)
        self._bucket: TokenBucket | None = None
        # Offers, each with when it was queued. Bounded by settings.queue_size (checked in offer):
        # the memory a stuck shadow can pin is queue_size exchanges (request bodies of at most
        # max_body_bytes; response copies only when the record stage holds them anyway); beyond it
        # drops are counted, never waited for.
        self._waiting: deque[_Offer] = deque()
        self._active: set[_Copy | _H2Copy] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pool: Pool | None = None
        #: The HTTP/2 pool of an ``h2c://`` shadow, or an https one with ``http2`` (then ``_pool``
        #: stays None).
        self._h2_pool: H2Pool | None = None
        self._h2 = self._target.scheme == "h2c" or (self._target.tls and settings.http2)
        #: HTTP/2 copies drop what HTTP/1 copies drop but ``te`` (``te: trailers`` is kept).
        self._h2_drop = self._drop - {_TE}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pump_scheduled = False
        self._stopped = False
        # Deadlines are at least total_timeout_s away, so checking a tenth of that (at most every
        # 50 ms) keeps a copy's overrun small against its timeout.
        self._sweep_period_s = min(_SWEEP_PERIOD_S, self.settings.total_timeout_s / 10)
        self._sweeper: asyncio.TimerHandle | None = None
        # The connection this loop turn's copies are being pipelined onto, and every connection
        # given bytes this turn (written once each at the end of the turn).
        self._filling: PipelinedConnection | None = None
        self._unflushed: list[PipelinedConnection] = []

    @property
    def in_flight(self) -> int:
        return len(self._active)

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        if self.settings.rate_per_s is not None:
            burst = self.settings.burst if self.settings.burst is not None else max(1.0, self.settings.rate_per_s)
            self._bucket = TokenBucket(self.settings.rate_per_s, burst, loop.time())
        ssl_context = await asyncio.to_thread(shadow_ssl_context, self.settings) if self._target.tls else None
        self._redactor = await self._make_redactor()
        if self._h2:
            # Over TLS the context is the pool's own: it offers ``h2`` alone by ALPN.
            self._h2_pool = H2Pool(
                self._target.host,
                self._target.port,
                ssl_context=ssl_context,
                connect_timeout_s=self.settings.connect_timeout_s,
                max_connections=_H2_SHADOW_CONNECTIONS,
                peer="shadow",
            )
            self._sweeper = loop.call_later(self._sweep_period_s, self._sweep)
            return
        # Keep as many idle connections as copies may be in flight: the concurrency cap is also the
        # connection cap.
        self._pool = Pool(
            self._target.host,
            self._target.port,
            ssl_context=ssl_context,
            connect_timeout_s=self.settings.connect_timeout_s,
            max_idle=self.settings.concurrency,
            pipelined=self.settings.pipeline_depth > 1,
            peer="shadow",
            dial=self._dial,
        )
        self._sweeper = loop.call_later(self._sweep_period_s, self._sweep)

    async def _make_redactor(self) -> Redactor | None:
        rules = self._rules
        hashes = any(action == "hash" for kind in _VALUE_KINDS for _, action in getattr(rules, kind))
        key = b""
        if hashes:
            try:
                # The tape's key: a value a shadow echoes back then matches the tape's hash of it.
                key = await asyncio.to_thread(resolve_redaction_key, rules)
            except ShadowtapError as exc:
                log.warning(
                    "shadow %s: %s; hashing its copies' secrets under a key of this process", self.settings.name, exc
                )
                key = secrets.token_hex(32).encode()
        redactor = Redactor(rules, key, self._swaps)
        return redactor if redactor.rewrites_targets or redactor.rewrites_bodies else None

    def offer(self, offer: _Offer) -> str:
        """Send or queue a copy of the offer's exchange if rate cap, queue and breaker allow; return the
        decision. ``offer`` is shared by every shadow the request is offered to."""
        now_s = offer.offered_s
        if self._stopped or (self._pool is None and self._h2_pool is None):
            return FailureKind.DISABLED
        if self._bucket is not None and not self._bucket.try_take(now_s):
            return FailureKind.RATE_LIMITED
        free_slots = self.settings.concurrency - len(self._active)
        if len(self._waiting) >= self.settings.queue_size + max(free_slots, 0):
            return FailureKind.QUEUE_FULL
        if not self.breaker.allow(now_s):
            return FailureKind.BREAKER_OPEN
        self._waiting.append(offer)
        self._idle.clear()
        if free_slots > 0 and not self._pump_scheduled:
            # Sent from the next loop turn: the data path's own write goes first, and this call
            # returns at once.
            self._pump_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._pump)
        return MIRRORED

    def _start(self, offer: _Offer, now_s: float) -> None:
        exchange = offer.exchange
        forwarding = offer.forwarding
        if forwarding is None:
            # Once per request, for every shadow: the first copy to start computes it.
            rewriter = self._rewriter
            forwarding = offer.forwarding = (
                no_forwarding(exchange.request_headers)
                if rewriter is None
                else rewriter.forwarding(
                    exchange.request_headers, client_ip(exchange.client_addr), exchange.scheme.encode("ascii")
                )
            )
        body = exchange.request_body
        if body is None:  # never offered: request_complete refuses a body it did not capture
            body = b""
        target = exchange.target
        redactor = self._redactor
        if redactor is not None:
            # Off the primary path (a later loop turn), and cheap unless a rule can match: bodies are
            # parsed only when JSON or form rules exist, the type says so and a rule name appears.
            if body:
                body = redactor.redact_request_body(body, exchange.request_headers)
            if "?" in target:
                target = redactor.redact_target(target)
        if self._h2_pool is not None:
            self._start_h2(exchange, target, body, forwarding, now_s)
            return
        assert self._pool is not None
        removed: list[bytes] = []
        head = mirror_request_head(
            exchange.method,
            target,
            exchange.request_headers,
            len(body),
            self.settings,
            self._target,
            self._drop,
            self._credentials,
            exchange.id,
            exchange.authority,
            forwarding,
            self._removable,
            removed,
            self._drops_forwarded,
        )
        copy = _Copy(self, exchange, head, body, time.monotonic_ns(), self._delta(exchange, removed, target))
        self._active.add(copy)
        copy.deadline = now_s + self.settings.total_timeout_s
        head_only = exchange.method == "HEAD"
        conn: Http1Connection | None = None if head_only or not self._filling_has_room() else self._filling
        if conn is None:
            conn = self._pool.try_acquire()
            if conn is None:
                self.connect_for(copy)
                return
            if isinstance(conn, PipelinedConnection) and not head_only:
                # Later copies of this turn queue behind this one (a HEAD copy goes alone).
                self._filling = conn
                self._unflushed.append(conn)
        copy.reused = True
        copy.send(conn)

    def _start_h2(
        self, exchange: ProxiedExchange, target: str, body: bytes, forwarding: Forwarding, now_s: float
    ) -> None:
        """Send a copy as a stream to an HTTP/2 shadow."""
        pool = self._h2_pool
        assert pool is not None and self._loop is not None
        removed: list[bytes] = []
        headers = self._h2_headers(exchange, target, forwarding, removed)
        copy = _H2Copy(self, exchange, headers, body, time.monotonic_ns(), self._delta(exchange, removed, target))
        self._active.add(copy)
        copy.deadline = now_s + self.settings.total_timeout_s
        stream = pool.try_open(headers, copy, copy.ends_at_open)
        if stream is not None:
            copy.attach(stream)
        else:
            copy.connecting = self._loop.create_task(self._open_h2(copy), name=f"mirror-open-{self.settings.name}")

    def _h2_headers(
        self, exchange: ProxiedExchange, target: str, forwarding: Forwarding, removed: list[bytes]
    ) -> list[Header]:
        """An HTTP/2 copy's fields: the pseudo-headers (the shadow's authority rule, its path prefix),
        the request's fields and forwarding fields minus the dropped ones (as ``mirror_request_head``
        drops them, ``te: trailers`` kept), the shadow's credentials, the marker, the correlation id."""
        upstream = self._target
        path = target.encode("latin-1")
        out: list[Header] = [
            (b":method", exchange.method.encode("ascii")),
            (b":scheme", b"https" if upstream.tls else b"http"),
            (b":authority", copy_host(self.settings, upstream, exchange.authority)),
            (b":path", upstream.path_prefix + path if upstream.path_prefix else path),
        ]
        drop = self._h2_drop
        removable = self._removable
        for name, value in forwarding[0]:
            lower = name.lower()
            if lower in drop or (lower == _TE and value.strip().lower() != b"trailers"):
                if lower in removable:
                    removed.append(name)
                continue
            out.append((lower, value))
        for name, value in forwarding[1]:
            lower = name.lower()
            if lower in drop:
                removed.append(name)
                continue
            out.append((lower, value))
        for name, value in self._credentials:
            out.append((name.lower(), value))
        out.append(_H2_MARKER)
        out.append((_H2_CORRELATION, exchange.id.encode("ascii")))
        return out

    async def _open_h2(self, copy: _H2Copy) -> None:
        pool = self._h2_pool
        assert pool is not None
        try:
            stream = await pool.open(copy.request_headers, copy, copy.ends_at_open)
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            copy.connecting = None
            self.h2_copy_done(copy, Failure(FailureKind.CONNECT_ERROR, f"cannot connect to shadow: {exc}"))
            return
        copy.connecting = None
        if copy not in self._active:  # timed out or stopped while opening
            stream.reset()
            return
        copy.attach(stream)

    def _delta(self, exchange: ProxiedExchange, removed: list[bytes], target: str) -> list[Any]:
        """The copy's request delta in wire form (``shadowtap.recorder.model.delta_to_wire``): ``removed`` as
        the head left them out, a client credential the shadow's own replaced, the marker and the
        correlation id, the Host each got, and the query parameters rewritten."""
        names: list[bytes] = removed
        replaced: list[tuple[bytes, bytes]] = []
        added: list[tuple[bytes, bytes]] = []
        credentials = self._credential_names
        if len(removed) > 1 or credentials:
            # Rare: repeated fields, or a shadow with credentials of its own to account for.
            names, seen = [], set()
            for name in removed:
                lower = name.lower()
                if lower in seen:
                    continue
                seen.add(lower)
                if lower in credentials:
                    replaced.append((name, _UNRECORDED))
                else:
                    names.append(name)
            added = [(name, value) for name, value in self._added_credentials if name.lower() not in seen]
        added += (_MARKER, (_CORRELATION, exchange.id.encode("ascii")))
        authority = exchange.authority
        host = self._fixed_host
        if host is None:  # preserve_host: the client's, when it sent one
            host = authority or self._target_authority
        primary_host = authority
        if self._rewriter is not None:
            primary_host = self._rewriter.host_sent(authority.encode("latin-1") if authority else None).decode(
                "latin-1"
            )
        hosts = None if host == primary_host else [primary_host, host]
        query = _NO_QUERY if target == exchange.target else _query_delta(exchange.target, target)
        return [names, added, replaced, hosts, query]

    def _filling_has_room(self) -> bool:
        filling = self._filling
        return filling is not None and filling.can_pipeline(self.settings.pipeline_depth)

    def _flush_writes(self) -> None:
        """End of a pump turn: each connection that got copies writes them all at once."""
        self._filling = None
        unflushed = self._unflushed
        if unflushed:
            self._unflushed = []
            for conn in unflushed:
                conn.flush_writes()

    def connect_for(self, copy: _Copy) -> None:
        """Dial a fresh connection for ``copy`` in a task (kept on the copy, cancelled with it)."""
        assert self._loop is not None
        copy.connecting = self._loop.create_task(self._connect(copy), name=f"mirror-connect-{self.settings.name}")

    async def _connect(self, copy: _Copy) -> None:
        assert self._pool is not None
        try:
            conn = await self._pool.connect()
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            copy.connecting = None
            self.copy_done(copy, Failure(FailureKind.CONNECT_ERROR, f"cannot connect to shadow: {exc}"))
            return
        copy.connecting = None
        if copy not in self._active:  # timed out or stopped while dialling
            conn.close()
            return
        if conn.closed:
            # Lost between the dial and this task's turn (the shadow accepted, then hung up): the
            # copy would wait out its timeout on a connection nobody answers.
            self.copy_done(copy, Failure(FailureKind.RESET, "shadow closed the connection before the copy was sent"))
            return
        copy.send(conn)
        if isinstance(conn, PipelinedConnection):
            conn.flush_writes()

    def release(self, conn: Http1Connection, reusable: bool) -> None:
        if reusable and self._pool is not None:
            self._pool.release(conn)
        else:
            conn.close()

    def _sweep(self) -> None:
        """Time out copies past their deadline. One call every _SWEEP_PERIOD_S per shadow over at
        most ``concurrency`` copies: a timer per copy cost more (a libuv timer started and stopped
        for every mirrored request) than all the deadlines it ever enforced."""
        loop = self._loop
        if loop is None or (self._pool is None and self._h2_pool is None):
            return
        now_s = loop.time()
        late = [copy for copy in self._active if copy.deadline <= now_s]
        for copy in late:
            self._timed_out(copy)
        self._sweeper = loop.call_at(now_s + self._sweep_period_s, self._sweep)

    def _timed_out(self, copy: _Copy | _H2Copy) -> None:
        copy.abandon()
        self._end(copy, Failure(FailureKind.TIMEOUT, f"no complete response within {self.settings.total_timeout_s} s"))

    def copy_done(self, copy: _Copy, outcome: Outcome) -> None:
        """Exactly once per copy: count, feed the breaker, tell the listener, start the next copy."""
        self._copy_ended(copy, outcome, copy.exchange, copy.sent_ns, copy.first_byte_ns, copy.delta)

    def h2_copy_done(self, copy: _H2Copy, outcome: Outcome) -> None:
        """``copy_done`` for a copy to an HTTP/2 shadow. (Two entries rather than one taking either:
        compiled, reading a field of a union of classes is a generic attribute lookup, each time.)"""
        self._copy_ended(copy, outcome, copy.exchange, copy.sent_ns, copy.first_byte_ns, copy.delta)

    def _end(self, copy: _Copy | _H2Copy, outcome: Outcome) -> None:
        if isinstance(copy, _H2Copy):
            self.h2_copy_done(copy, outcome)
        else:
            self.copy_done(copy, outcome)

    def _copy_ended(
        self,
        copy: _Copy | _H2Copy,
        outcome: Outcome,
        exchange: ProxiedExchange,
        sent_ns: int,
        copy_first_byte_ns: int | None,
        delta: list[Any],
    ) -> None:
        if copy not in self._active:
            return
        self._active.discard(copy)
        loop = self._loop
        assert loop is not None
        done_ns = time.monotonic_ns()
        if isinstance(outcome, Response):
            self.breaker.record_success(loop.time())
            self._metrics.observe_shadow(self.settings.name, (done_ns - sent_ns) / 1e9, outcome.status)
        elif outcome.kind == FailureKind.CANCELLED:
            self.breaker.record_cancelled()
        else:
            self.breaker.record_failure(loop.time())
        base = exchange.started_mono_ns
        first_byte_ns = None if copy_first_byte_ns is None else copy_first_byte_ns - base
        self._finish(exchange, outcome, new_timing(sent_ns - base, first_byte_ns, done_ns - base), delta)
        if self._waiting and not self._pump_scheduled and not self._stopped:
            # Next copy from a fresh loop turn: this may run inside a connection's data callback.
            self._pump_scheduled = True
            loop.call_soon(self._pump)
        elif not self._active and not self._waiting:
            self._idle.set()

    def _pump(self) -> None:
        self._pump_scheduled = False
        try:
            self._start_waiting()
        finally:
            self._flush_writes()

    def _start_waiting(self) -> None:
        """Start queued copies up to the concurrency cap, ending the ones not worth sending."""
        loop = self._loop
        assert loop is not None
        now_s = loop.time()
        flags = self._flags
        breaker = self.breaker
        waiting = self._waiting
        drops = 0
        while waiting and len(self._active) < self.settings.concurrency and not self._stopped:
            if drops >= _MAX_DROPS_PER_TURN:
                self._pump_scheduled = True
                loop.call_soon(self._pump)
                return
            offer = waiting.popleft()
            exchange, enqueued_s = offer.exchange, offer.offered_s
            if not (flags.mirroring and flags.shadow_mirroring(self.index)):
                # The kill switch also stops copies already queued, not only new decisions.
                drops += 1
                breaker.record_cancelled()
                self._finish(exchange, Failure(FailureKind.CANCELLED, "mirroring turned off"), _NO_TIMING)
                continue
            if now_s - enqueued_s > self.settings.total_timeout_s:
                # Stale: the shadow is too far behind for this copy to be worth sending.
                drops += 1
                breaker.record_failure(now_s)
                self._finish(exchange, Failure(FailureKind.TIMEOUT, "waited too long in the mirror queue"), _NO_TIMING)
                continue
            if breaker.refusing(now_s):
                # The breaker opened after this copy was queued: sending it would only feed a shadow
                # known to be failing (a black hole holds each copy for its whole timeout).
                drops += 1
                self._finish(exchange, Failure(FailureKind.BREAKER_OPEN, "breaker opened while queued"), _NO_TIMING)
                continue
            try:
                self._start(offer, now_s)
            except Exception as exc:  # a bug must cost this copy only, never the queue behind it
                log.exception("mirror copy for %s could not start", self.settings.name)
                breaker.record_cancelled()
                self._finish(exchange, Failure(FailureKind.OTHER, f"copy could not start: {exc}"), _NO_TIMING)
        if not self._active and not waiting:
            self._idle.set()

    def _finish(
        self, exchange: ProxiedExchange, outcome: Outcome, timing: Timing, delta: list[Any] | None = None
    ) -> None:
        self._metrics.count_mirror(self.settings.name, "ok" if isinstance(outcome, Response) else outcome.kind)
        if self._on_outcome is not None:
            try:
                self._on_outcome(exchange, self.settings.name, outcome, timing, delta)
            except Exception:
                log.exception("mirror outcome listener failed for %s", self.settings.name)

    async def drain(self) -> None:
        """Until nothing is queued or in flight."""
        await self._idle.wait()

    async def stop(self) -> None:
        """Refuse new copies; in-flight and queued ones end as ``cancelled``; close the pool."""
        self._stopped = True
        cancelled = Failure(FailureKind.CANCELLED, "proxy shutting down")
        connecting = [c.connecting for c in self._active if c.connecting is not None]
        for copy in list(self._active):
            copy.abandon()
            self._end(copy, cancelled)
        await asyncio.gather(*connecting, return_exceptions=True)
        while self._waiting:
            self.breaker.record_cancelled()
            self._finish(self._waiting.popleft().exchange, cancelled, _NO_TIMING)
        self._idle.set()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._pool is not None:
            self._pool.abort_all()
            self._pool = None
        if self._h2_pool is not None:
            self._h2_pool.abort_all()
            self._h2_pool = None

    def stats(self) -> dict[str, Any]:
        return {
            "queue_depth": len(self._waiting),
            "queue_size": self.settings.queue_size,
            "in_flight": len(self._active),
            "breaker": self.breaker.state,
            "breaker_opened": self.breaker.times_opened,
        }


class MirrorStage:
    """The stage that mirrors sampled, safe requests to every configured shadow."""

    name = "mirror"
    #: Decides in request_complete only: the data path need not build the finished exchange for it.
    watches_completion = False

    def __init__(
        self,
        shadows: Sequence[ShadowSettings],
        settings: MirrorSettings,
        flags: RuntimeFlags,
        metrics: ProxyMetrics,
        on_outcome: OutcomeListener | None = None,
        redaction: RedactionRules | None = None,
        forward: ForwardSettings | None = None,
        dial: Dialer | None = None,
    ) -> None:
        """``forward`` is the data path's settings: the copies get the forwarding fields (and the
        deltas the Host) the primary got by them; without it, no forwarding fields. ``dial`` opens
        the shadows' connections (``shadowtap.wire.client.dial_tcp`` when not given)."""
        self._settings = settings
        self._routes = RouteTable(settings.routes)
        self._flags = flags
        self._metrics = metrics
        rewriter = None if forward is None else RequestRewriter(forward)
        self.shadows = [ShadowMirror(s, flags, metrics, on_outcome, redaction, rewriter, dial) for s in shadows]
        # Cached: asyncio.get_running_loop() costs a getpid() system call on every call.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        metrics.add_source(
            "gauge", "shadowtap_mirror_queue_depth", "Copies waiting in each shadow's queue", "shadow",
            lambda: {m.settings.name: float(m.queue_depth) for m in self.shadows},
        )  # fmt: skip
        metrics.add_source(
            "gauge", "shadowtap_mirror_in_flight", "Copies being sent to each shadow", "shadow",
            lambda: {m.settings.name: float(m.in_flight) for m in self.shadows},
        )  # fmt: skip
        metrics.add_source(
            "gauge", "shadowtap_mirror_breaker_open", "1 when a shadow's circuit breaker is not closed", "shadow",
            lambda: {m.settings.name: float(m.breaker.state != "closed") for m in self.shadows},
        )  # fmt: skip

    async def start(self) -> None:
        for shadow in self.shadows:
            await shadow.start()

    def request_complete(self, exchange: ProxiedExchange) -> None:
        if not self.shadows:
            return
        flags = self._flags
        decisions = exchange.decisions
        if self._closed or not flags.mirroring:
            for shadow in self.shadows:
                self._decide(decisions, shadow, FailureKind.DISABLED)
            return
        method = exchange.method
        #: How long a gRPC call's request stream took (0 for anything else).
        stream_s = 0.0
        if exchange.grpc:
            rule = self._routes.match_grpc(method, exchange.target)  # gRPC calls are POSTs: opted in by route
            stream_s = (time.monotonic_ns() - exchange.started_mono_ns) / 1e9
        else:
            rule = self._routes.match_target(method, exchange.target)
        body = exchange.request_body
        key: bytes | None = None
        if self._settings.sample_key is not None:
            key = self._settings.sample_key.extract(exchange.target, exchange.request_headers)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now_s = loop.time()
        offer: _Offer | None = None
        for shadow in self.shadows:
            name = shadow.settings.name
            if (
                not flags.shadow_mirroring(shadow.index)
                or not rule.mirror
                or (rule.shadows is not None and name not in rule.shadows)
            ):
                decision = FailureKind.DISABLED
            elif exchange.upgraded or not rule.allows_method(method) or not exchange.target.startswith("/"):
                decision = FailureKind.METHOD_NOT_ALLOWED
            elif body is None or len(body) > shadow.settings.max_body_bytes:
                decision = FailureKind.BODY_TOO_LARGE
            elif stream_s and stream_s > shadow.settings.total_timeout_s:  # (gRPC only: HTTP/1 pays a test)
                # A request stream longer than a copy may take: sent whole now, it would not be the call.
                decision = FailureKind.TIMEOUT
            else:
                percent = rule.sample_percent if rule.sample_percent is not None else flags.shadow_percent(shadow.index)
                sampled = key_in_sample(key, percent) if key is not None else in_sample(percent)
                if sampled:
                    if offer is None:
                        offer = _Offer(exchange, now_s)
                    decision = shadow.offer(offer)
                else:
                    decision = FailureKind.SAMPLED_OUT
            self._decide(decisions, shadow, decision)

    def _decide(self, decisions: dict[str, str], shadow: ShadowMirror, decision: str) -> None:
        decisions[shadow.settings.name] = decision
        self._metrics.count_mirror(shadow.settings.name, decision)

    def exchange_complete(self, exchange: ProxiedExchange) -> None:
        return None

    async def aclose(self, timeout_s: float) -> None:
        """Stop taking copies, let queued ones finish within ``timeout_s``, cancel the rest."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(s.drain() for s in self.shadows)), timeout_s)
        for shadow in self.shadows:
            await shadow.stop()

    def stats(self) -> dict[str, Any]:
        return {shadow.settings.name: shadow.stats() for shadow in self.shadows}


def _query_pairs(target: str) -> dict[str, str]:
    """The first raw value of each query parameter of ``target``."""
    query = target.partition("?")[2].partition("#")[0]
    pairs: dict[str, str] = {}
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if name not in pairs:
            pairs[name] = value
    return pairs


def _query_delta(original: str, copy: str) -> list[list[str | None]]:
    """The query parameters the copy got another value of, or none, as ``[name, copy's value]``;
    a value the proxy swapped in (a shadow's credential, not a hash the tape shares) is not kept."""
    before, after = _query_pairs(original), _query_pairs(copy)
    out: list[list[str | None]] = []
    for name, value in before.items():
        new = after.get(name)
        if new is None:
            out.append([name, None])
        elif new != value:
            out.append([name, new if new.startswith("redacted:") else UNRECORDED])
    return out
