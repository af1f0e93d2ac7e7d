"""The Locust integration's pure half: the job as JSON, the shared start time, sharding, merging.

``replayer/locustfile.py`` (the gevent edge) and ``shadowtap replay --locust`` (which launches the
Locust processes) both use it. The job travels as a JSON file so every machine runs the same plan;
the master broadcasts t0 as wall-clock ns (monotonic clocks are per machine), each worker converts
it to its own monotonic clock once; workers keep the sessions whose stable hash falls on their
index and ship their stats (encoded HdrHistograms) to the master, which merges them.

It must never import locust, gevent or asyncio (it is imported on both sides of that divide).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

from shadowtap.recorder.errors import ConfigError
from shadowtap.replayer.plan import (
    Filters,
    PlannedRequest,
    PlanOptions,
    PlanStats,
    Rewrites,
    Scaling,
    SessionKey,
    plan_requests,
)
from shadowtap.replayer.result import JobResult
from shadowtap.replayer.sending import ClientSettings
from shadowtap.replayer.source import tape_source

__all__ = [
    "MSG_STATS",
    "MSG_T0",
    "LocustJob",
    "merge_reports",
    "shard_plan",
    "t0_monotonic_ns",
]

#: Custom Locust message types (master -> workers, workers -> master).
MSG_T0: Final = "shadowtap_t0"
MSG_STATS: Final = "shadowtap_stats"


@dataclass(frozen=True, slots=True)
class LocustJob:
    """The replay every Locust worker runs (its own shard of it). ``start_delay_s`` is how far in
    the future the master puts t0, so the broadcast reaches every worker before it is due."""

    tapes: tuple[str, ...]
    target: str
    plan: PlanOptions = field(default_factory=PlanOptions)
    max_connections: int = 256
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    lookahead_s: float = 0.25
    max_pending: int = 10_000
    start_delay_s: float = 2.0
    salvage: bool = False
    #: Each worker writes its results segments here, on its own machine (segment names carry the pid).
    results_dir: str | None = None
    redact_results: bool = True
    #: As ``ClientSettings``: ``auto`` sends the exchanges recorded over HTTP/2 over HTTP/2 (all of
    #: them for an ``h2c://`` target), ``"2"`` everything, ``"1.1"`` nothing; a recorded client
    #: stream's messages keep their gaps divided by ``message_speed``, each cut to ``max_message_gap_s``.
    http_version: str = "auto"
    message_speed: float = 1.0
    max_message_gap_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.tapes:
            raise ConfigError("needs at least one tape", field="tapes")
        if self.max_connections < 1:
            raise ConfigError(f"must be >= 1, got {self.max_connections}", field="connections")
        if self.start_delay_s <= 0:
            raise ConfigError(f"must be > 0, got {self.start_delay_s}", field="locust-start-delay")
        # The HTTP/2 side's own checks (http_version, message_speed, max_message_gap_s).
        self.client_settings()
        if self.http_version == "1.1" and self.target.lower().startswith("h2c://"):
            raise ConfigError(f"an h2c:// target speaks HTTP/2 only: {self.target!r}", field="http-version")

    def client_settings(self) -> ClientSettings:
        """The settings of the workers' HTTP/2 client (``shadowtap.replayer.h2blocking``)."""
        return ClientSettings(
            max_connections=self.max_connections,
            timeout_s=self.timeout_s,
            connect_timeout_s=self.connect_timeout_s,
            http_version=self.http_version,
            message_speed=self.message_speed,
            max_message_gap_s=self.max_message_gap_s,
        )

    def sends_http2(self, recorded_version: str) -> bool:
        """Whether a request recorded over ``recorded_version`` goes over HTTP/2 (as the asyncio
        replayer's ``make_transport`` decides)."""
        if self.http_version == "2" or self.target.lower().startswith("h2c://"):
            return True
        return self.http_version == "auto" and recorded_version == "2"

    def to_json(self) -> str:
        data = asdict(self)
        data["plan"]["filters"]["methods"] = sorted(self.plan.filters.methods)
        data["plan"].pop("shard")
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str, *, path: str = "<job>") -> LocustJob:
        try:
            data = json.loads(text)
            plan = data.pop("plan")
            filters = plan["filters"]
            rewrites = plan["rewrites"]
            return cls(
                tapes=tuple(data.pop("tapes")),
                plan=PlanOptions(
                    session_key=SessionKey(**plan["session_key"]),
                    filters=Filters(
                        **{
                            **filters,
                            "methods": frozenset(filters["methods"]),
                            "endpoints": tuple(filters["endpoints"]),
                        }
                    ),
                    rewrites=Rewrites(
                        host=rewrites["host"],
                        set_headers=tuple((n, v) for n, v in rewrites["set_headers"]),
                        remove_headers=tuple(rewrites["remove_headers"]),
                        path_subs=tuple((p, r) for p, r in rewrites["path_subs"]),
                        clone_id_fields=tuple(rewrites["clone_id_fields"]),
                        clone_id_template=rewrites["clone_id_template"],
                    ),
                    scaling=Scaling(**plan["scaling"]),
                ),
                **data,
            )
        except ConfigError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"not a shadowtap Locust job: {exc}", path=path) from exc


def t0_monotonic_ns(t0_wall_ns: int) -> int:
    """The master's wall-clock t0 on this machine's monotonic clock (read both clocks once)."""
    return time.monotonic_ns() + (t0_wall_ns - time.time_ns())


def shard_plan(job: LocustJob, index: int, count: int, stats: PlanStats) -> Iterator[PlannedRequest]:
    """Worker ``index`` of ``count``'s requests, in slot order (slots are the whole plan's)."""
    if not 0 <= index < count:
        raise ConfigError(f"worker index {index} is outside 0..{count - 1}", field="locust-workers")
    source = tape_source(job.tapes, job.salvage)
    return plan_requests(source, replace(job.plan, shard=(index, count)), stats)


def merge_reports(reports: list[dict[str, Any]]) -> JobResult:
    """Merge the workers' encoded ``JobResult``s (the master's side)."""
    if not reports:
        raise ConfigError("no Locust worker reported", field="locust-workers")
    merged = JobResult.decode(reports[0])
    for report in reports[1:]:
        merged.merge(JobResult.decode(report))
    return merged
