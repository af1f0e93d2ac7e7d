"""proxy: the sidecar reverse proxy. Forwards to the primary untouched, mirrors a sample to shadows.

The public surface: run a proxy from a config (``ProxyConfig``, ``ProxyApp``, ``serve_app``), or compose
the data path (``ProxyServer``, ``ForwardSettings``) with stages (``MirrorStage``, ``RecordStage``,
``MetricsStage``) behind the ``Stage`` protocol. Everything else is internal. This package imports
``recorder`` and never ``shadowtap``, ``replayer`` or ``differ``.

The data path's modules run compiled (mypyc) when a build matching these sources is present; see
``shadowtap.wire.native``. Activation has to come before any of them is imported.
"""

# ruff: noqa: E402  (the compiled modules are chosen before any of them is imported)
from __future__ import annotations

from shadowtap.wire import native

native.activate(__path__, "proxy")

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shadowtap.proxy.admin import AdminServer
    from shadowtap.proxy.app import ProxyApp, build_forward_settings, serve_app
    from shadowtap.proxy.breaker import BreakerSettings, CircuitBreaker
    from shadowtap.proxy.config import (
        AdminSettings,
        EventsSettings,
        ListenAddress,
        MirrorSettings,
        ProxyConfig,
        RecordSettings,
        ShadowSettings,
        TlsSettings,
    )
    from shadowtap.proxy.events import EventLog
    from shadowtap.proxy.flags import RuntimeFlags
    from shadowtap.proxy.forward import ForwardSettings
    from shadowtap.proxy.metrics import MetricsStage, ProxyMetrics
    from shadowtap.proxy.mirror import CORRELATION_HEADER, MARKER_HEADER, MirrorStage
    from shadowtap.proxy.record import RecordStage
    from shadowtap.proxy.rules import RouteRule
    from shadowtap.proxy.sampling import SampleKey
    from shadowtap.proxy.server import ProxyServer
    from shadowtap.proxy.stages import PrimaryObserver, ProxiedExchange, Stage

# The public names load on first use: a command that only reads the settings (``proxy --help``,
# ``--check-config``) does not import the data path, the admin server or aiohttp.
_EXPORTS: dict[str, str] = {
    "AdminServer": "shadowtap.proxy.admin",
    "AdminSettings": "shadowtap.proxy.config",
    "BreakerSettings": "shadowtap.proxy.breaker",
    "CORRELATION_HEADER": "shadowtap.proxy.mirror",
    "CircuitBreaker": "shadowtap.proxy.breaker",
    "EventLog": "shadowtap.proxy.events",
    "EventsSettings": "shadowtap.proxy.config",
    "ForwardSettings": "shadowtap.proxy.forward",
    "ListenAddress": "shadowtap.proxy.config",
    "MARKER_HEADER": "shadowtap.proxy.mirror",
    "MetricsStage": "shadowtap.proxy.metrics",
    "MirrorSettings": "shadowtap.proxy.config",
    "MirrorStage": "shadowtap.proxy.mirror",
    "PrimaryObserver": "shadowtap.proxy.stages",
    "ProxiedExchange": "shadowtap.proxy.stages",
    "ProxyApp": "shadowtap.proxy.app",
    "ProxyConfig": "shadowtap.proxy.config",
    "ProxyMetrics": "shadowtap.proxy.metrics",
    "ProxyServer": "shadowtap.proxy.server",
    "RecordSettings": "shadowtap.proxy.config",
    "RecordStage": "shadowtap.proxy.record",
    "RouteRule": "shadowtap.proxy.rules",
    "RuntimeFlags": "shadowtap.proxy.flags",
    "SampleKey": "shadowtap.proxy.sampling",
    "ShadowSettings": "shadowtap.proxy.config",
    "Stage": "shadowtap.proxy.stages",
    "TlsSettings": "shadowtap.proxy.config",
    "build_forward_settings": "shadowtap.proxy.app",
    "serve_app": "shadowtap.proxy.app",
}

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
    "serve_app",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shadowtap.proxy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
