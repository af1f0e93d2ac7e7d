"""A job crosses to a ``--workers`` process whole: every setting survives pickling, compiled or not."""

from __future__ import annotations

import pickle

from shadowtap.replayer.job import ReplayJob
from shadowtap.replayer.plan import Filters, PlanOptions, Rewrites, Scaling, SessionKey
from shadowtap.replayer.runner import RunnerSettings
from shadowtap.replayer.transport import ClientSettings


def test_a_job_with_every_setting_changed_pickles_to_an_equal_one() -> None:
    job = ReplayJob(
        tapes=("a", "b"),
        target="http://127.0.0.1:1",
        plan=PlanOptions(
            session_key=SessionKey("header", "x-user"),
            filters=Filters(
                methods=frozenset({"get", "HEAD"}),
                path_regex="^/api",
                endpoints=("GET /api/*",),
                since_s=1.0,
                until_s=9.0,
                sample_percent=50.0,
                allow_writes=True,
            ),
            rewrites=Rewrites(
                host="example.test",
                set_headers=(("X-Token", "t"),),
                remove_headers=("cookie",),
                path_subs=(("/v1/", "/v2/"),),
                clone_id_fields=("header:x-user",),
                clone_id_template="{value}~{clone}",
            ),
            scaling=Scaling(speed=2.0, clones=3, clone_offset_s=0.25, duration_s=30.0, loop=True, ramp_s=5.0),
            shard=(1, 2),
        ),
        client=ClientSettings(max_connections=8, timeout_s=3.0, client="raw", http_version="1.1", h2_connections=2),
        runner=RunnerSettings(max_in_flight=7, lookahead_s=0.01, batch_window_s=0.002, wake_timer="loop"),
        results_dir="out",
        salvage=True,
        redact_results=False,
    )
    copy = pickle.loads(pickle.dumps(job))
    assert copy == job
    assert copy.plan.filters.methods == frozenset({"GET", "HEAD"})
    assert pickle.loads(pickle.dumps(Scaling(rate_per_s=500.0, max_gap_s=None))) == Scaling(rate_per_s=500.0)
