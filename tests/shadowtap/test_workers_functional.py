"""--workers in process: N spawned workers, one t0, merged stats, and a failing tape reported."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from aiohttp import web

from shadowtap.recorder import SyncTapeWriter, TapeOptions
from shadowtap.replayer.job import ReplayJob
from shadowtap.workers import run_replay
from tests.replayer.tapes import make_exchange


async def test_workers_merge_to_the_whole_plan(tmp_path: Path) -> None:
    with SyncTapeWriter(tmp_path / "tape", TapeOptions(redaction=None)) as writer:
        for i in range(90):
            writer.write(make_exchange(i, i * 2, session=f"s{i % 13}"))
    seen: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        seen[request.path] += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        job = ReplayJob(tapes=(str(tmp_path / "tape"),), target=f"http://127.0.0.1:{runner.addresses[0][1]}")
        # The parent blocks while it collects: run it off this loop, which serves the target.
        result = await asyncio.to_thread(run_replay, job, 3, loop_runner=asyncio.run)
    finally:
        await runner.cleanup()
    assert result.planned == 90 and result.stats.overall.requests == 90
    assert len(seen) == 90 and set(seen.values()) == {1}
    assert result.plan_stats["read"] == 90 and result.plan_stats["planned"] == 90
