"""How the runner sends one request: a one-method interface and its implementations.

The runner only knows ``Transport.send``; tests drive the scheduler with ``MemoryTransport`` (a
handler function, no sockets). On the wire, ``HttpTransport`` is the default for ``http://``: a thin
adapter over ``shadowtap.wire.client``, the keep-alive HTTP/1.1 client on asyncio protocols with
llhttp (httptools) parsing that the proxy uses too, because the aiohttp client costs about ten times
more CPU per request and cannot meet the replayer's budget (bench/replay_bench.py).
``AiohttpTransport`` serves ``https://`` (certificate verification, SNI and proxies as aiohttp does
them) and ``--client aiohttp``. ``H2Transport`` (``shadowtap.replayer.h2transport``) sends over HTTP/2:
every request for an ``h2c://`` target or ``http_version="2"``, and otherwise the exchanges recorded
over HTTP/2 (``VersionedTransport`` routes each by its recorded version). ``make_transport`` picks.
A transport must never raise for an upstream failure: it returns a ``Failure`` classified as
connect, timeout, reset or bad response, so one dead target cannot stop a replay.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from shadowtap.differ.grpc import status_name
from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.model import (
    Failure,
    FailureKind,
    Headers,
    Outcome,
    Request,
    Response,
    header_value,
    new_response,
)

# Both live in a module of their own so the HTTP/2 transport can use them without importing this one.
from shadowtap.replayer.sending import ClientSettings, SendResult
from shadowtap.wire import client, http1

if TYPE_CHECKING:
    from shadowtap.replayer.h2transport import H2Transport

__all__ = [
    "AiohttpTransport",
    "ClientSettings",
    "HttpTransport",
    "MemoryTransport",
    "SendResult",
    "Transport",
    "VersionedTransport",
    "describe_outcome",
    "error_class",
    "grpc_error",
    "make_transport",
]

# aiohttp adds these when absent; a replay sends what was recorded, so they are never added.
_SKIP_AUTO_HEADERS: Final = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})


# Methods sent without a Content-Length when their body is empty (what clients do; a GET with
# ``Content-Length: 0`` is legal but unusual, and a recording did not have it).
_NO_LENGTH_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})


class Transport(Protocol):
    async def send(
        self, method: str, target: str, headers: Headers, body: bytes, recorded: Request | None = None
    ) -> SendResult:
        """Send the planned request (``method``, ``target``, ``headers`` and ``body`` after the plan's
        rewrites); ``recorded`` is the request as the tape holds it, for what the plan does not carry
        (its HTTP version, trailers and gRPC message timing)."""
        ...


#: The prefix of a gRPC error class: ``grpc-NOT_FOUND``.
GRPC_ERROR_PREFIX: Final = "grpc-"


def grpc_error(response: Response) -> str | None:
    """The error class of a gRPC answer that failed (``grpc-NOT_FOUND`` for ``grpc-status: 5``, in its
    trailers or, trailers-only, its headers), ``grpc-INTERNAL`` for a gRPC answer without any status
    (a call cut short, as gRPC clients count it); None for success or anything not gRPC over HTTP/2."""
    if response.http_version != "2":
        return None  # gRPC runs over HTTP/2 only: an HTTP/1 answer costs no header scan
    # One pass over each list, here rather than through ``header_value`` (every HTTP/2 answer
    # comes by): a name of another length is not lower-cased to be compared.
    content_type = b""
    for fields in (response.trailers, response.headers):
        for name, value in fields:
            size = len(name)
            if size == 11 and name.lower() == b"grpc-status":
                text = value.decode("latin-1").strip()
                return None if text == "0" else GRPC_ERROR_PREFIX + status_name(text)
            if size == 12 and not content_type and fields is response.headers and name.lower() == b"content-type":
                content_type = value
    if content_type.lower().startswith(b"application/grpc") and response.status == 200:
        return GRPC_ERROR_PREFIX + "INTERNAL"
    return None


def error_class(outcome: Outcome) -> str | None:
    """The stats error class of an outcome (``shadowtap.replayer.stats.ERROR_CLASSES``, or
    ``grpc-<STATUS>`` for a failed gRPC call), None when it is fine."""
    if isinstance(outcome, Response):
        return "5xx" if outcome.status >= 500 else grpc_error(outcome)
    return {
        FailureKind.CONNECT_ERROR: "connect",
        FailureKind.TIMEOUT: "timeout",
        FailureKind.RESET: "reset",
    }.get(outcome.kind, "other")


#: Longest failure message an error example keeps (an exception can carry a whole response).
_DETAIL_CHARS: Final = 200


def describe_outcome(outcome: Outcome) -> str:
    """One line saying what came back, for an error example: ``503 Service Unavailable``,
    ``200 NOT_FOUND: no product 7`` (a gRPC status and message) or
    ``connect-error: [Errno 111] Connection refused``."""
    if isinstance(outcome, Response):
        text = f"{outcome.status} {outcome.reason}".rstrip()
        grpc = grpc_error(outcome)
        if grpc is None:
            return text
        fields = outcome.trailers if header_value(outcome.trailers, b"grpc-status") is not None else outcome.headers
        message = (header_value(fields, b"grpc-message", b"") or b"").decode("latin-1").strip()
        text = f"{text} {grpc.removeprefix(GRPC_ERROR_PREFIX)}" + (f": {message}" if message else "")
    else:
        text = f"{outcome.kind}: {outcome.message}" if outcome.message else outcome.kind
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


class MemoryTransport:
    """A transport backed by an async handler: the scheduler's tests run without sockets."""

    def __init__(self, handler: Callable[[str, str, Headers, bytes], Awaitable[Outcome]]) -> None:
        self._handler = handler

    async def send(
        self, method: str, target: str, headers: Headers, body: bytes, recorded: Request | None = None
    ) -> SendResult:
        outcome = await self._handler(method, target, headers, body)
        return SendResult(outcome, time.monotonic_ns())


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

    async def send(
        self, method: str, target: str, headers: Headers, body: bytes, recorded: Request | None = None
    ) -> SendResult:
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


class HttpTransport:
    """The replayer's adapter over the HTTP/1.1 client of ``shadowtap.wire.client`` (the one the proxy
    uses for its primary and shadows), for ``http://`` targets (see the module docstring).

    Requests go out with the recorded headers in their recorded order and case; ``Host`` is the
    target's unless the plan set one, ``Content-Length`` is recomputed. Bodies come back as they
    were sent (no decompression), with the status line's reason phrase. At most ``max_connections``
    connections are open; idle ones are reused most-recent first, and closed after ``keepalive_s``.
    A pooled connection the target closed while idle is retried once for an idempotent method
    (``wire.client.fetch``). Use as an async context manager.
    """

    def __init__(self, base_url: str, settings: ClientSettings | None = None) -> None:
        url = URL(base_url)
        if url.scheme != "http" or not url.host:
            raise ConfigError(f"not an http:// URL: {base_url!r}", field="target")
        self._prefix = url.raw_path.rstrip("/").encode("latin-1")
        default_port = url.port is None or url.port == 80
        host_header = (url.raw_host or url.host) + ("" if default_port else f":{url.port}")
        self._host_field: list[tuple[bytes, bytes]] = [(b"Host", host_header.encode("latin-1"))]
        self._settings = s = settings or ClientSettings()
        # Bounded by max_connections: a connection is either idle in the pool or lent to one request.
        # A bare counter and the requests waiting for a slot in arrival order (asyncio.Semaphore costs
        # a coroutine and its checks on every request).
        self._free_slots = s.max_connections
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # The loop it runs on (set on entry): ``start`` needs it and looks it up no other way.
        self._loop: asyncio.AbstractEventLoop | None = None
        # The deadlines of what ``start`` sent, on one timer (set on entry).
        self._deadlines: client.Deadlines | None = None
        # Resends of stale keep-alives that start sent (the loop keeps only weak references to tasks).
        self._retries: set[asyncio.Task[None]] = set()
        self._pool = client.Pool(
            url.host,
            url.port or 80,
            connect_timeout_s=s.connect_timeout_s,
            max_idle=s.max_connections,
            # Replayed responses may carry large heads; the body limit is max_body_bytes.
            max_head_bytes=1024 * 1024,
            idle_timeout_s=s.keepalive_s,
            peer="target",
        )

    async def __aenter__(self) -> HttpTransport:
        self._loop = asyncio.get_running_loop()
        self._deadlines = client.Deadlines(self._loop, self._settings.timeout_s)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._pool.abort_all()
        if self._deadlines is not None:
            self._deadlines.close()

    def _request(self, method: str, target: str, headers: Headers, body: bytes) -> list[bytes]:
        has_host = any(name.lower() == b"host" for name, _ in headers)
        extra = [] if has_host else self._host_field
        if body or method not in _NO_LENGTH_METHODS:
            extra = [*extra, (b"Content-Length", b"%d" % len(body))]
        head = http1.request_head(method.encode("latin-1"), self._prefix + target.encode("latin-1"), headers, extra)
        return [head, body] if body else [head]

    def start(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes,
        recorded: Request | None,
        done: Callable[[SendResult], None],
    ) -> bool:
        """Send now without a task when a connection slot is free and the pool holds an open
        connection (a warm pool, most requests), and call ``done`` once with the result, from the
        loop's read of the answer or its deadline; False, nothing sent, when ``send`` must do it (a
        connection to dial, a slot to wait for, or used outside ``async with``)."""
        deadlines = self._deadlines
        if self._free_slots <= 0 or deadlines is None:
            return False
        conn = self._pool.try_acquire()
        if conn is None:
            return False
        self._free_slots -= 1
        request = self._request(method, target, headers, body)
        sending = _Sending(self, conn, method, request, done)
        max_body_bytes = self._settings.max_body_bytes
        client.start_fetch(deadlines, conn, method, request, max_body_bytes=max_body_bytes, callback=sending.fetched)
        return True

    async def send(
        self, method: str, target: str, headers: Headers, body: bytes, recorded: Request | None = None
    ) -> SendResult:
        request = self._request(method, target, headers, body)
        if self._free_slots > 0:
            self._free_slots -= 1
        else:
            await self._wait_for_slot()
        return await self._fetch_holding_slot(method, request)

    async def _fetch_holding_slot(self, method: str, request: list[bytes]) -> SendResult:
        """``fetch`` with a connection slot already taken, given back at the end."""
        s = self._settings
        try:
            result = await client.fetch(
                self._pool, method, request, timeout_s=s.timeout_s, max_body_bytes=s.max_body_bytes
            )
        finally:
            self._release_slot()
        return _send_result(result)

    async def _wait_for_slot(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot just as it was cancelled: it goes on
            raise

    def _release_slot(self) -> None:
        """A request is done with its connection: the slot goes to the first waiter still waiting."""
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # a cancelled waiter takes no slot
                waiter.set_result(None)
                return
        self._free_slots += 1


def _send_result(result: client.FetchedResponse | client.FetchFailure) -> SendResult:
    if isinstance(result, client.FetchFailure):
        return SendResult(Failure(result.kind, result.message))
    # Stored straight into its slots: the frozen constructor costs a microsecond more a request.
    reason = result.reason.decode("latin-1")
    response = new_response(result.status, reason, tuple(result.headers), result.body, result.http_version, None)
    return SendResult(response, result.first_byte_ns, result.done_ns)


class _Sending:
    """One request ``HttpTransport.start`` sent: hands its result to ``done``, after one retry on a
    new connection when the pooled one turned out closed by the target while idle (as ``fetch``
    does for an idempotent method; the retry needs a dial, so it runs as a task)."""

    __slots__ = ("conn", "done", "method", "request", "transport")

    def __init__(
        self,
        transport: HttpTransport,
        conn: client.Http1Connection,
        method: str,
        request: list[bytes],
        done: Callable[[SendResult], None],
    ) -> None:
        self.transport = transport
        self.conn = conn
        self.method = method
        self.request = request
        self.done = done

    def fetched(self, result: client.FetchedResponse | client.FetchFailure) -> None:
        transport = self.transport
        if (
            isinstance(result, client.FetchFailure)
            and result.kind == client.RESET
            and self.conn.stale
            and self.method in http1.IDEMPOTENT_METHODS
            and transport._loop is not None
        ):
            task = transport._loop.create_task(self._retry())
            transport._retries.add(task)
            task.add_done_callback(transport._retries.discard)
            return
        transport._release_slot()
        self.done(_send_result(result))

    async def _retry(self) -> None:
        try:
            result = await self.transport._fetch_holding_slot(self.method, self.request)
        except Exception as exc:  # a bug must still end the request, or the replay waits for it forever
            result = SendResult(Failure(FailureKind.OTHER, f"{type(exc).__name__}: {exc}"))
        self.done(result)


class VersionedTransport:
    """Each request over the HTTP version it was recorded in: HTTP/2 for ``http_version`` ``"2"``
    (h2c by prior knowledge for an ``http://`` target, ALPN ``h2`` for ``https://``), HTTP/1.1 for
    the rest. Both sides open connections only when first used."""

    def __init__(self, http1: HttpTransport | AiohttpTransport, http2: H2Transport) -> None:
        self.http1 = http1
        self.http2 = http2

    async def __aenter__(self) -> VersionedTransport:
        await self.http1.__aenter__()
        try:
            await self.http2.__aenter__()
        except BaseException:
            await self.http1.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.http2.__aexit__(*exc_info)
        finally:
            await self.http1.__aexit__(*exc_info)

    def start(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes,
        recorded: Request | None,
        done: Callable[[SendResult], None],
    ) -> bool:
        """``H2Transport.start`` for what goes over HTTP/2, ``HttpTransport.start`` for the rest
        (False for the aiohttp client: ``send`` it)."""
        if recorded is not None and recorded.http_version == "2":
            return self.http2.start(method, target, headers, body, recorded, done)
        http1 = self.http1
        if not isinstance(http1, HttpTransport):
            return False
        return http1.start(method, target, headers, body, recorded, done)

    def send(
        self, method: str, target: str, headers: Headers, body: bytes, recorded: Request | None = None
    ) -> Coroutine[Any, Any, SendResult]:
        # The chosen side's coroutine itself, not one awaiting it: no extra frame per request.
        if recorded is not None and recorded.http_version == "2":
            return self.http2.send(method, target, headers, body, recorded)
        return self.http1.send(method, target, headers, body)  # HTTP/1.1 needs no more than the plan


def make_transport(
    base_url: str, settings: ClientSettings | None = None
) -> HttpTransport | AiohttpTransport | H2Transport | VersionedTransport:
    """The transport for ``base_url``: HTTP/2 for ``h2c://`` or ``http_version="2"``; else the raw
    client for http:// unless told otherwise, with HTTP/2-recorded exchanges routed to HTTP/2 unless
    ``http_version="1.1"``."""
    from shadowtap.replayer.h2transport import H2Transport

    settings = settings or ClientSettings()
    scheme = URL(base_url).scheme
    if scheme == "h2c" or settings.http_version == "2":
        if settings.http_version == "1.1":
            raise ConfigError(f"an h2c:// target speaks HTTP/2 only: {base_url!r}", field="http-version")
        return H2Transport(base_url, settings)
    http1: HttpTransport | AiohttpTransport
    if settings.client == "raw" or (settings.client == "auto" and scheme == "http"):
        http1 = HttpTransport(base_url, settings)
    else:
        http1 = AiohttpTransport(base_url, settings)
    if settings.http_version == "1.1":
        return http1
    return VersionedTransport(http1, H2Transport(base_url, settings))
