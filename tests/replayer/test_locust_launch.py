"""What `--locust` hands to Locust: absolute tape paths, the same plan, and no results tape."""

from __future__ import annotations

from pathlib import Path

from shadowtap.replayer.job import ReplayJob
from shadowtap.replayer.locust_launch import LOCUSTFILE, locust_job
from shadowtap.replayer.plan import PlanOptions, Scaling
from shadowtap.replayer.transport import ClientSettings


def test_the_locust_job_carries_the_plan_and_absolute_tapes() -> None:
    job = ReplayJob(
        tapes=("relative/tape",),
        target="http://127.0.0.1:1",
        plan=PlanOptions(scaling=Scaling(rate_per_s=50.0)),
        client=ClientSettings(max_connections=7, timeout_s=3.0),
    )
    spec = locust_job(job)
    assert spec.tapes == (str(Path("relative/tape").resolve()),)
    assert spec.plan == job.plan and spec.max_connections == 7 and spec.timeout_s == 3.0
    assert LOCUSTFILE.name == "locustfile.py" and LOCUSTFILE.exists()


def test_the_results_directory_is_made_absolute() -> None:
    spec = locust_job(ReplayJob(tapes=("t",), target="http://127.0.0.1:1", results_dir="out", redact_results=False))
    assert spec.results_dir == str(Path("out").resolve()) and not spec.redact_results
