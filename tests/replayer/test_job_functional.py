"""One job end to end in process: tape in, real server, results tape out."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from shadowtap.recorder import REPLAY, InputFormatError, SyncTapeWriter, TapeOptions, TapeReader
from shadowtap.replayer.job import ReplayJob, run_job
from tests.replayer.tapes import make_exchange


async def test_run_job_replays_and_writes_results(tmp_path: Path) -> None:
    with SyncTapeWriter(tmp_path / "tape", TapeOptions(redaction=None)) as writer:
        for i in range(20):
            writer.write(make_exchange(i, i))

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text="now", headers={"Set-Cookie": "session=secret"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        job = ReplayJob(
            tapes=(str(tmp_path / "tape"),),
            target=f"http://127.0.0.1:{runner.addresses[0][1]}",
            results_dir=str(tmp_path / "results"),
        )
        result = await run_job(job)
    finally:
        await runner.cleanup()
    assert result.stats.overall.requests == 20 and result.results_written == 20 and result.error is None
    exchanges = list(TapeReader(tmp_path / "results"))
    replayed = exchanges[0].response(REPLAY)
    assert replayed is not None and replayed.body == b"now"
    # Results are redacted like any tape unless asked otherwise.
    assert b"secret" not in dict(replayed.headers)[b"Set-Cookie"]


async def test_an_unreadable_tape_fails_before_anything_is_sent(tmp_path: Path) -> None:
    with pytest.raises(InputFormatError, match="no such tape"):
        await run_job(ReplayJob(tapes=(str(tmp_path / "missing"),), target="http://127.0.0.1:9"))
