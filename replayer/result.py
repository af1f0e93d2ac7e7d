"""What a replay produced: the measurements, in a form that crosses process and machine
boundaries, and the results-tape record of each replayed request.

Built by the asyncio runner, a ``--workers`` process or a Locust worker, shipped as plain data
(``encode``/``decode``: histograms as HdrHistogram's base64 encoding) and merged in one place. Pure
data, no asyncio: the locustfile uses it under gevent. It must never lose a count when merging.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import shadowtap.recorder.errors as errors
from shadowtap.recorder.errors import ShadowtapError
from shadowtap.recorder.model import PRIMARY, REPLAY, Exchange, Outcome, Response, StreamMessage, new_timing
from shadowtap.replayer.plan import PlannedRequest
from shadowtap.replayer.stats import ReplayStats

__all__ = ["JobResult", "raise_job_error", "replay_exchange"]


#: Plan figures every worker of a job counts in full (see ``JobResult.merge``).
_PER_TAPE = frozenset(
    {
        "read",
        "iterations",
        "torn_tails",
        "skipped_ranges",
        "skipped_unsafe_method",
        "skipped_filter",
        "skipped_window",
        "skipped_sample",
    }
)


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
            # Every worker reads the whole tape and leaves out the same exchanges before it keeps
            # its own sessions: these are per tape, not per worker.
            if key in _PER_TAPE:
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


def raise_job_error(result: JobResult) -> None:
    """Re-raise the error a job reported (possibly from another process) as its shadowtap class."""
    if result.error is None:
        return
    cls = getattr(errors, result.error_type or "", None)
    if not (isinstance(cls, type) and issubclass(cls, ShadowtapError)):
        cls = ShadowtapError
    raise cls(result.error)


def replay_exchange(
    request: PlannedRequest,
    due_ns: int,
    sent_ns: int,
    first_byte_ns: int | None,
    done_ns: int,
    outcome: Outcome,
    wall_offset_ns: int,
) -> Exchange:
    """One results-tape record: the recorded request and response, and what the target answered.

    Times are monotonic ns; ``wall_offset_ns`` (wall clock minus monotonic) dates the record. The
    replay's timing is relative to the due time (``started_mono_ns``); the recorded primary timing
    is kept as it was (relative to its own start), and so are the replayed answer's gRPC message
    times (relative to the due time, like its timing). See docs/replay.md, "The results tape".
    """
    source = request.source
    first_byte = None if first_byte_ns is None else first_byte_ns - due_ns
    if isinstance(outcome, Response) and outcome.messages:
        # A transport times an answer's gRPC messages from the call's start (``sent_ns``, taken just
        # before it); the exchange's time base is the due time.
        shift = sent_ns - due_ns
        messages = tuple(
            m if m.at_ns is None else StreamMessage(m.flags, m.length, m.at_ns + shift) for m in outcome.messages
        )
        outcome = replace(outcome, messages=messages)
    timings = {REPLAY: new_timing(sent_ns - due_ns, first_byte, done_ns - due_ns)}
    recorded_timing = source.timings.get(PRIMARY)
    if recorded_timing is not None:
        timings[PRIMARY] = recorded_timing
    return Exchange(
        id=request.replay_id,
        started_at_ns=due_ns + wall_offset_ns,
        started_mono_ns=due_ns,
        request=source.request,
        primary=source.primary,
        shadows={REPLAY: outcome},
        timings=timings,
        session=request.session,
        connection_id=source.connection_id,
        client_addr=source.client_addr,
        tags={
            **source.tags,
            "source": "replay",
            "recorded_id": source.id,
            "recorded_at_ns": str(source.started_at_ns),
            "replay_target": request.target,
            "replay_clone": str(request.clone),
            "replay_iteration": str(request.iteration),
        },
    )
