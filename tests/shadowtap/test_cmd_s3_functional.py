"""Every command that reads or writes a tape takes ``s3://bucket/prefix``, against a real S3 server
(SeaweedFS, tests/s3_server.py): three sidecars' tapes under one prefix read as one tape in time order
by `tape info|cat|merge`, `diff`, `export` and `replay`; `import --out`, `merge` and `replay --results`
write to the bucket."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from aiohttp import web

from shadowtap.recorder import SyncTapeWriter, TapeOptions, TapeReader
from shadowtap.recorder.objectstore import UploadOptions, list_object_segments
from tests.recorder.tape_samples import make_exchange
from tests.s3_server import s3_environment, shared_s3_server

REPO = Path(__file__).resolve().parents[2]
PODS = 3
EXCHANGES = 90


async def shadowtap(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shadowtap",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def ordered_ids() -> list[str]:
    return [make_exchange(i).id for i in range(EXCHANGES)]


async def test_every_command_reads_and_writes_a_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = shared_s3_server()
    s3_environment(monkeypatch, server)
    bucket = server.new_bucket()
    fleet = f"s3://{bucket}/fleet"
    for pod in range(PODS):
        upload = UploadOptions(url=fleet, source=f"pod-{pod}")
        options = TapeOptions(max_segment_bytes=4096, block_bytes=1024, redaction=None, upload=upload)
        with SyncTapeWriter(tmp_path / f"spool-{pod}", options) as writer:
            for i in range(pod, EXCHANGES, PODS):  # each pod's share, interleaved in time with the others'
                writer.write(make_exchange(i))
    assert len({s.source for s in list_object_segments(fleet)}) == PODS

    code, out, err = await shadowtap("tape", "info", fleet, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["exchanges"] == EXCHANGES and len(info["segments"]) == len(list_object_segments(fleet))

    code, out, err = await shadowtap("tape", "cat", fleet, "--bodies", "none")
    assert code == 0, err
    assert [json.loads(line)["id"] for line in out.splitlines()] == ordered_ids()

    merged = f"s3://{bucket}/merged"
    code, out, err = await shadowtap("tape", "merge", merged, fleet, "--spool", str(tmp_path / "merge-spool"))
    assert code == 0, err
    assert [ex.id for ex in TapeReader(merged)] == ordered_ids()
    assert not list((tmp_path / "merge-spool").glob("*.stape"))  # uploaded, then removed

    report = tmp_path / "diff.json"
    code, out, err = await shadowtap("diff", fleet, "--candidate", "v2", "--json", str(report), "--no-progress")
    assert code in (0, 1), err
    document = json.loads(report.read_text())
    assert document["pairs"] == EXCHANGES and document["sources"] == [fleet]

    har = tmp_path / "fleet.har"
    code, out, err = await shadowtap("export", "--to", "har", fleet, "--out", str(har), "--no-progress")
    assert code == 0, err
    entries = json.loads(har.read_text())["log"]["entries"]
    assert [e["request"]["url"].partition("/users/")[2].partition("?")[0] for e in entries] == [
        str(i) for i in range(EXCHANGES)
    ]

    imported = f"s3://{bucket}/imported"
    spool = str(tmp_path / "import-spool")
    code, out, err = await shadowtap(
        "import", "--from", "har", str(har), "--out", imported, "--spool", spool, "--no-progress"
    )
    assert code == 0, err
    assert sum(1 for _ in TapeReader(imported)) == EXCHANGES

    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        target = f"http://127.0.0.1:{runner.addresses[0][1]}"
        results = f"s3://{bucket}/replayed"
        code, out, err = await shadowtap(
            "replay", fleet, "--target", target, "--speed", "0", "--results", results, "--no-progress"
        )
    finally:
        await runner.cleanup()
    assert code == 0, err
    assert sorted(seen) == sorted(f"/users/{i}" for i in range(EXCHANGES))
    replayed = list(TapeReader(results))
    assert len(replayed) == EXCHANGES and all("replay" in ex.shadows for ex in replayed)
