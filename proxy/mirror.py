"""The mirror stage: decides per shadow whether a request is mirrored, and sends the copies.

``request_complete`` runs on the data path and only decides and enqueues: kill switch and flags,
route rule, method, body size, sampling (consistent by key when configured), rate cap, queue space,
breaker. It writes the decision into ``exchange.decisions[shadow]`` and counts it. Each shadow then
has a bounded queue drained by ``concurrency`` worker tasks over a keep-alive pool of the same
llhttp-based upstream connections the data path uses for the primary (``proxy.upstream``: about a
third of aiohttp's client cost per copy), with its own timeouts, a response-size cap and a circuit
breaker; each outcome (``Response`` or ``Failure``) goes to the ``on_outcome`` listener (the record
stage). This module must never delay, fail or alter the primary exchange: nothing here awaits on
the data path, raises into it, or touches the objects the client's response is built from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from proxy import http1
from proxy.breaker import CircuitBreaker
from proxy.config import MirrorSettings, RuntimeFlags, ShadowSettings
from proxy.forward import PrimaryTarget, parse_primary
from proxy.metrics import ProxyMetrics
from proxy.rules import RouteTable
from proxy.sampling import TokenBucket, in_sample, key_in_sample
from proxy.stages import ProxiedExchange
from proxy.upstream import UpstreamConnection, UpstreamPool
from recorder.model import Failure, FailureKind, Header, Headers, Outcome, Response, Timing

__all__ = [
    "CORRELATION_HEADER",
    "MARKER_HEADER",
    "MIRRORED",
    "MirrorStage",
    "OutcomeListener",
    "ShadowMirror",
    "mirror_request_head",
]

log = logging.getLogger(__name__)

MIRRORED: Final = "mirrored"
MARKER_HEADER: Final = "X-Shadowtap-Shadow"
CORRELATION_HEADER: Final = "X-Shadowtap-Correlation-Id"
#: RFC 9110 7.6.1 hop-by-hop fields, plus the framing and routing fields set for the shadow here.
_NOT_FORWARDED: Final = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
        b"content-length", b"host",
    }
)  # fmt: skip
_MARKER_LINE: Final = f"{MARKER_HEADER}: 1\r\n{CORRELATION_HEADER}: ".encode()

#: (exchange id, shadow name, outcome, timing relative to the exchange start)
OutcomeListener = Callable[[str, str, Outcome, Timing], None]


@dataclass(slots=True)
class _Job:
    exchange_id: str
    method: str
    target: str
    headers: Headers
    authority: str
    body: bytes
    started_mono_ns: int
    enqueued_s: float


def _connection_listed(headers: Headers) -> frozenset[bytes]:
    listed: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            listed.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return frozenset(listed)


def mirror_request_head(
    method: str,
    target: str,
    headers: Headers,
    body_size: int,
    *,
    shadow: ShadowSettings,
    upstream: PrimaryTarget,
    drop: frozenset[bytes],
    credentials: Sequence[tuple[bytes, bytes]],
    exchange_id: str,
    authority: str,
) -> bytes:
    """The request head a shadow gets: same method, target and headers (order, case, repeats), minus
    hop-by-hop fields and credentials, plus shadow credentials, the marker and the correlation id."""
    listed = _connection_listed(headers) if any(n.lower() == b"connection" for n, _ in headers) else frozenset()
    if shadow.host is not None:
        host = shadow.host.encode("latin-1")
    elif shadow.preserve_host and authority:
        host = authority.encode("latin-1")
    else:
        host = upstream.authority
    parts: list[bytes] = [
        method.encode("ascii"), b" ", upstream.path_prefix, target.encode("latin-1"), b" HTTP/1.1\r\nHost: ",
        host, b"\r\n",
    ]  # fmt: skip
    had_length = False
    for name, value in headers:
        lower = name.lower()
        if lower in drop or lower in listed:
            had_length = had_length or lower in (b"content-length", b"transfer-encoding")
            continue
        parts += (name, b": ", value, b"\r\n")
    for name, value in credentials:
        parts += (name, b": ", value, b"\r\n")
    parts += (_MARKER_LINE, exchange_id.encode("ascii"), b"\r\n")
    if body_size or had_length:
        parts += (b"Content-Length: ", str(body_size).encode("ascii"), b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class _ShadowResponse:
    """Collects one shadow response from an ``UpstreamConnection`` (its ``ResponseSink``)."""

    __slots__ = ("cap", "chunks", "done", "first_byte_ns", "headers", "reason", "size", "status")

    def __init__(self, done: asyncio.Future[Failure | bool], cap: int) -> None:
        self.done = done
        self.cap = cap
        self.chunks: list[bytes] = []
        self.size = 0
        self.status = 0
        self.reason = b""
        self.headers: list[Header] = []
        self.first_byte_ns: int | None = None

    def on_interim(self, status: int, reason: bytes, headers: list[Header]) -> None:
        return None

    def on_head(
        self, status: int, reason: bytes, headers: list[Header], kept: list[Header], framing: http1.ResponseFraming
    ) -> None:
        self.first_byte_ns = time.monotonic_ns()
        self.status, self.reason, self.headers = status, reason, headers

    def on_body(self, data: bytes) -> None:
        room = self.cap - self.size
        if room > 0:
            self.chunks.append(data if len(data) <= room else data[:room])
        self.size += len(data)

    def on_complete(self, reusable: bool) -> None:
        if not self.done.done():
            self.done.set_result(reusable)

    def on_upgraded(self, rest: bytes) -> None:
        self.on_failure(FailureKind.BAD_RESPONSE, "shadow switched protocols")

    def on_failure(self, kind: str, message: str) -> None:
        if not self.done.done():
            self.done.set_result(Failure(kind, message.replace("primary", "shadow")))

    def flush(self) -> None:
        return None

    def upstream_write_paused(self, paused: bool) -> None:
        # A copy's body is at most max_body_bytes and already in memory; the transport buffers it.
        return None

    def response(self) -> Response:
        return Response(
            status=self.status,
            reason=self.reason.decode("latin-1"),
            headers=tuple(self.headers),
            body=b"".join(self.chunks),
            truncated_from=self.size if self.size > self.cap else None,
        )


def _client_ssl(settings: ShadowSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.ca_file)
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class ShadowMirror:
    """One shadow's queue, workers, connection pool, breaker and rate cap."""

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
        self._drop = (
            _NOT_FORWARDED
            | {h.encode("latin-1") for h in settings.strip_headers}
            | {name.lower() for name, _ in self._credentials}
        )
        self._target = parse_primary(settings.url, field=f"shadows.{settings.name}.url")
        self.breaker = CircuitBreaker(settings.breaker)
        self._bucket: TokenBucket | None = None
        # Bounded: see ShadowSettings.queue_size (memory a stuck shadow can pin; drops are counted).
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=settings.queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._pool: UpstreamPool | None = None
        self.in_flight = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.settings.rate_per_s is not None:
            burst = self.settings.burst if self.settings.burst is not None else max(1.0, self.settings.rate_per_s)
            self._bucket = TokenBucket(self.settings.rate_per_s, burst, loop.time())
        ssl_context = await asyncio.to_thread(_client_ssl, self.settings) if self._target.tls else None
        # One connection per worker: the concurrency cap is also the connection cap.
        self._pool = UpstreamPool(
            self._target,
            ssl_context=ssl_context,
            connect_timeout_s=self.settings.connect_timeout_s,
            max_idle=self.settings.concurrency,
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
        self.queue.put_nowait(
            _Job(
                exchange.id,
                exchange.method,
                exchange.target,
                exchange.request_headers,
                exchange.authority,
                exchange.request_body or b"",
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
        pool = self._pool
        assert pool is not None
        head = mirror_request_head(
            job.method,
            job.target,
            job.headers,
            len(job.body),
            shadow=self.settings,
            upstream=self._target,
            drop=self._drop,
            credentials=self._credentials,
            exchange_id=job.exchange_id,
            authority=job.authority,
        )
        sent_ns = time.monotonic_ns()
        sink: _ShadowResponse | None = None
        outcome: Outcome
        try:
            async with asyncio.timeout(self.settings.total_timeout_s):
                conn = pool.try_acquire()
                reused = conn is not None
                if conn is None:
                    conn = await pool.connect()
                sink, result = await self._attempt(conn, head, job, loop)
                if (
                    reused
                    and isinstance(result, Failure)
                    and result.kind == FailureKind.RESET
                    and not conn.received_any
                ):
                    # A pooled connection the shadow closed while idle: resend once on a fresh one.
                    conn = await pool.connect()
                    sink, result = await self._attempt(conn, head, job, loop)
                if isinstance(result, Failure):
                    outcome = result
                else:
                    if result:
                        pool.release(conn)
                    else:
                        conn.close()
                    outcome = sink.response()
        except TimeoutError:
            outcome = Failure(FailureKind.TIMEOUT, f"no complete response within {self.settings.total_timeout_s} s")
        except (OSError, ssl.SSLError) as exc:
            outcome = Failure(FailureKind.CONNECT_ERROR, f"cannot connect to shadow: {exc}")
        done_ns = time.monotonic_ns()
        if isinstance(outcome, Response):
            self.breaker.record_success(loop.time())
            self._metrics.observe_shadow(self.settings.name, (done_ns - sent_ns) / 1e9)
        else:
            self.breaker.record_failure(loop.time())
        base = job.started_mono_ns
        first_byte_ns = None if sink is None or sink.first_byte_ns is None else sink.first_byte_ns - base
        self._finish(job, outcome, Timing(sent_ns - base, first_byte_ns, done_ns - base))

    async def _attempt(
        self, conn: UpstreamConnection, head: bytes, job: _Job, loop: asyncio.AbstractEventLoop
    ) -> tuple[_ShadowResponse, Failure | bool]:
        sink = _ShadowResponse(loop.create_future(), self.settings.max_response_bytes)
        conn.begin(sink, head_only=job.method == "HEAD")
        conn.writelines([head, job.body] if job.body else [head])
        try:
            return sink, await sink.done
        except BaseException:
            conn.detach()  # timed out or cancelled mid-exchange: the connection cannot be reused
            raise

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
        """Cancel the workers (in-flight and queued copies end as ``cancelled``), close the pool."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        while not self.queue.empty():
            job = self.queue.get_nowait()
            self._finish(job, Failure(FailureKind.CANCELLED, "proxy shutting down"), Timing())
            self.queue.task_done()
        if self._pool is not None:
            self._pool.abort_all()
            self._pool = None

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
