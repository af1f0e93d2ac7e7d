"""Locust master + 2 workers (real subprocesses) replay one plan: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path

from aiohttp import web

from shadowtap.recorder import SyncTapeWriter, TapeOptions
from shadowtap.replayer.locust_launch import LOCUSTFILE
from shadowtap.replayer.locust_plan import LocustJob
from shadowtap.replayer.plan import PlanOptions, Rewrites, Scaling, plan_requests
from shadowtap.replayer.source import tape_source
from tests.replayer.tapes import make_exchange

LOCUST = str(Path(sys.executable).with_name("locust"))


async def test_master_and_two_workers_merge_to_the_plan(tmp_path: Path, unused_tcp_port: int) -> None:
    with SyncTapeWriter(tmp_path / "tape", TapeOptions(redaction=None)) as writer:
        for i in range(150):
            writer.write(make_exchange(i, i * 3, session=f"s{i % 11}"))
    plan_options = PlanOptions(
        scaling=Scaling(clones=2, clone_offset_s=0.05), rewrites=Rewrites(clone_id_fields=("header:X-Seq",))
    )
    expected = [p.headers for p in plan_requests(tape_source((str(tmp_path / "tape"),)), plan_options)]
    assert len(expected) == 300

    seen: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        seen[request.headers["X-Seq"]] += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    target = f"http://127.0.0.1:{runner.addresses[0][1]}"
    job = LocustJob(tapes=(str(tmp_path / "tape"),), target=target, plan=plan_options, start_delay_s=1.0)
    (tmp_path / "job.json").write_text(job.to_json())
    out = tmp_path / "merged.json"
    common = [LOCUST, "-f", str(LOCUSTFILE), "--loglevel", "WARNING"]
    master_cmd = [
        *common,
        "--headless",
        "--master",
        "--master-bind-host",
        "127.0.0.1",
        "--master-bind-port",
        str(unused_tcp_port),
        "--expect-workers",
        "2",
        "--users",
        "2",
        "--spawn-rate",
        "2",
        "--host",
        target,
        "--run-time",
        "60s",
        "--exit-code-on-error",
        "0",
        "--only-summary",
        "--shadowtap-job",
        str(tmp_path / "job.json"),
        "--shadowtap-out",
        str(out),
    ]
    worker_cmd = [*common, "--worker", "--master-host", "127.0.0.1", "--master-port", str(unused_tcp_port)]
    procs = []
    try:
        for cmd in (master_cmd, worker_cmd, worker_cmd):
            procs.append(
                await asyncio.create_subprocess_exec(
                    *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=dict(os.environ)
                )
            )
        _, master_err = await asyncio.wait_for(procs[0].communicate(), timeout=90)
        for worker in procs[1:]:
            await asyncio.wait_for(worker.wait(), timeout=30)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await runner.cleanup()
    assert procs[0].returncode == 0, master_err.decode()[-2000:]
    document = json.loads(out.read_text())
    result = document["result"]
    # Nothing lost or duplicated on the wire ...
    assert sum(seen.values()) == 300 and set(seen.values()) == {1}
    assert sorted(seen) == sorted(dict(h)[b"X-Seq"].decode() for h in expected)
    # ... and the merged counts match the plan, with both workers carrying a share.
    assert document["workers"] == 2
    assert result["planned"] == 300 and result["stats"]["overall"]["requests"] == 300
    assert result["stats"]["overall"]["errors"] == {}
    per_worker = document["requests_per_worker"]
    assert sorted(per_worker) == ["0", "1"] and all(n > 30 for n in per_worker.values())
