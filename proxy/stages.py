"""The seam between the proxy's data path and everything that watches it (mirror, record, events).

The data path (``shadowtap.proxy.server``) owns the client and primary sockets. For every request it fills one
``ProxiedExchange`` and calls each ``Stage`` twice: ``request_complete`` once the request body is
known, ``exchange_complete`` once the primary's response has been delivered to the client (or has
failed; only for stages that watch completion). A ``PrimaryObserver`` (the metrics) gets one cheap
call per exchange instead. Stages run on the event loop and must return at once: anything slow (shadow requests, disk,
diffs) is queued by the stage and done elsewhere. A stage must never alter the exchange's request
or response, never block, and never raise into the data path: the data path still guards each call
(``call_stage``), counts a failure and carries on, so a broken stage cannot cost a primary request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from shadowtap.recorder.model import Failure, Headers, Response, StreamMessage, Timing

__all__ = [
    "NOT_TIMED",
    "PrimaryObserver",
    "ProxiedExchange",
    "Stage",
    "StageErrors",
    "call_stage",
    "watches_completion",
    "watches_requests",
]

log = logging.getLogger(__name__)

#: An exchange's ``timing`` until it ends (the data path replaces it then, before exchange_complete).
NOT_TIMED: Final = Timing()


@dataclass(slots=True)
class ProxiedExchange:
    """One request passing through the proxy, filled in by the data path as it progresses.

    ``request_body`` is the complete request body when it was at most the capture limit, else
    ``None`` (it was streamed to the primary without being kept; ``request_body_size`` still counts
    it). ``response`` carries the primary's head and the body captured up to the capture limit, with
    ``truncated_from`` set when cut. ``timing`` is relative to ``started_mono_ns``. ``upgraded`` is
    true for WebSocket / Upgrade requests (never mirrored).

    HTTP/2 streams (``shadowtap.proxy.h2server``) also fill ``request_trailers`` and, for gRPC calls
    (``grpc``: a ``content-type: application/grpc*`` request), ``request_messages``; their
    ``response`` carries its trailers and messages likewise. HTTP/1 leaves them empty.
    """

    id: str
    connection_id: str
    client_addr: str
    started_at_ns: int
    started_mono_ns: int
    method: str
    target: str
    http_version: str
    request_headers: Headers
    scheme: str = "http"
    authority: str = ""
    request_body: bytes | None = b""
    request_body_size: int = 0
    upgraded: bool = False
    response: Response | None = None
    failure: Failure | None = None
    #: Replaced (never mutated: Timing is frozen) when the exchange ends, so one shared default serves.
    timing: Timing = NOT_TIMED
    #: Set by stages for the wide event and the tape: shadow name -> "mirrored" or drop reason.
    decisions: dict[str, str] = field(default_factory=dict)
    #: The request's trailer fields (HTTP/2).
    request_trailers: Headers = ()
    #: The gRPC request messages' framing and timing (the bytes stay in ``request_body``).
    request_messages: tuple[StreamMessage, ...] = ()
    #: A gRPC call over HTTP/2 (mirrored only where a route opts its method in).
    grpc: bool = False


class Stage(Protocol):
    """Something that watches exchanges. Both calls run on the event loop and must return at once.

    A stage whose ``exchange_complete`` does nothing sets a class attribute ``watches_completion =
    False`` (read with a default of True, so other stages need not declare it): when no stage
    watches completion the data path skips building the exchange's ``Response`` and ``Timing``.
    Likewise ``watches_requests = False`` for a stage whose ``request_complete`` does nothing: the
    data path then does not call it.
    """

    name: str

    def request_complete(self, exchange: ProxiedExchange) -> None: ...

    def exchange_complete(self, exchange: ProxiedExchange) -> None: ...

    async def aclose(self, timeout_s: float) -> None:
        """Stop taking work, finish or drop queued work within ``timeout_s``."""
        ...


class PrimaryObserver(Protocol):
    """Something that only counts primary outcomes (the metrics): cheaper than a ``Stage``.

    The data path calls ``observe_primary`` once per exchange with the status (``None`` when no
    response head came), whether it failed, and its duration in ns (``None`` when the request never
    reached the primary), without building a ``Response`` or ``Timing``, so pass-through with
    metrics still pays for no copies. Same rules as a stage: return at once, never raise.
    """

    name: str

    def observe_primary(self, status: int | None, failed: bool, done_ns: int | None) -> None: ...


@dataclass(slots=True)
class StageErrors:
    """How many times each stage raised into the data path (a bug, but never a lost request)."""

    by_stage: dict[str, int] = field(default_factory=dict)


def watches_requests(stage: Stage) -> bool:
    """Whether ``stage`` needs ``request_complete`` (see ``Stage``)."""
    return bool(getattr(stage, "watches_requests", True))


def watches_completion(stage: Stage) -> bool:
    """Whether ``stage`` needs ``exchange_complete`` (see ``Stage``)."""
    return bool(getattr(stage, "watches_completion", True))


def call_stage(
    errors: StageErrors, stage: Stage, hook: Callable[[ProxiedExchange], None], exchange: ProxiedExchange
) -> None:
    """Call ``hook(exchange)``; an exception is logged and counted, never propagated."""
    try:
        hook(exchange)
    except Exception:
        errors.by_stage[stage.name] = errors.by_stage.get(stage.name, 0) + 1
        log.exception("proxy stage %s failed on exchange %s", stage.name, exchange.id)
