"""The Locust job travels as JSON without losing a setting; shards and merging are exact."""

from __future__ import annotations

import time

import pytest

from shadowtap.recorder import ConfigError
from shadowtap.replayer.locust_plan import LocustJob, merge_reports, t0_monotonic_ns
from shadowtap.replayer.plan import Filters, PlanOptions, Rewrites, Scaling, SessionKey
from shadowtap.replayer.result import JobResult
from shadowtap.replayer.stats import ReplayStats


def test_job_round_trips_through_json() -> None:
    job = LocustJob(
        tapes=("/data/tape",),
        target="http://127.0.0.1:9000",
        plan=PlanOptions(
            session_key=SessionKey("header", "X-Session"),
            filters=Filters(methods=frozenset({"GET", "HEAD"}), endpoints=("GET /a/*",), sample_percent=50.0),
            rewrites=Rewrites(
                host="h",
                set_headers=(("Authorization", "Bearer ${T}"),),
                remove_headers=("x-debug",),
                path_subs=(("^/v1", "/v2"),),
                clone_id_fields=("json:user.id",),
            ),
            scaling=Scaling(rate_per_s=100.0, clones=3, duration_s=10.0, loop=True, ramp_s=2.0),
        ),
        max_connections=64,
    )
    assert LocustJob.from_json(job.to_json()) == job


def test_a_bad_job_file_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="job.json"):
        LocustJob.from_json('{"tapes": []}', path="job.json")
    with pytest.raises(ConfigError, match="tapes"):
        LocustJob(tapes=(), target="http://x")


def test_t0_is_converted_to_this_machines_monotonic_clock() -> None:
    wall_t0 = time.time_ns() + 2_000_000_000
    delta_ms = (t0_monotonic_ns(wall_t0) - time.monotonic_ns()) / 1e6
    assert 1_990 < delta_ms <= 2_000


def test_merge_reports_adds_counts() -> None:
    parts = []
    for worker in range(3):
        stats = ReplayStats()
        for i in range(10 + worker):
            stats.record_done(
                "GET /", t0_ns=0, due_ns=i, released_ns=i, sent_ns=i, done_ns=i + 1000, status=200, error=None
            )
        parts.append(JobResult(stats, {"read": 50, "planned": 10 + worker}, planned=10 + worker).encode())
    merged = merge_reports(parts)
    assert merged.planned == 33 and merged.stats.overall.requests == 33
    assert merged.plan_stats == {"read": 50, "planned": 33}
