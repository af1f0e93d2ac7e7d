"""proxy: the sidecar reverse proxy. Forwards to the primary untouched, mirrors a sample to shadows.

The public surface: run a proxy from a config (``ProxyConfig``, ``ProxyApp``, ``serve``), or compose
the data path (``ProxyServer``, ``ForwardSettings``) with stages (``MirrorStage``, ``RecordStage``,
``MetricsStage``) behind the ``Stage`` protocol. Everything else is internal. This package imports
``recorder`` and never ``shadowtap``, ``replayer`` or ``differ``.

The data path's modules run compiled (mypyc) when a build matching these sources is present; see
``proxy.native``. Activation has to come before any of them is imported.
"""

# ruff: noqa: E402  (the compiled modules are chosen before any of them is imported)
from proxy import native

native.activate(__path__)

from proxy.admin import AdminServer
from proxy.app import ProxyApp, build_forward_settings, serve
from proxy.breaker import BreakerSettings, CircuitBreaker
from proxy.config import (
    AdminSettings,
    EventsSettings,
    ListenAddress,
    MirrorSettings,
    ProxyConfig,
    RecordSettings,
    ShadowSettings,
    TlsSettings,
)
from proxy.events import EventLog
from proxy.flags import RuntimeFlags
from proxy.forward import ForwardSettings
from proxy.metrics import MetricsStage, ProxyMetrics
from proxy.mirror import CORRELATION_HEADER, MARKER_HEADER, MirrorStage
from proxy.record import RecordStage
from proxy.rules import RouteRule
from proxy.sampling import SampleKey
from proxy.server import ProxyServer
from proxy.stages import PrimaryObserver, ProxiedExchange, Stage

__all__ = [
    "CORRELATION_HEADER",
    "MARKER_HEADER",
    "AdminServer",
    "AdminSettings",
    "BreakerSettings",
    "CircuitBreaker",
    "EventLog",
    "EventsSettings",
    "ForwardSettings",
    "ListenAddress",
    "MetricsStage",
    "MirrorSettings",
    "MirrorStage",
    "PrimaryObserver",
    "ProxiedExchange",
    "ProxyApp",
    "ProxyConfig",
    "ProxyMetrics",
    "ProxyServer",
    "RecordSettings",
    "RecordStage",
    "RouteRule",
    "RuntimeFlags",
    "SampleKey",
    "ShadowSettings",
    "Stage",
    "TlsSettings",
    "build_forward_settings",
    "serve",
]
