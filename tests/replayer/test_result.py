"""Job results cross process boundaries intact, merge without losing counts, and re-raise errors."""

from __future__ import annotations

import json

import pytest

from shadowtap.recorder import ShadowtapError, TapeFormatError
from shadowtap.replayer.result import JobResult, raise_job_error
from shadowtap.replayer.stats import ReplayStats


def result(requests: int, **kw: object) -> JobResult:
    stats = ReplayStats()
    for i in range(requests):
        stats.record_done(
            "GET /", t0_ns=0, due_ns=i, released_ns=i, sent_ns=i, done_ns=i + 10_000, status=200, error=None
        )
    plan = {"read": 100, "planned": requests, "iterations": 1, "torn_tails": 1, "skipped_other_shard": 7}
    plan |= {"skipped_unsafe_method": 4, "skipped_filter": 3, "skipped_window": 2, "skipped_sample": 1}
    return JobResult(stats, plan, planned=requests, results_written=requests, **kw)  # type: ignore[arg-type]


def test_round_trip_and_merge() -> None:
    a = JobResult.decode(json.loads(json.dumps(result(10).encode())))
    a.merge(JobResult.decode(result(5, results_dropped=2, stopped=True).encode()))
    assert a.planned == 15 and a.stats.overall.requests == 15 and a.results_written == 15
    assert a.results_dropped == 2 and a.stopped
    # Per-tape figures are not added up across workers; per-worker ones are.
    assert a.plan_stats["read"] == 100 and a.plan_stats["torn_tails"] == 1 and a.plan_stats["planned"] == 15
    # Every worker reads the whole tape, so each skips the same exchanges (--workers 2 showed twice as many).
    skipped = {k: v for k, v in a.plan_stats.items() if k.startswith("skipped_") and k != "skipped_other_shard"}
    assert skipped == {"skipped_unsafe_method": 4, "skipped_filter": 3, "skipped_window": 2, "skipped_sample": 1}


def test_errors_come_back_as_their_shadowtap_class() -> None:
    raise_job_error(result(1))
    with pytest.raises(TapeFormatError, match="bad.stape at byte 9"):
        raise_job_error(result(1, error="bad.stape at byte 9: checksum", error_type="TapeFormatError"))
    with pytest.raises(ShadowtapError, match="odd"):
        raise_job_error(result(1, error="odd", error_type="NotAShadowtapClass"))
