"""The admin API: health, readiness, Prometheus metrics, runtime flags (the kill switch) and stats.

An aiohttp.web server on its own port, loopback unless the config says otherwise, with an optional
bearer token on everything but ``/healthz`` and ``/readyz`` (and ``/metrics`` when
``admin.public_metrics`` says so, for annotation-based Prometheus scraping, which sends no token; the
flags and stats stay behind the token). ``PUT /flags`` validates the whole
document before changing anything and takes effect at the next request in every worker (the flags
live in shared memory). This module must never touch the data path: it reads counters and flips
flags, nothing else.

With ``--workers N`` the parent process serves the admin API on the configured address for all
workers at once (``WorkersSource``): it asks each worker's own admin server (loopback, a port of its
own) and answers with every worker's metrics under a ``worker`` label, each worker's stats, health
and readiness only when every worker has them, and the shared flags directly.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from shadowtap.proxy.config import is_loopback_host
from shadowtap.proxy.flags import RuntimeFlags
from shadowtap.proxy.metrics import ProxyMetrics
from shadowtap.recorder.errors import ConfigError

if TYPE_CHECKING:
    from shadowtap.proxy.live_admin import LiveAdmin

__all__ = ["AdminServer", "AdminSource", "LocalSource", "WorkersSource", "merge_worker_metrics"]

log = logging.getLogger(__name__)

_OPEN_PATHS: Final = frozenset({"/healthz", "/readyz"})
#: A flags document is a few hundred bytes; anything bigger is a mistake or an attack.
_MAX_FLAGS_BYTES: Final = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, indent=2, sort_keys=True) + "\n", content_type="application/json"
    )


class AdminSource(Protocol):
    """What the admin API reports: one process's own figures, or every worker's."""

    async def health(self) -> str | None:
        """None when healthy, else why not (one line)."""
        ...

    async def ready(self) -> bool: ...

    async def metrics(self) -> bytes:
        """The Prometheus text exposition."""
        ...

    async def stats(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class LocalSource:
    """The figures of the process the admin server runs in."""

    def __init__(self, metrics: ProxyMetrics, stats: Callable[[], dict[str, Any]], ready: Callable[[], bool]) -> None:
        self._metrics = metrics
        self._stats = stats
        self._ready = ready

    async def health(self) -> str | None:
        return None

    async def ready(self) -> bool:
        return self._ready()

    async def metrics(self) -> bytes:
        return self._metrics.render()

    async def stats(self) -> dict[str, Any]:
        return self._stats()

    async def aclose(self) -> None:
        return None


class _WorkerAnswer:
    """One worker admin server's answer to one GET: the status and body, or why there was none."""

    __slots__ = ("body", "error", "status")

    def __init__(self, status: int = 0, body: bytes = b"", error: str = "") -> None:
        self.status = status
        self.body = body
        self.error = error

    @property
    def ok(self) -> bool:
        return self.status == 200


class WorkersSource:
    """Every worker's figures, asked of each worker's own admin server (``--workers N``).

    Each GET goes to all workers at once with a short timeout: a worker that does not answer makes
    ``/healthz`` and ``/readyz`` fail, shows as ``shadowtap_worker_up 0`` in the metrics, and as an
    ``error`` in the stats, without holding up the others' figures.
    """

    def __init__(self, worker_urls: Sequence[str], token: str | None, timeout_s: float = 2.0) -> None:
        self.worker_urls = list(worker_urls)
        self._headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def _get_all(self, path: str) -> list[_WorkerAnswer]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return list(await asyncio.gather(*(self._get(url + path) for url in self.worker_urls)))

    async def _get(self, url: str) -> _WorkerAnswer:
        assert self._session is not None
        try:
            async with self._session.get(url) as response:
                return _WorkerAnswer(response.status, await response.read())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return _WorkerAnswer(error=f"{type(exc).__name__}: {exc}".rstrip(": "))

    @staticmethod
    def _why(answer: _WorkerAnswer) -> str:
        return answer.error or f"answered {answer.status}"

    async def health(self) -> str | None:
        answers = await self._get_all("/healthz")
        bad = [f"worker {i}: {self._why(a)}" for i, a in enumerate(answers) if not a.ok]
        return "; ".join(bad) if bad else None

    async def ready(self) -> bool:
        return all(answer.ok for answer in await self._get_all("/readyz"))

    async def metrics(self) -> bytes:
        answers = await self._get_all("/metrics")
        return merge_worker_metrics([a.body.decode("utf-8", "replace") if a.ok else None for a in answers])

    async def stats(self) -> dict[str, Any]:
        answers = await self._get_all("/stats")
        workers: list[dict[str, Any]] = []
        for i, (url, answer) in enumerate(zip(self.worker_urls, answers, strict=True)):
            entry: dict[str, Any] = {"worker": i, "admin": url}
            if answer.ok:
                try:
                    entry["stats"] = json.loads(answer.body)
                except ValueError as exc:
                    entry["error"] = f"stats are not JSON: {exc}"
            else:
                entry["error"] = self._why(answer)
            workers.append(entry)
        return {"workers": workers}

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Families:
    """A collector over metric families already built (for rendering them with prometheus_client)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge_worker_metrics(expositions: Sequence[str | None]) -> bytes:
    """One exposition from every worker's (``None`` for a worker that did not answer): each sample
    gains a ``worker`` label (the index), families keep their help and type once, and
    ``shadowtap_worker_up`` says which workers answered. Sum over ``worker`` in queries for totals."""
    merged: dict[str, Metric] = {}
    up = Metric("shadowtap_worker_up", "1 when the worker's admin server answered this scrape", "gauge")
    for worker, text in enumerate(expositions):
        up.add_sample("shadowtap_worker_up", {"worker": str(worker)}, 0.0 if text is None else 1.0)
        if text is None:
            continue
        for family in text_string_to_metric_families(text):
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labels = {"worker": str(worker), **sample.labels}
                target.add_sample(sample.name, labels, sample.value, sample.timestamp, sample.exemplar)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([up, *merged.values()]))
    return generate_latest(registry)


class AdminServer:
    """Serves the admin API: for one proxy process (``LocalSource``) or for its workers."""

    def __init__(
        self,
        flags: RuntimeFlags,
        source: AdminSource,
        token: str | None = None,
        *,
        public_metrics: bool = False,
        live: LiveAdmin | None = None,
    ) -> None:
        self._flags = flags
        self._source = source
        self._token = token
        self._open_paths = _OPEN_PATHS | {"/metrics"} if public_metrics else _OPEN_PATHS
        # The live view (shadowtap.proxy.live_admin): /diff behind the token, its static page open.
        self._live = live
        if live is not None:
            self._open_paths = self._open_paths | live.open_paths
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=_MAX_FLAGS_BYTES)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_get("/flags", self._get_flags)
        app.router.add_put("/flags", self._put_flags)
        app.router.add_get("/stats", self._stats_handler)
        if self._live is not None:
            self._live.register(app)
        return app

    async def start(self, host: str, port: int) -> int:
        if self._token is None and not is_loopback_host(host):
            # The config refuses this unless told admin.insecure_no_token; say so where it is seen.
            log.warning(
                "the admin API on %s has no token: anyone who can reach it can switch recording and mirroring "
                "(admin.insecure_no_token)",
                host or "every interface",
            )
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._source.aclose()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._token is not None and request.path not in self._open_paths:
            expected = f"Bearer {self._token}".encode()
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return web.Response(
                    status=401, text="missing or wrong bearer token\n", headers={"WWW-Authenticate": "Bearer"}
                )
        return await handler(request)

    async def _healthz(self, request: web.Request) -> web.Response:
        why = await self._source.health()
        if why is None:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=f"unhealthy: {why}\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if await self._source.ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        response = web.Response(body=await self._source.metrics())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _get_flags(self, request: web.Request) -> web.Response:
        return _json(self._flags.snapshot())

    async def _put_flags(self, request: web.Request) -> web.Response:
        try:
            document = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as exc:
            return _json({"error": f"body is not JSON: {exc}"}, 400)
        try:
            self._flags.apply(document)
        except ConfigError as exc:
            return _json({"error": str(exc)}, 400)
        # An audit trail: who threw the kill switch, and when, belongs in the log.
        log.warning("runtime flags changed by %s: %s", request.remote, json.dumps(document, sort_keys=True))
        return _json(self._flags.snapshot())

    async def _stats_handler(self, request: web.Request) -> web.Response:
        return _json(await self._source.stats())
