"""The mirror stage: decides per shadow whether a request is mirrored, and sends the copies.

``request_complete`` runs on the data path and only decides and enqueues: kill switch and flags,
route rule, method, body size, sampling (consistent by key when configured), rate cap, queue space,
breaker. It writes the decision into ``exchange.decisions[shadow]`` and counts it. Each shadow then
has a bounded queue drained by ``concurrency`` worker tasks through its own aiohttp session, with
its own timeouts, a response-size cap and a circuit breaker; each outcome (``Response`` or
``Failure``) goes to the ``on_outcome`` listener (the record stage). This module must never delay,
fail or alter the primary exchange: nothing here awaits on the data path, raises into it, or
touches the objects the client's response is built from.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.breaker import CircuitBreaker
from proxy.config import MirrorSettings, RuntimeFlags, ShadowSettings
from proxy.metrics import ProxyMetrics
from proxy.rules import RouteTable
from proxy.sampling import TokenBucket, in_sample, key_in_sample
from proxy.stages import ProxiedExchange
from recorder.model import Failure, FailureKind, Headers, Outcome, Response, Timing

__all__ = ["CORRELATION_HEADER", "MARKER_HEADER", "MIRRORED", "MirrorStage", "OutcomeListener", "ShadowMirror"]

log = logging.getLogger(__name__)

MIRRORED: Final = "mirrored"
MARKER_HEADER: Final = "X-Shadowtap-Shadow"
CORRELATION_HEADER: Final = "X-Shadowtap-Correlation-Id"
#: RFC 9110 7.6.1 hop-by-hop fields, plus the framing and routing fields the shadow client sets.
_NOT_FORWARDED: Final = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
        b"content-length", b"host",
    }
)  # fmt: skip
# Header names aiohttp would otherwise add on its own; the shadow must see the client's headers.
_SKIP_AUTO_HEADERS: Final = ("User-Agent", "Accept-Encoding", "Accept", "Content-Type")

#: (exchange id, shadow name, outcome, timing relative to the exchange start)
OutcomeListener = Callable[[str, str, Outcome, Timing], None]


@dataclass(slots=True)
class _Job:
    exchange_id: str
    method: str
    target: str
    headers: CIMultiDict[str]
    body: bytes | None
    started_mono_ns: int
    enqueued_s: float


def _connection_listed(headers: Headers) -> frozenset[bytes]:
    listed: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            listed.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return frozenset(listed)


def mirror_headers(
    headers: Headers,
    shadow: ShadowSettings,
    credentials: Sequence[tuple[bytes, bytes]],
    exchange_id: str,
    authority: str,
) -> CIMultiDict[str]:
    """The headers a shadow gets: hop-by-hop and credentials removed, marker and correlation id added."""
    drop = _NOT_FORWARDED | _connection_listed(headers) | {h.encode("latin-1") for h in shadow.strip_headers}
    drop |= {name.lower() for name, _ in credentials}
    out: CIMultiDict[str] = CIMultiDict()
    # aiohttp's session replaces (rather than adds) a repeat whose name differs in case, so repeats
    # are sent under the first spelling: values and order survive, header names are case-blind.
    spelling: dict[bytes, str] = {}
    for name, value in headers:
        lower = name.lower()
        if lower not in drop:
            out.add(spelling.setdefault(lower, name.decode("latin-1")), value.decode("latin-1"))
    for name, value in credentials:
        out.add(name.decode("latin-1"), value.decode("latin-1"))
    if shadow.host is not None:
        out["Host"] = shadow.host
    elif shadow.preserve_host and authority:
        out["Host"] = authority
    out[MARKER_HEADER] = "1"
    out[CORRELATION_HEADER] = exchange_id
    return out


def _failure_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return FailureKind.TIMEOUT
    if isinstance(exc, aiohttp.ClientConnectorError):
        return FailureKind.CONNECT_ERROR
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return FailureKind.RESET
    if isinstance(exc, aiohttp.ClientOSError):
        return FailureKind.RESET if exc.errno in (errno.ECONNRESET, errno.EPIPE) else FailureKind.CONNECT_ERROR
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return FailureKind.BAD_RESPONSE
    return FailureKind.OTHER


class ShadowMirror:
    """One shadow's queue, workers, session, breaker and rate cap."""

    def __init__(
        self,
        settings: ShadowSettings,
        index: int,
        metrics: ProxyMetrics,
        on_outcome: OutcomeListener | None,
    ) -> None:
        self.settings = settings
        self.index = index
        self._metrics = metrics
        self._on_outcome = on_outcome
        self._credentials = settings.credential_values()
        self._base = settings.url.rstrip("/")
        self.breaker = CircuitBreaker(settings.breaker)
        self._bucket: TokenBucket | None = None
        # Bounded: see ShadowSettings.queue_size (memory a stuck shadow can pin; drops are counted).
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=settings.queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.in_flight = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.settings.rate_per_s is not None:
            burst = self.settings.burst if self.settings.burst is not None else max(1.0, self.settings.rate_per_s)
            self._bucket = TokenBucket(self.settings.rate_per_s, burst, loop.time())
        ssl_option: ssl.SSLContext | bool = True
        if not self.settings.tls_verify:
            ssl_option = False
        elif self.settings.ca_file is not None:
            ssl_option = ssl.create_default_context(cafile=self.settings.ca_file)
        # One connection per worker: the concurrency cap is also the connection cap.
        connector = aiohttp.TCPConnector(limit=self.settings.concurrency, ssl=ssl_option, enable_cleanup_closed=False)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.settings.total_timeout_s, connect=self.settings.connect_timeout_s),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
        )
        self._workers = [
            asyncio.create_task(self._work(), name=f"mirror-{self.settings.name}-{i}")
            for i in range(self.settings.concurrency)
        ]

    def offer(self, exchange: ProxiedExchange, now_s: float) -> str:
        """Queue a copy of ``exchange`` if the rate cap, queue and breaker allow; return the decision."""
        if self._bucket is not None and not self._bucket.try_take(now_s):
            return FailureKind.RATE_LIMITED
        if self.queue.full():
            return FailureKind.QUEUE_FULL
        if not self.breaker.allow(now_s):
            return FailureKind.BREAKER_OPEN
        headers = mirror_headers(
            exchange.request_headers, self.settings, self._credentials, exchange.id, exchange.authority
        )
        self.queue.put_nowait(
            _Job(
                exchange.id,
                exchange.method,
                exchange.target,
                headers,
                exchange.request_body or None,
                exchange.started_mono_ns,
                now_s,
            )
        )
        return MIRRORED

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self.queue.get()
            try:
                if loop.time() - job.enqueued_s > self.settings.total_timeout_s:
                    # Stale: the shadow is too far behind for this copy to be worth sending.
                    self._finish(job, Failure(FailureKind.TIMEOUT, "waited too long in the mirror queue"), Timing())
                    self.breaker.record_failure(loop.time())
                    continue
                self.in_flight += 1
                try:
                    await self._send(job, loop)
                finally:
                    self.in_flight -= 1
            except asyncio.CancelledError:
                self._finish(job, Failure(FailureKind.CANCELLED, "proxy shutting down"), Timing())
                raise
            except Exception:  # a bug here must not kill the worker and stall the queue
                log.exception("mirror worker for %s failed", self.settings.name)
            finally:
                self.queue.task_done()

    async def _send(self, job: _Job, loop: asyncio.AbstractEventLoop) -> None:
        assert self._session is not None
        sent_ns = time.monotonic_ns()
        first_byte_ns: int | None = None
        outcome: Outcome
        try:
            async with self._session.request(
                job.method,
                URL(self._base + job.target, encoded=True),
                headers=job.headers,
                data=job.body,
                allow_redirects=False,
            ) as resp:
                first_byte_ns = time.monotonic_ns()
                cap = self.settings.max_response_bytes
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_any():
                    if size < cap:
                        chunks.append(chunk[: cap - size])
                    size += len(chunk)
                outcome = Response(
                    status=resp.status,
                    reason=resp.reason or "",
                    headers=tuple(resp.raw_headers),
                    body=b"".join(chunks),
                    http_version=f"{resp.version.major}.{resp.version.minor}" if resp.version else "1.1",
                    truncated_from=size if size > cap else None,
                )
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            outcome = Failure(_failure_kind(exc), str(exc) or type(exc).__name__)
        done_ns = time.monotonic_ns()
        if isinstance(outcome, Response):
            self.breaker.record_success(loop.time())
            self._metrics.observe_shadow(self.settings.name, (done_ns - sent_ns) / 1e9)
        else:
            self.breaker.record_failure(loop.time())
        base = job.started_mono_ns
        self._finish(
            job,
            outcome,
            Timing(sent_ns - base, None if first_byte_ns is None else first_byte_ns - base, done_ns - base),
        )

    def _finish(self, job: _Job, outcome: Outcome, timing: Timing) -> None:
        self._metrics.count_mirror(self.settings.name, "ok" if isinstance(outcome, Response) else outcome.kind)
        if self._on_outcome is not None:
            try:
                self._on_outcome(job.exchange_id, self.settings.name, outcome, timing)
            except Exception:
                log.exception("mirror outcome listener failed for %s", self.settings.name)

    async def drain(self) -> None:
        await self.queue.join()

    async def stop(self) -> None:
        """Cancel the workers (in-flight and queued copies end as ``cancelled``), close the session."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        while not self.queue.empty():
            job = self.queue.get_nowait()
            self._finish(job, Failure(FailureKind.CANCELLED, "proxy shutting down"), Timing())
            self.queue.task_done()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def stats(self) -> dict[str, Any]:
        return {
            "queue_depth": self.queue.qsize(),
            "queue_size": self.settings.queue_size,
            "in_flight": self.in_flight,
            "breaker": self.breaker.state,
            "breaker_opened": self.breaker.times_opened,
        }


class MirrorStage:
    """The stage that mirrors sampled, safe requests to every configured shadow."""

    name = "mirror"

    def __init__(
        self,
        shadows: Sequence[ShadowSettings],
        settings: MirrorSettings,
        flags: RuntimeFlags,
        metrics: ProxyMetrics,
        on_outcome: OutcomeListener | None = None,
    ) -> None:
        self._settings = settings
        self._routes = RouteTable(settings.routes)
        self._flags = flags
        self._metrics = metrics
        self.shadows = [ShadowMirror(s, flags.shadow_index[s.name], metrics, on_outcome) for s in shadows]
        self._closed = False
        metrics.add_source(
            "gauge", "shadowtap_mirror_queue_depth", "Copies waiting in each shadow's queue", "shadow",
            lambda: {m.settings.name: float(m.queue.qsize()) for m in self.shadows},
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
        rule = self._routes.match(method, exchange.target.split("?", 1)[0])
        body = exchange.request_body
        key: bytes | None = None
        if self._settings.sample_key is not None:
            key = self._settings.sample_key.extract(exchange.target, exchange.request_headers)
        now_s = asyncio.get_running_loop().time()
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
            else:
                percent = rule.sample_percent if rule.sample_percent is not None else flags.shadow_percent(shadow.index)
                sampled = key_in_sample(key, percent) if key is not None else in_sample(percent)
                decision = shadow.offer(exchange, now_s) if sampled else FailureKind.SAMPLED_OUT
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
