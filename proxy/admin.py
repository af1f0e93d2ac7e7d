"""The admin API: health, readiness, Prometheus metrics, runtime flags (the kill switch) and stats.

An aiohttp.web server on its own port, loopback unless the config says otherwise, with an optional
bearer token on everything but ``/healthz`` and ``/readyz``. ``PUT /flags`` validates the whole
document before changing anything and takes effect at the next request in every worker (the flags
live in shared memory). This module must never touch the data path: it reads counters and flips
flags, nothing else.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from proxy.config import RuntimeFlags
from proxy.metrics import ProxyMetrics
from recorder.errors import ConfigError

__all__ = ["AdminServer"]

log = logging.getLogger(__name__)

_OPEN_PATHS: Final = frozenset({"/healthz", "/readyz"})
#: A flags document is a few hundred bytes; anything bigger is a mistake or an attack.
_MAX_FLAGS_BYTES: Final = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, indent=2, sort_keys=True) + "\n", content_type="application/json"
    )


class AdminServer:
    """Serves the admin API for one proxy process."""

    def __init__(
        self,
        flags: RuntimeFlags,
        metrics: ProxyMetrics,
        stats: Callable[[], dict[str, Any]],
        ready: Callable[[], bool],
        token: str | None = None,
    ) -> None:
        self._flags = flags
        self._metrics = metrics
        self._stats = stats
        self._ready = ready
        self._token = token
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
        return app

    async def start(self, host: str, port: int) -> int:
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

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._token is not None and request.path not in _OPEN_PATHS:
            expected = f"Bearer {self._token}".encode()
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return web.Response(
                    status=401, text="missing or wrong bearer token\n", headers={"WWW-Authenticate": "Bearer"}
                )
        return await handler(request)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        response = web.Response(body=self._metrics.render())
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
        return _json(self._stats())
