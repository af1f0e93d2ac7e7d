"""One replay job in one process: tapes -> plan -> runner -> results tape, wired together.

Shared by the single-process ``shadowtap replay`` and each ``--workers`` process, so both do
exactly the same thing. It must never print, parse flags or choose an event loop (the caller
does), and never lose partial results: the results tape is closed (drained) even when the tape
being replayed turns out to be corrupt half-way.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from shadowtap.differ.templates import EndpointTemplater
from shadowtap.recorder import RedactionRules, TapeOptions, TapeWriter
from shadowtap.replayer.plan import PlanOptions, PlanStats, plan_requests
from shadowtap.replayer.result import JobResult
from shadowtap.replayer.runner import Progress, ReplayOutcome, RunnerSettings, replay
from shadowtap.replayer.source import tape_source
from shadowtap.replayer.stats import ReplayStats
from shadowtap.replayer.transport import ClientSettings, make_transport

__all__ = ["ReplayJob", "run_job"]

#: Results waiting for the tape writer: about 10 s at the 5,000 requests/s budget, so a slow disk
#: is ridden out; beyond it results are dropped and counted (the replay itself is never slowed).
RESULTS_QUEUE_SIZE: Final = 50_000
#: Endpoint templates per method the replay's stats keep apart; the rest share ``METHOD {overflow}``.
#: Each costs three histograms (82 KiB), so this bounds the stats near 40 MiB per method.
MAX_TEMPLATES: Final = 500


@dataclass(frozen=True, slots=True)
class ReplayJob:
    """Everything one process needs to replay its share (picklable: sent to worker processes)."""

    tapes: tuple[str, ...]
    target: str
    plan: PlanOptions = field(default_factory=PlanOptions)
    client: ClientSettings = field(default_factory=ClientSettings)
    runner: RunnerSettings = field(default_factory=RunnerSettings)
    results_dir: str | None = None
    salvage: bool = False
    redact_results: bool = True


async def run_job(
    job: ReplayJob,
    *,
    t0_ns: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    stop: asyncio.Event | None = None,
    environ: dict[str, str] | None = None,
) -> JobResult:
    """Run ``job`` on the running loop. Configuration and unreadable-tape errors raise before any
    request is sent; a tape that breaks mid-way is reported in ``JobResult.error``."""
    source = tape_source(job.tapes, job.salvage)
    plan_stats = PlanStats()
    # One learner for the plan and the stats: requests planned before a position folds are
    # counted under the template it folds into.
    templater = EndpointTemplater(max_templates=MAX_TEMPLATES)
    plan = plan_requests(source, job.plan, plan_stats, os.environ if environ is None else environ, templater)
    writer: TapeWriter | None = None
    if job.results_dir is not None:
        redaction = RedactionRules() if job.redact_results else None
        writer = TapeWriter(job.results_dir, TapeOptions(queue_size=RESULTS_QUEUE_SIZE, redaction=redaction))
        await writer.start()
    outcome: ReplayOutcome
    try:
        async with make_transport(job.target, job.client) as transport:
            outcome = await replay(
                plan,
                transport,
                t0_ns=t0_ns,
                settings=job.runner,
                results=writer,
                progress=progress,
                stop=stop,
                stats=ReplayStats(templater=templater),
            )
    finally:
        if writer is not None:
            await writer.close()
    result = JobResult(
        stats=outcome.stats,
        plan_stats={**plan_stats.as_dict(), **source.problems()},
        planned=outcome.planned,
        results_dropped=outcome.results_dropped,
        stopped=outcome.stopped,
    )
    if writer is not None:
        written = writer.stats
        result.results_written = written.written
        result.results_dropped += written.dropped_queue_full + written.write_errors + written.encode_errors
    if outcome.error is not None:
        result.error, result.error_type = str(outcome.error), type(outcome.error).__name__
    return result
