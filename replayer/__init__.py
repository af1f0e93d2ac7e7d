"""replayer: replays tapes against a target as an honest, open-loop load test.

The public API is re-exported here, loaded lazily: the Locust integration imports the pure plan
under gevent and must not pull in asyncio, aiohttp or the runner by importing this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replayer.html_report import render_html
    from replayer.job import ReplayJob, run_job
    from replayer.plan import (
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
    from replayer.report import SloGates, results_document, slo_failures, summary_text
    from replayer.result import JobResult
    from replayer.runner import Progress, ReplayOutcome, RunnerSettings, replay
    from replayer.source import TapeSource, tape_source
    from replayer.stats import EndpointStats, ReplayStats
    from replayer.transport import (
        AiohttpTransport,
        ClientSettings,
        HttpTransport,
        MemoryTransport,
        SendResult,
        Transport,
        make_transport,
    )
    from replayer.workers import run_workers

_EXPORTS = {
    "render_html": "replayer.html_report",
    "JobResult": "replayer.result",
    "ReplayJob": "replayer.job",
    "run_job": "replayer.job",
    "Filters": "replayer.plan",
    "PlanOptions": "replayer.plan",
    "PlanStats": "replayer.plan",
    "PlannedRequest": "replayer.plan",
    "Rewrites": "replayer.plan",
    "Scaling": "replayer.plan",
    "SessionKey": "replayer.plan",
    "merge_by_time": "replayer.plan",
    "plan_requests": "replayer.plan",
    "SloGates": "replayer.report",
    "results_document": "replayer.report",
    "slo_failures": "replayer.report",
    "summary_text": "replayer.report",
    "Progress": "replayer.runner",
    "ReplayOutcome": "replayer.runner",
    "RunnerSettings": "replayer.runner",
    "replay": "replayer.runner",
    "EndpointStats": "replayer.stats",
    "ReplayStats": "replayer.stats",
    "TapeSource": "replayer.source",
    "tape_source": "replayer.source",
    "HttpTransport": "replayer.transport",
    "make_transport": "replayer.transport",
    "AiohttpTransport": "replayer.transport",
    "ClientSettings": "replayer.transport",
    "MemoryTransport": "replayer.transport",
    "SendResult": "replayer.transport",
    "Transport": "replayer.transport",
    "run_workers": "replayer.workers",
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
    "run_workers",
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
