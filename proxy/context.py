"""What every connection of one proxy server shares: the server's settings, stages, pools, clock and
counters (``Context``), and the data path's counters (``ServerStats``).

Its own module so that the HTTP/1 data path (``shadowtap.proxy.server``) and the HTTP/2 one
(``shadowtap.proxy.h2server``) both import it and neither imports the other's types: the HTTP/1
server hands connections to the HTTP/2 one, never the reverse. Compiled with the data path (its
attributes are read on every request). It must never hold per-request state.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shadowtap.proxy.forward import ForwardSettings, default_max_client_connections
from shadowtap.proxy.rewrite import RequestRewriter
from shadowtap.proxy.stages import PrimaryObserver, Stage, StageErrors, watches_completion, watches_requests
from shadowtap.wire.client import Pool, PoolStats

__all__ = ["Context", "H2SessionLike", "ServerStats"]


@dataclass(slots=True)
class ServerStats:
    """Counters of the data path (plain ints and dicts; read by the admin stats and metrics)."""

    requests: int = 0
    in_flight: int = 0
    connections: int = 0
    upgrades: int = 0
    #: Primary exchanges that failed, by ``FailureKind`` (connect-error, timeout, reset, ...).
    primary_failures: dict[str, int] = field(default_factory=dict)
    #: Requests refused before reaching the primary (malformed, head too large), by status.
    client_errors: dict[int, int] = field(default_factory=dict)
    #: Client connections closed because a client-controlled wait passed its deadline, by what was
    #: awaited: ``head``, ``body``, ``send`` (the client read none of its response), ``linger``.
    client_timeouts: dict[str, int] = field(default_factory=dict)
    #: New connections closed at once because ``max_client_connections`` were open and busy.
    connections_refused: int = 0
    #: Idle (or head-sending) connections closed to make room for a new one at the cap.
    connections_evicted: int = 0
    #: Request or response copies cut because ``capture_budget_bytes`` was held already.
    capture_budget_cuts: int = 0
    stage_errors: StageErrors = field(default_factory=StageErrors)
    pool: PoolStats = field(default_factory=PoolStats)
    #: Client connections that spoke HTTP/2 (h2c or ALPN h2), and the streams they opened.
    h2_connections: int = 0
    h2_streams: int = 0
    #: HTTP/2 connections or streams ended for bad input, by cause (``shadowtap.proxy.h2server``).
    h2_errors: dict[str, int] = field(default_factory=dict)


class H2SessionLike(Protocol):
    """What the server does with a client connection handed over to HTTP/2 (``h2server.H2Session``)."""

    def sweep(self, now: float) -> None: ...

    def go_away(self) -> None: ...

    def abort(self) -> None: ...


class Context:
    """Per-server state shared by every connection (one object, so each holds one reference). The
    HTTP/1 server's subclass adds its own connections."""

    __slots__ = (
        "capture_budget",
        "capture_held",
        "capture_limit",
        "closing",
        "completion_stages",
        "connect_targets",
        "request_stages",
        "conn_ids",
        "h2_pool",
        "h2_sessions",
        "ids",
        "id_prefix",
        "loop",
        "now",
        "max_buffered",
        "max_connections",
        "max_header_bytes",
        "max_pipelined",
        "observers",
        "pool",
        "rewriter",
        "scheme",
        "settings",
        "stages",
        "stats",
        "via",
    )

    def __init__(
        self,
        settings: ForwardSettings,
        stages: Sequence[Stage],
        observers: Sequence[PrimaryObserver],
        pool: Pool,
        loop: asyncio.AbstractEventLoop,
        scheme: str,
    ) -> None:
        self.settings = settings
        self.stages = tuple(stages)
        self.request_stages = tuple(stage for stage in stages if watches_requests(stage))
        self.completion_stages = tuple(stage for stage in stages if watches_completion(stage))
        self.observers = tuple(observers)
        self.pool = pool
        self.loop = loop
        self.scheme = scheme
        self.rewriter = RequestRewriter(settings)
        self.via = self.rewriter.via
        self.capture_limit = settings.capture_limit_bytes
        self.max_header_bytes = settings.max_header_bytes
        self.max_pipelined = settings.max_pipelined
        self.max_buffered = settings.max_buffered_body_bytes
        self.connect_targets = frozenset(t.lower().encode("ascii") for t in settings.connect_targets)
        self.max_connections = settings.max_client_connections or default_max_client_connections()
        self.capture_budget = settings.capture_budget_bytes
        #: Bytes of request and response copies held by exchanges in flight (``capture_budget``).
        self.capture_held = 0
        #: The loop's clock as of the last sweep: deadlines need no better than its period.
        self.now = loop.time()
        self.stats = ServerStats(pool=pool.stats)
        #: Client connections handed over to HTTP/2, and the HTTP/2 pool to the primary (made on
        #: first use; False when the primary speaks HTTP/1): ``shadowtap.proxy.h2server``.
        self.h2_sessions: set[H2SessionLike] = set()
        self.h2_pool: Any = None
        # Exchange ids: unique across processes and restarts (random prefix), cheap to make.
        self.id_prefix = os.urandom(6).hex()
        self.ids = itertools.count(1)
        self.conn_ids = itertools.count(1)
        self.closing = False
