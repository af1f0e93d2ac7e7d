"""How the runner sends one request: a one-method interface, an in-memory transport and aiohttp.

The runner only knows ``Transport.send``; tests drive the scheduler with ``MemoryTransport`` (a
handler function, no sockets) and real-socket tests prove ``AiohttpTransport`` on the wire. A
transport must never raise for an upstream failure: it returns a ``Failure`` classified as connect,
timeout, reset or bad response, so one dead target cannot stop a replay.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from recorder.errors import ConfigError
from recorder.model import Failure, FailureKind, Headers, Outcome, Response

__all__ = [
    "AiohttpTransport",
    "ClientSettings",
    "MemoryTransport",
    "SendResult",
    "Transport",
    "error_class",
]

# aiohttp adds these when absent; a replay sends what was recorded, so they are never added.
_SKIP_AUTO_HEADERS: Final = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})


@dataclass(frozen=True, slots=True)
class SendResult:
    """What came back: the outcome, and when its head arrived (monotonic ns, None on failure)."""

    outcome: Outcome
    first_byte_ns: int | None = None


class Transport(Protocol):
    async def send(self, method: str, target: str, headers: Headers, body: bytes) -> SendResult: ...


def error_class(outcome: Outcome) -> str | None:
    """The stats error class of an outcome (``replayer.stats.ERROR_CLASSES``), None when it is fine."""
    if isinstance(outcome, Response):
        return "5xx" if outcome.status >= 500 else None
    return {
        FailureKind.CONNECT_ERROR: "connect",
        FailureKind.TIMEOUT: "timeout",
        FailureKind.RESET: "reset",
    }.get(outcome.kind, "other")


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

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ConfigError(f"must be >= 1, got {self.max_connections}", field="connections")
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
                payload = await resp.read()
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
