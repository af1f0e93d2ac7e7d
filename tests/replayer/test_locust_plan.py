"""The Locust job travels as JSON without losing a setting; shards and merging are exact."""

from __future__ import annotations

import json
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


def test_the_http_version_settings_travel_and_decide_what_goes_over_http2() -> None:
    job = LocustJob(
        tapes=("/t",), target="https://api:8443", http_version="2", message_speed=2.0, max_message_gap_s=1.5
    )
    assert LocustJob.from_json(job.to_json()) == job
    settings = job.client_settings()
    assert (settings.http_version, settings.message_speed, settings.max_message_gap_s) == ("2", 2.0, 1.5)
    # A job file written before these settings existed reads with the defaults.
    old = json.loads(LocustJob(tapes=("/t",), target="http://x").to_json())
    for key in ("http_version", "message_speed", "max_message_gap_s"):
        del old[key]
    assert LocustJob.from_json(json.dumps(old)).http_version == "auto"
    auto = LocustJob(tapes=("/t",), target="http://x")
    assert (auto.sends_http2("2"), auto.sends_http2("1.1")) == (True, False)
    assert LocustJob(tapes=("/t",), target="h2c://x:50051").sends_http2("1.1")
    assert job.sends_http2("1.1")
    assert not LocustJob(tapes=("/t",), target="http://x", http_version="1.1").sends_http2("2")


def test_http_version_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="http-version"):
        LocustJob(tapes=("/t",), target="http://x", http_version="3")
    with pytest.raises(ConfigError, match="HTTP/2 only"):
        LocustJob(tapes=("/t",), target="h2c://x:50051", http_version="1.1")
    with pytest.raises(ConfigError, match="speed"):
        LocustJob(tapes=("/t",), target="http://x", message_speed=-1.0)


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
