"""How the runner sends one request: a one-method interface and its implementations.

The runner only knows ``Transport.send``; tests drive the scheduler with ``MemoryTransport`` (a
handler function, no sockets). On the wire, ``HttpTransport`` is the default for ``http://``: a
keep-alive HTTP/1.1 client on asyncio protocols with llhttp (httptools) parsing, because the
aiohttp client costs about ten times more CPU per request and cannot meet the replayer's
5,000 requests/s budget (bench/replay_bench.py). ``AiohttpTransport`` serves ``https://`` and
``--client aiohttp``. ``make_transport`` picks one. A transport must never raise for an upstream
failure: it returns a ``Failure`` classified as connect, timeout, reset or bad response, so one
dead target cannot stop a replay.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

import aiohttp
import httptools
from multidict import CIMultiDict
from yarl import URL

from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.model import Failure, FailureKind, Headers, Outcome, Response

__all__ = [
    "AiohttpTransport",
    "ClientSettings",
    "HttpTransport",
    "MemoryTransport",
    "SendResult",
    "Transport",
    "describe_outcome",
    "error_class",
    "make_transport",
]

# aiohttp adds these when absent; a replay sends what was recorded, so they are never added.
_SKIP_AUTO_HEADERS: Final = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})


# Requests that may be sent twice without changing the outcome (RFC 9110, 9.2.2).
_IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class SendResult:
    """What came back: the outcome, and when its head arrived (monotonic ns, None on failure)."""

    outcome: Outcome
    first_byte_ns: int | None = None


class Transport(Protocol):
    async def send(self, method: str, target: str, headers: Headers, body: bytes) -> SendResult: ...


def error_class(outcome: Outcome) -> str | None:
    """The stats error class of an outcome (``shadowtap.replayer.stats.ERROR_CLASSES``), None when it is fine."""
    if isinstance(outcome, Response):
        return "5xx" if outcome.status >= 500 else None
    return {
        FailureKind.CONNECT_ERROR: "connect",
        FailureKind.TIMEOUT: "timeout",
        FailureKind.RESET: "reset",
    }.get(outcome.kind, "other")


#: Longest failure message an error example keeps (an exception can carry a whole response).
_DETAIL_CHARS: Final = 200


def describe_outcome(outcome: Outcome) -> str:
    """One line saying what came back, for an error example: ``503 Service Unavailable`` or
    ``connect-error: [Errno 111] Connection refused``."""
    if isinstance(outcome, Response):
        return f"{outcome.status} {outcome.reason}".rstrip()
    text = f"{outcome.kind}: {outcome.message}" if outcome.message else outcome.kind
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


class MemoryTransport:
    """A transport backed by an async handler: the scheduler's tests run without sockets."""

    def __init__(self, handler: Callable[[str, str, Headers, bytes], Awaitable[Outcome]]) -> None:
        self._handler = handler

    async def send(self, method: str, target: str, headers: Headers, body: bytes) -> SendResult:
        outcome = await self._handler(method, target, headers, body)
        return SendResult(outcome, time.monotonic_ns())


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """The HTTP client's limits, chosen deliberately (aiohttp's silent default is 100 connections).

    ``max_connections`` bounds sockets to the target (a replay is one host); ``timeout_s`` bounds
    each request end to end, ``connect_timeout_s`` the connection set-up; ``keepalive_s`` how long an
    idle connection is kept for reuse.
    """

    max_connections: int = 256
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    keepalive_s: float = 30.0
    #: A response body larger than this is a ``body-too-large`` failure (bounds memory per request).
    max_body_bytes: int = 64 * 1024 * 1024
    #: ``auto``: the raw HTTP/1.1 client for http://, aiohttp for https://; or force one.
    client: str = "auto"

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ConfigError(f"must be >= 1, got {self.max_connections}", field="connections")
        if self.max_body_bytes < 1:
            raise ConfigError(f"must be >= 1, got {self.max_body_bytes}", field="max-body-bytes")
        if self.client not in ("auto", "raw", "aiohttp"):
            raise ConfigError(f"must be auto, raw or aiohttp, not {self.client!r}", field="client")
        for name in ("timeout_s", "connect_timeout_s", "keepalive_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"must be > 0, got {getattr(self, name)}", field=name.replace("_s", ""))


def _failure_from(exc: BaseException) -> Failure:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientProxyConnectionError):
        return Failure(FailureKind.CONNECT_ERROR, message)
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return Failure(FailureKind.TIMEOUT, message)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return Failure(FailureKind.RESET, message)
    if isinstance(exc, aiohttp.ClientOSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return Failure(FailureKind.RESET, message)
    if isinstance(exc, aiohttp.ClientResponseError):
        return Failure(FailureKind.BAD_RESPONSE, message)
    return Failure(FailureKind.OTHER, message)


class AiohttpTransport:
    """Sends to ``base_url`` + the planned target through one keep-alive aiohttp session.

    Bodies are read as they came (no decompression), so the results tape holds wire bytes.
    Use as an async context manager; ``send`` is safe to call concurrently.
    """

    def __init__(self, base_url: str, settings: ClientSettings | None = None) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"not an http(s) URL: {base_url!r}", field="target")
        self._base = str(url).rstrip("/")
        self._settings = settings or ClientSettings()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AiohttpTransport:
        s = self._settings
        connector = aiohttp.TCPConnector(
            limit=s.max_connections,
            limit_per_host=s.max_connections,
            keepalive_timeout=s.keepalive_s,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=s.timeout_s, sock_connect=s.connect_timeout_s),
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, method: str, target: str, headers: Headers, body: bytes) -> SendResult:
        session = self._session
        if session is None:
            raise RuntimeError("AiohttpTransport used outside 'async with'")
        request_headers: CIMultiDict[str] = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers)
        url = URL(self._base + target, encoded=True)
        try:
            async with session.request(
                method, url, headers=request_headers, data=body or None, allow_redirects=False
            ) as resp:
                first_byte_ns = time.monotonic_ns()
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > self._settings.max_body_bytes:
                        limit = self._settings.max_body_bytes
                        return SendResult(Failure(FailureKind.BODY_TOO_LARGE, f"response body over {limit} bytes"))
                    chunks.append(chunk)
                payload = b"".join(chunks)
                return SendResult(
                    Response(
                        status=resp.status,
                        reason=resp.reason or "",
                        headers=tuple(resp.raw_headers),
                        body=payload,
                        http_version=f"{resp.version.major}.{resp.version.minor}" if resp.version else "1.1",
                    ),
                    first_byte_ns,
                )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return SendResult(_failure_from(exc))


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its response parsed by llhttp."""

    __slots__ = (
        "_body",
        "_body_size",
        "_first_byte_ns",
        "_headers",
        "_head_only",
        "_max_body",
        "_parser",
        "_timer",
        "_waiter",
        "answered",
        "closed",
        "idle_since_ns",
        "transport",
    )

    def __init__(self, max_body_bytes: int) -> None:
        self._max_body = max_body_bytes
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[SendResult] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._first_byte_ns: int | None = None
        self._head_only = False
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        #: Whether any byte came back for the current request (a stale keep-alive gets none).
        self.answered = False
        self.idle_since_ns = 0

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.answered = True
        if self._waiter is None:
            self._fail(Failure(FailureKind.BAD_RESPONSE, "data received with no request outstanding"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Failure(FailureKind.BAD_RESPONSE, f"unparsable response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(SendResult(Failure(FailureKind.RESET, str(exc or "connection closed early"))))
        self._waiter = None

    # -- llhttp callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._first_byte_ns is None:
            self._first_byte_ns = time.monotonic_ns()
        if self._informational():
            return
        if self._head_only:
            # A HEAD response announces a body it never sends; llhttp cannot be told the method,
            # so the response ends here and the next response gets a fresh parser.
            self._complete()
            self._parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._fail(Failure(FailureKind.BODY_TOO_LARGE, f"response body over {self._max_body} bytes"))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._informational():
            # 1xx (103 Early Hints, an unasked 100 Continue) precedes the real response.
            self._headers, self._body, self._body_size = [], [], 0
            return
        if not self._head_only:
            self._complete()

    def _informational(self) -> bool:
        status = self._parser.get_status_code()
        return 100 <= status < 200 and status != 101

    # -- requests
    def send(self, payload: bytes, head_only: bool, timeout_s: float) -> asyncio.Future[SendResult]:
        assert self.transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        # One timer handle per request: cheaper than an asyncio.timeout scope on the hot path.
        self._timer = loop.call_later(timeout_s, self._timed_out, timeout_s)
        self._headers, self._body, self._body_size = [], [], 0
        self._first_byte_ns = None
        self._head_only = head_only
        self.answered = False
        self.transport.write(payload)
        return self._waiter

    def _timed_out(self, timeout_s: float) -> None:
        self._timer = None
        self._fail(Failure(FailureKind.TIMEOUT, f"no response within {timeout_s:g} s"))

    def _complete(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter, self._waiter = self._waiter, None
        parser = self._parser
        version = parser.get_http_version()
        if not parser.should_keep_alive():
            self.close()
        if waiter is not None and not waiter.done():
            response = Response(
                status=parser.get_status_code(),
                headers=tuple(self._headers),
                body=b"".join(self._body),
                http_version=version,
            )
            waiter.set_result(SendResult(response, self._first_byte_ns))

    def _fail(self, failure: Failure) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter, self._waiter = self._waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(SendResult(failure))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpTransport:
    """A lean keep-alive HTTP/1.1 client for ``http://`` targets (see the module docstring).

    Requests go out with the recorded headers in their recorded order and case; ``Host`` is the
    target's unless the plan set one, ``Content-Length`` is recomputed. Bodies come back as they
    were sent (no decompression). At most ``max_connections`` connections are open; idle ones are
    reused most-recent first. Use as an async context manager.
    """

    def __init__(self, base_url: str, settings: ClientSettings | None = None) -> None:
        url = URL(base_url)
        if url.scheme != "http" or not url.host:
            raise ConfigError(f"not an http:// URL: {base_url!r}", field="target")
        self._host = url.host
        self._port = url.port or 80
        self._prefix = url.raw_path.rstrip("/")
        default_port = url.port is None or url.port == 80
        self._host_header = (url.raw_host or url.host) + ("" if default_port else f":{url.port}")
        self._settings = settings or ClientSettings()
        # Bounded by max_connections: a connection is either idle here or lent to one request.
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(self._settings.max_connections)
        self._all: set[_Connection] = set()

    async def __aenter__(self) -> HttpTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()

    def _payload(self, method: str, target: str, headers: Headers, body: bytes) -> bytes:
        has_host = False
        lines = [f"{method} {self._prefix}{target} HTTP/1.1\r\n".encode("latin-1")]
        for name, value in headers:
            if not has_host and name.lower() == b"host":
                has_host = True
            lines += (name, b": ", value, b"\r\n")
        if not has_host:
            lines.append(f"Host: {self._host_header}\r\n".encode("latin-1"))
        if body or method not in ("GET", "HEAD", "OPTIONS", "DELETE", "TRACE"):
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        if body:
            lines.append(body)
        return b"".join(lines)

    async def _connect(self) -> _Connection | Failure:
        s = self._settings
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(s.connect_timeout_s):
                _, conn = await loop.create_connection(lambda: _Connection(s.max_body_bytes), self._host, self._port)
        except TimeoutError:
            return Failure(FailureKind.TIMEOUT, f"connect to {self._host}:{self._port} timed out")
        except OSError as exc:
            return Failure(FailureKind.CONNECT_ERROR, f"connect to {self._host}:{self._port}: {exc.strerror or exc}")
        self._all.add(conn)
        return conn

    def _take_idle(self) -> _Connection | None:
        # Most recent first; a connection idle longer than keepalive_s is closed rather than
        # reused, since the server has likely dropped it by then.
        oldest_ok_ns = time.monotonic_ns() - int(self._settings.keepalive_s * 1e9)
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.idle_since_ns >= oldest_ok_ns:
                return conn
            conn.close()
            self._all.discard(conn)
        return None

    async def send(self, method: str, target: str, headers: Headers, body: bytes) -> SendResult:
        payload = self._payload(method, target, headers, body)
        async with self._slots:
            conn = self._take_idle()
            reused = conn is not None
            while True:
                if conn is None:
                    made = await self._connect()
                    if isinstance(made, Failure):
                        return SendResult(made)
                    conn = made
                result = await conn.send(payload, method == "HEAD", self._settings.timeout_s)
                if conn.closed:
                    self._all.discard(conn)
                else:
                    conn.idle_since_ns = time.monotonic_ns()
                    self._idle.append(conn)
                # A kept-alive connection the server closed while it sat idle fails before any
                # byte comes back: that says nothing about the target, so an idempotent request is
                # sent once more on a new connection (as browsers and HTTP clients do).
                outcome = result.outcome
                stale = isinstance(outcome, Failure) and outcome.kind == FailureKind.RESET and not conn.answered
                if reused and stale and method in _IDEMPOTENT_METHODS:
                    conn, reused = None, False
                    continue
                return result


def make_transport(base_url: str, settings: ClientSettings | None = None) -> HttpTransport | AiohttpTransport:
    """The transport for ``base_url``: the raw client for http:// unless told otherwise."""
    settings = settings or ClientSettings()
    scheme = URL(base_url).scheme
    if settings.client == "raw" or (settings.client == "auto" and scheme == "http"):
        return HttpTransport(base_url, settings)
    return AiohttpTransport(base_url, settings)
