"""The replayer's HTTP/2 transport: each planned request one stream over ``shadowtap.wire.h2``.

``H2Transport.send`` turns a planned request into a stream on a small pool of multiplexed
connections (h2c by prior knowledge for ``h2c://`` and ``http://`` targets, TLS with ALPN ``h2`` for
``https://``): the pseudo-header fields from the method, the target (after the URL's path prefix),
the scheme and the authority (the target's, or the plan's ``Host`` from ``--host``), then the
recorded fields lower-cased without the ones HTTP/2 forbids, ``te: trailers`` for gRPC, the body
and the recorded request trailers. A recorded gRPC request of several messages (a client or
bidirectional stream) sends each message at its recorded offset (``StreamMessage.at_ns``) divided by
the speed, each gap cut to a bound, and never before that offset; the answer is read as it comes,
so a bidirectional call's replies interleave with the requests as they did.

The answer becomes a ``Response`` with ``http_version`` ``"2"``, its trailers, and for gRPC its
message list, each message's ``at_ns`` counted from the start of the call (the results tape moves it
to the exchange's time base, ``shadowtap.replayer.result``). Like every transport it never raises
for the target's failures: a refused connection, a timeout, a reset stream or GOAWAY, a malformed or
too large answer come back as a ``Failure``. A stream the target refused unprocessed (REFUSED_STREAM,
or above a GOAWAY's last stream) is sent once more on another. When the target ends a call before
the whole request went (an early gRPC error), the rest is not sent and the client's half of the
stream is reset with NO_ERROR (``shadowtap.wire.h2`` does both). This module holds no schedule: the
runner decides when a call starts; only the gaps inside one call are kept here.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Final

from yarl import URL

from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.model import (
    Failure,
    FailureKind,
    Headers,
    Outcome,
    Request,
    Response,
    StreamMessage,
    new_response,
)
from shadowtap.replayer.sending import ClientSettings, SendResult
from shadowtap.wire.client import Deadlines
from shadowtap.wire.grpc import MESSAGE_HEADER_BYTES, GrpcFramingError, MessageSplitter
from shadowtap.wire.h2 import CONNECT_ERROR, H2Pool, H2Stream, Header

__all__ = ["DEFAULT_PORTS", "H2Transport", "h2_request_fields", "is_grpc", "message_offsets"]

DEFAULT_PORTS: Final = {"h2c": 80, "http": 80, "https": 443}
#: Fields about one HTTP/1 connection (RFC 9113 8.2.2) and the ones the client sets for itself
#: (the authority is a pseudo-header field; the length follows the body sent).
_NOT_SENT: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host", b"te",
     b"content-length", b"trailer", b"expect", b"http2-settings")
)  # fmt: skip
_NO_LENGTH_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"})
_NS_PER_S: Final = 1_000_000_000


def is_grpc(fields: Headers) -> bool:
    for name, value in fields:
        if name.lower() == b"content-type":
            return _grpc_media(value)
    return False


def _grpc_media(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/grpc" or media.startswith(b"application/grpc+")


def h2_request_fields(
    method: str,
    target: str,
    headers: Headers,
    body: bytes,
    grpc: bool,
    *,
    scheme: bytes,
    authority: bytes,
    prefix: bytes,
) -> list[Header]:
    """A planned request's HTTP/2 header list: the pseudo-header fields (the plan's ``Host`` as the
    authority, else ``authority``; ``prefix``, the target URL's path, before the target), then the
    recorded fields lower-cased without the ones HTTP/2 forbids, ``te: trailers`` for gRPC or the
    body's length. Through ``h2_call``, shared with the Locust workers' blocking client (``replayer.h2blocking``)."""
    fields: list[Header] = []
    for name, value in headers:
        lower = name.lower()
        if lower in _NOT_SENT or lower[:1] == b":":
            if lower == b"host":
                authority = value  # the plan's --host
            continue
        fields.append((lower, value))
    method_bytes = method.encode("latin-1")
    if grpc:
        fields.append((b"te", b"trailers"))
    elif body or method_bytes not in _NO_LENGTH_METHODS:
        fields.append((b"content-length", b"%d" % len(body)))
    return [
        (b":method", method_bytes),
        (b":scheme", scheme),
        (b":authority", authority),
        (b":path", prefix + target.encode("latin-1") or b"/"),
        *fields,
    ]


def h2_call(
    method: str,
    target: str,
    headers: Headers,
    body: bytes,
    recorded: Request | None,
    *,
    scheme: bytes,
    authority: bytes,
    prefix: bytes,
    speed: float,
    max_gap_ns: int,
) -> tuple[bool, list[Header], list[Header] | None, list[tuple[int, int]] | None]:
    """What a client sends for a planned request over HTTP/2 (this transport and the Locust workers'
    blocking client alike): whether it is a gRPC call, its header list (``h2_request_fields``), the
    recorded request trailers, and for a gRPC call the recorded messages' offsets (``message_offsets``)."""
    grpc = is_grpc(headers) or (recorded is not None and is_grpc(recorded.headers))
    fields = h2_request_fields(method, target, headers, body, grpc, scheme=scheme, authority=authority, prefix=prefix)
    trailers = list(recorded.trailers) if recorded is not None and recorded.trailers else None
    offsets = None
    if grpc and recorded is not None:
        offsets = message_offsets(recorded.messages, len(body), speed, max_gap_ns)
    return grpc, fields, trailers, offsets


def message_offsets(
    messages: tuple[StreamMessage, ...], body_size: int, speed: float, max_gap_ns: int
) -> list[tuple[int, int]] | None:
    """(end offset in the body, send offset in ns from the call's start) for each recorded message,
    or None when the body goes at once: one message or none, no timing, ``speed`` 0, or a body whose
    size is not the messages' (cut at a recording cap, or rewritten). Offsets never decrease; each gap
    (the first from the call's start) is the recorded one divided by ``speed``, at most ``max_gap_ns``."""
    if len(messages) < 2 or speed <= 0 or any(m.at_ns is None for m in messages):
        return None
    if sum(MESSAGE_HEADER_BYTES + m.length for m in messages) != body_size:
        return None
    out: list[tuple[int, int]] = []
    end = previous_at = offset_ns = 0
    for message in messages:
        at_ns = message.at_ns or 0
        offset_ns += min(max(0, int((at_ns - previous_at) / speed)), max_gap_ns)
        previous_at = max(previous_at, at_ns)
        end += MESSAGE_HEADER_BYTES + message.length
        out.append((end, offset_ns))
    return out


class _Call:
    """The ``StreamSink`` of one call: collects the answer and ends once, resolving ``done`` (a call
    ``send`` waits for) or calling ``ended`` (one ``start`` sent: no future). One ``start`` sent has
    its deadline in the transport's ``Deadlines`` (``timed_out``)."""

    __slots__ = ("_chunks", "_grpc", "_headers", "_max_body", "_messages", "_size", "_splitter", "_started_ns",
                 "_status", "_trailers", "done", "ended", "finished", "first_byte_ns", "refused", "stream")  # fmt: skip

    def __init__(
        self, max_body: int, grpc: bool, started_ns: int, ended: Callable[[_Call, Outcome], None] | None = None
    ) -> None:
        self.ended = ended
        self.done: asyncio.Future[Outcome] | None = None
        if ended is None:
            self.done = asyncio.get_running_loop().create_future()
        self.finished = False
        self.stream: H2Stream | None = None
        self.first_byte_ns: int | None = None
        self.refused = False
        self._max_body = max_body
        self._grpc = grpc
        self._started_ns = started_ns
        self._status = 0
        self._headers: list[Header] = []
        self._trailers: list[Header] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._messages: list[StreamMessage] = []
        # Only the answer's framing is read (flags and lengths): its bytes stay in the body. A body
        # that is not gRPC framing keeps the messages found before the fault.
        self._splitter: MessageSplitter | None = None

    def on_head(self, status: int, headers: list[Header], ended: bool) -> None:
        self.first_byte_ns = time.monotonic_ns()
        self._status = status
        self._headers = headers
        grpc = self._grpc
        if not grpc:
            # A response head's names are lower-case (``shadowtap.wire.h2`` refuses others).
            for name, value in headers:
                if name == b"content-type":
                    grpc = _grpc_media(value)
                    break
        if grpc:
            self._splitter = MessageSplitter(self._max_body)

    def finish(self, outcome: Outcome) -> None:
        """End the call with ``outcome``, once (later ends are ignored)."""
        if self.finished:
            return
        self.finished = True
        # The stream and this sink point at each other: let go of it, so neither waits for the
        # garbage collector (the stream's connection has dropped it, or drops it now).
        self.stream = None
        ended = self.ended
        if ended is not None:
            self.ended = None
            ended(self, outcome)
        elif self.done is not None and not self.done.done():
            self.done.set_result(outcome)

    def on_data(self, data: bytes) -> None:
        if self.finished:
            return
        self._size += len(data)
        if self._size > self._max_body:
            if self.stream is not None:
                self.stream.reset()
            self.finish(Failure(FailureKind.BODY_TOO_LARGE, f"response body over {self._max_body} bytes"))
            return
        self._chunks.append(data)
        if self.stream is not None:
            self.stream.consumed(len(data))
        splitter = self._splitter
        if splitter is not None:
            try:
                found = splitter.feed(data)
            except GrpcFramingError:
                self._splitter = None
                return
            if found:
                at_ns = time.monotonic_ns() - self._started_ns
                self._messages.extend(StreamMessage(int(m.compressed), len(m.data), at_ns) for m in found)

    def on_trailers(self, headers: list[Header]) -> None:
        self._trailers = headers

    def timed_out(self, timeout_s: float) -> None:
        if self.stream is not None:
            self.stream.reset()
        self.finish(Failure(FailureKind.TIMEOUT, f"no complete answer within {timeout_s:g} s"))

    def on_end(self) -> None:
        if self.finished:
            return
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        # Stored straight into its slots, as the HTTP/1.1 transport does (``new_response``).
        self.finish(
            new_response(
                self._status, "", tuple(self._headers), body, "2", None, tuple(self._trailers), tuple(self._messages)
            )
        )

    def on_reset(self, kind: str, message: str, refused: bool) -> None:
        if self.finished:
            return
        self.refused = refused and self.first_byte_ns is None
        self.finish(Failure(kind, message))

    def on_request_drained(self, sent: int) -> None:
        pass  # the whole body is in memory: nothing waits for the window here


class _Started:
    """One call ``H2Transport.start`` sent: what ``done`` hears when it ends (after one resend on
    another stream, as a task, when the target refused it unprocessed)."""

    __slots__ = ("body", "done", "fields", "grpc", "trailers", "transport")

    def __init__(
        self,
        transport: H2Transport,
        done: Callable[[SendResult], None],
        fields: list[Header],
        body: bytes,
        trailers: list[Header] | None,
        grpc: bool,
    ) -> None:
        self.transport = transport
        self.done = done
        self.fields = fields
        self.body = body
        self.trailers = trailers
        self.grpc = grpc

    def ended(self, call: _Call, outcome: Outcome) -> None:
        transport = self.transport
        if transport._deadlines is not None:
            transport._deadlines.discard(call)
        if call.refused and transport._loop is not None:
            task = transport._loop.create_task(self._resend())
            transport._retries.add(task)
            task.add_done_callback(transport._retries.discard)
            return
        self.done(SendResult(outcome, call.first_byte_ns if isinstance(outcome, Response) else None))

    async def _resend(self) -> None:
        try:
            result = await self.transport._call(self.fields, self.body, self.trailers, None, self.grpc)
            if result is None:
                result = SendResult(Failure(FailureKind.RESET, "target refused the stream twice"))
        except Exception as exc:  # a bug must still end the request, or the replay waits for it forever
            result = SendResult(Failure(FailureKind.OTHER, f"{type(exc).__name__}: {exc}"))
        self.done(result)


class H2Transport:
    """Sends planned requests as HTTP/2 streams (see the module docstring). Use as an async context
    manager; ``send`` is safe to call concurrently (streams of one pool)."""

    def __init__(self, base_url: str, settings: ClientSettings | None = None) -> None:
        url = URL(base_url)
        if url.scheme not in DEFAULT_PORTS or not url.host:
            raise ConfigError(f"not an h2c://, http:// or https:// URL: {base_url!r}", field="target")
        self._settings = s = settings or ClientSettings()
        port = url.port or DEFAULT_PORTS[url.scheme]
        tls = url.scheme == "https"
        self._scheme = b"https" if tls else b"http"
        self._prefix = url.raw_path.rstrip("/").encode("latin-1")
        host = url.raw_host or url.host
        default_port = port == DEFAULT_PORTS[url.scheme] and url.scheme != "h2c"
        self._authority = (host if default_port else f"{host}:{port}").encode("latin-1")
        self._max_gap_ns = int(s.max_message_gap_s * _NS_PER_S)
        # The loop it runs on (set on entry): ``start`` needs it and looks it up no other way.
        self._loop: asyncio.AbstractEventLoop | None = None
        # The deadlines of the calls ``start`` sent, on one timer (set on entry).
        self._deadlines: Deadlines | None = None
        # Resends of refused streams that start sent (the loop keeps only weak references to tasks).
        self._retries: set[asyncio.Task[None]] = set()
        self._pool = H2Pool(
            url.host,
            port,
            ssl_context=ssl.create_default_context() if tls else None,
            connect_timeout_s=s.connect_timeout_s,
            max_connections=s.h2_connections,
            max_streams_per_connection=s.h2_streams_per_connection,
            peer="target",
        )

    async def __aenter__(self) -> H2Transport:
        self._loop = asyncio.get_running_loop()
        self._deadlines = Deadlines(self._loop, self._settings.timeout_s)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._pool.close()
        await asyncio.sleep(0)  # let the closed connections' transports finish closing
        self._pool.abort_all()
        if self._deadlines is not None:
            self._deadlines.close()

    def start(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes,
        recorded: Request | None,
        done: Callable[[SendResult], None],
    ) -> bool:
        """Send now without a task when a pooled connection has room for a stream and the call's
        body goes at once (not a recorded gRPC stream of paced messages), and call ``done`` once with
        the result: from the loop's read of the answer's end, or the deadline's timer. A stream the
        target refused unprocessed is sent once more, as ``send`` does (that needs a task). False,
        nothing sent, when ``send`` must do it (a connection to dial or wait for, paced messages, or
        used outside ``async with``)."""
        deadlines = self._deadlines
        if deadlines is None or not self._pool.has_room():
            return False
        grpc, fields, trailers, offsets = h2_call(
            method, target, headers, body, recorded, scheme=self._scheme, authority=self._authority,
            prefix=self._prefix, speed=self._settings.message_speed, max_gap_ns=self._max_gap_ns,
        )  # fmt: skip
        if offsets is not None:
            return False
        started = _Started(self, done, fields, body, trailers, grpc)
        call = _Call(self._settings.max_body_bytes, grpc, time.monotonic_ns(), started.ended)
        stream = self._pool.try_open(fields, call, end_stream=not body and not trailers)
        if stream is None:
            return False
        call.stream = stream
        deadlines.add(call)
        if body or trailers:
            stream.send_data(body)
            stream.end(trailers)
        return True

    async def send(
        self, method: str, target: str, headers: Headers, body: bytes, recorded: Request | None = None
    ) -> SendResult:
        grpc, fields, trailers, offsets = h2_call(
            method, target, headers, body, recorded, scheme=self._scheme, authority=self._authority,
            prefix=self._prefix, speed=self._settings.message_speed, max_gap_ns=self._max_gap_ns,
        )  # fmt: skip
        result = await self._call(fields, body, trailers, offsets, grpc)
        if result is None:  # refused unprocessed: once more, on another stream
            result = await self._call(fields, body, trailers, offsets, grpc)
        return result or SendResult(Failure(FailureKind.RESET, "target refused the stream twice"))

    async def _call(
        self,
        fields: list[Header],
        body: bytes,
        trailers: list[Header] | None,
        offsets: list[tuple[int, int]] | None,
        grpc: bool,
    ) -> SendResult | None:
        """One attempt; None when the target refused the stream without processing it."""
        s = self._settings
        started_ns = time.monotonic_ns()
        call = _Call(s.max_body_bytes, grpc, started_ns)
        stream: H2Stream | None = None
        try:
            async with asyncio.timeout(s.timeout_s):
                try:
                    stream = await self._pool.open(fields, call, end_stream=not body and not trailers)
                except TimeoutError:
                    return SendResult(Failure(FailureKind.TIMEOUT, f"connect to {self._pool.address} timed out"))
                except OSError as exc:
                    return SendResult(Failure(CONNECT_ERROR, f"connect to {self._pool.address}: {exc.strerror or exc}"))
                call.stream = stream
                if body or trailers:
                    await self._send_body(stream, call, body, trailers, offsets, started_ns)
                assert call.done is not None
                outcome = await call.done
        except TimeoutError:
            if stream is not None:
                stream.reset()
            return SendResult(Failure(FailureKind.TIMEOUT, f"no complete answer within {s.timeout_s:g} s"))
        except BaseException:
            if stream is not None:
                stream.reset()  # cancelled (the replay stopped): the target hears it
            raise
        if call.refused:
            return None
        return SendResult(outcome, call.first_byte_ns if isinstance(outcome, Response) else None)

    @staticmethod
    async def _send_body(
        stream: H2Stream,
        call: _Call,
        body: bytes,
        trailers: list[Header] | None,
        offsets: list[tuple[int, int]] | None,
        started_ns: int,
    ) -> None:
        if offsets is None:
            stream.send_data(body)
        else:
            view = memoryview(body)
            start = 0
            for end, offset_ns in offsets:
                due_ns = started_ns + offset_ns
                # Never early: wait again until the monotonic clock has reached the due time; an
                # answer that ends the call meanwhile (the target gave up on it) ends the wait.
                while (left_ns := due_ns - time.monotonic_ns()) > 0 and not call.finished:
                    assert call.done is not None  # a call with paced messages is always sent by send
                    await asyncio.wait((call.done,), timeout=left_ns / _NS_PER_S)
                if call.finished or stream.closed:
                    return  # the target answered (or failed) before the client had finished
                stream.send_data(bytes(view[start:end]))
                start = end
        stream.end(trailers)
