"""replayer: replays tapes against a target as an honest, open-loop load test.

The public API is re-exported here, loaded lazily: the Locust integration imports the pure plan
under gevent and must not pull in asyncio, aiohttp or the runner by importing this package.
"""

# ruff: noqa: E402  (the compiled modules are chosen before any of them is imported)
from __future__ import annotations

from shadowtap.wire import native

# The request path (runner, transport, stats, plan) runs compiled when the build matches; see
# shadowtap.wire.native.
native.activate(__path__, "replayer")

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shadowtap.replayer.html_report import render_html
    from shadowtap.replayer.job import ReplayJob, run_job
    from shadowtap.replayer.plan import (
        Filters,
        PlannedRequest,
        PlanOptions,
        PlanStats,
        Rewrites,
        Scaling,
        SessionKey,
        merge_by_time,
        plan_requests,
    )
    from shadowtap.replayer.report import SloGates, results_document, slo_failures, summary_text
    from shadowtap.replayer.result import JobResult
    from shadowtap.replayer.runner import Progress, ReplayOutcome, RunnerSettings, replay
    from shadowtap.replayer.source import TapeSource, tape_source
    from shadowtap.replayer.stats import EndpointStats, ReplayStats
    from shadowtap.replayer.transport import (
        AiohttpTransport,
        ClientSettings,
        HttpTransport,
        MemoryTransport,
        SendResult,
        Transport,
        make_transport,
    )

_EXPORTS = {
    "render_html": "shadowtap.replayer.html_report",
    "JobResult": "shadowtap.replayer.result",
    "ReplayJob": "shadowtap.replayer.job",
    "run_job": "shadowtap.replayer.job",
    "Filters": "shadowtap.replayer.plan",
    "PlanOptions": "shadowtap.replayer.plan",
    "PlanStats": "shadowtap.replayer.plan",
    "PlannedRequest": "shadowtap.replayer.plan",
    "Rewrites": "shadowtap.replayer.plan",
    "Scaling": "shadowtap.replayer.plan",
    "SessionKey": "shadowtap.replayer.plan",
    "merge_by_time": "shadowtap.replayer.plan",
    "plan_requests": "shadowtap.replayer.plan",
    "SloGates": "shadowtap.replayer.report",
    "results_document": "shadowtap.replayer.report",
    "slo_failures": "shadowtap.replayer.report",
    "summary_text": "shadowtap.replayer.report",
    "Progress": "shadowtap.replayer.runner",
    "ReplayOutcome": "shadowtap.replayer.runner",
    "RunnerSettings": "shadowtap.replayer.runner",
    "replay": "shadowtap.replayer.runner",
    "EndpointStats": "shadowtap.replayer.stats",
    "ReplayStats": "shadowtap.replayer.stats",
    "TapeSource": "shadowtap.replayer.source",
    "tape_source": "shadowtap.replayer.source",
    "HttpTransport": "shadowtap.replayer.transport",
    "make_transport": "shadowtap.replayer.transport",
    "AiohttpTransport": "shadowtap.replayer.transport",
    "ClientSettings": "shadowtap.replayer.transport",
    "MemoryTransport": "shadowtap.replayer.transport",
    "SendResult": "shadowtap.replayer.transport",
    "Transport": "shadowtap.replayer.transport",
}

__all__ = [
    "AiohttpTransport",
    "ClientSettings",
    "EndpointStats",
    "Filters",
    "HttpTransport",
    "JobResult",
    "MemoryTransport",
    "PlanOptions",
    "PlanStats",
    "PlannedRequest",
    "Progress",
    "ReplayJob",
    "ReplayOutcome",
    "ReplayStats",
    "Rewrites",
    "RunnerSettings",
    "Scaling",
    "SendResult",
    "SessionKey",
    "SloGates",
    "TapeSource",
    "Transport",
    "make_transport",
    "merge_by_time",
    "plan_requests",
    "render_html",
    "replay",
    "results_document",
    "run_job",
    "slo_failures",
    "summary_text",
    "tape_source",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'replayer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
