"""One replay job in one process: tapes -> plan -> runner -> results tape, wired together.

Shared by the single-process ``shadowtap replay`` and each ``--workers`` process, so both do
exactly the same thing. It must never print, parse flags or choose an event loop (the caller
does), and never lose partial results: the results tape is closed (drained) even when the tape
being replayed turns out to be corrupt half-way.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from recorder import RedactionRules, TapeOptions, TapeReader, TapeWriter
from recorder.errors import ShadowtapError
from recorder.model import Exchange
from replayer.plan import PlanOptions, PlanStats, merge_by_time, plan_requests
from replayer.runner import Progress, ReplayOutcome, RunnerSettings, replay
from replayer.stats import ReplayStats
from replayer.transport import AiohttpTransport, ClientSettings

__all__ = ["JobResult", "ReplayJob", "raise_job_error", "run_job", "tape_source"]

#: Results waiting for the tape writer: about 10 s at the 5,000 requests/s budget, so a slow disk
#: is ridden out; beyond it results are dropped and counted (the replay itself is never slowed).
RESULTS_QUEUE_SIZE: Final = 50_000


def tape_source(tapes: tuple[str, ...], salvage: bool = False) -> Callable[[], Iterable[Exchange]]:
    """A fresh exchange stream over ``tapes`` merged by time, each time it is called."""
    # Resolve the segment lists now so a missing tape is an error before anything is sent.
    readers = [TapeReader(tape, salvage=salvage) for tape in tapes]

    def source() -> Iterator[Exchange]:
        if len(readers) == 1:
            return iter(readers[0])
        return merge_by_time(readers)

    return source


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


@dataclass(slots=True)
class JobResult:
    """What a job did, in a form that crosses process boundaries (``encode``/``decode``)."""

    stats: ReplayStats
    plan_stats: dict[str, int]
    planned: int = 0
    results_written: int = 0
    results_dropped: int = 0
    stopped: bool = False
    error: str | None = None
    error_type: str | None = None

    def merge(self, other: JobResult) -> None:
        self.stats.merge(other.stats)
        for key, value in other.plan_stats.items():
            # Every worker reads the whole tape: "read" and "iterations" are per tape, not per worker.
            if key in ("read", "iterations"):
                self.plan_stats[key] = max(self.plan_stats.get(key, 0), value)
            elif key != "skipped_other_shard":
                self.plan_stats[key] = self.plan_stats.get(key, 0) + value
        self.planned += other.planned
        self.results_written += other.results_written
        self.results_dropped += other.results_dropped
        self.stopped = self.stopped or other.stopped
        if self.error is None:
            self.error, self.error_type = other.error, other.error_type

    def encode(self) -> dict[str, Any]:
        return {
            "stats": self.stats.encode(),
            "plan_stats": self.plan_stats,
            "planned": self.planned,
            "results_written": self.results_written,
            "results_dropped": self.results_dropped,
            "stopped": self.stopped,
            "error": self.error,
            "error_type": self.error_type,
        }

    @classmethod
    def decode(cls, data: dict[str, Any]) -> JobResult:
        return cls(
            stats=ReplayStats.decode(data["stats"]),
            plan_stats={str(k): int(v) for k, v in data["plan_stats"].items()},
            planned=int(data["planned"]),
            results_written=int(data["results_written"]),
            results_dropped=int(data["results_dropped"]),
            stopped=bool(data["stopped"]),
            error=data["error"],
            error_type=data["error_type"],
        )


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
    plan = plan_requests(source, job.plan, plan_stats, os.environ if environ is None else environ)
    writer: TapeWriter | None = None
    if job.results_dir is not None:
        redaction = RedactionRules() if job.redact_results else None
        writer = TapeWriter(job.results_dir, TapeOptions(queue_size=RESULTS_QUEUE_SIZE, redaction=redaction))
        await writer.start()
    outcome: ReplayOutcome
    try:
        async with AiohttpTransport(job.target, job.client) as transport:
            outcome = await replay(
                plan, transport, t0_ns=t0_ns, settings=job.runner, results=writer, progress=progress, stop=stop
            )
    finally:
        if writer is not None:
            await writer.close()
    result = JobResult(
        stats=outcome.stats,
        plan_stats=plan_stats.as_dict(),
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


def raise_job_error(result: JobResult) -> None:
    """Re-raise the error a job reported (possibly from another process) as its shadowtap class."""
    if result.error is None:
        return
    import recorder.errors as errors

    cls = getattr(errors, result.error_type or "", None)
    if not (isinstance(cls, type) and issubclass(cls, ShadowtapError)):
        cls = ShadowtapError
    raise cls(result.error)
