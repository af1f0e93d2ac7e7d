"""`shadowtap replay --locust` with tapes in object storage, against a real S3 server (SeaweedFS,
tests/s3_server.py): the Locust workers stream an ``s3://`` tape and write their results tape to an
``s3://`` prefix, which `shadowtap diff` then reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shadowtap.recorder import REPLAY, SyncTapeWriter, TapeOptions, TapeReader
from shadowtap.recorder.objectstore import UploadOptions
from tests.replayer.tapes import make_exchange
from tests.s3_server import s3_environment, shared_s3_server
from tests.shadowtap.test_cmd_replay_functional import Target, shadowtap


async def test_locust_reads_and_writes_tapes_in_a_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = shared_s3_server()
    s3_environment(monkeypatch, server)
    bucket = server.new_bucket()
    tape, results = f"s3://{bucket}/recorded", f"s3://{bucket}/replayed"
    options = TapeOptions(redaction=None, upload=UploadOptions(url=tape, source="pod-a"))
    with SyncTapeWriter(tmp_path / "spool", options) as writer:
        writer.write_many(make_exchange(i, i * 2, session=f"s{i % 5}") for i in range(60))
    async with Target() as target:
        code, _out, err = await shadowtap(
            tape, "--target", target.url, "--locust", "--locust-workers", "2", "--locust-timeout", "60",
            "--json", str(tmp_path / "out.json"), "--results", results,
        )  # fmt: skip
    assert code == 0, err
    assert len(target.seen) == 60
    document = json.loads((tmp_path / "out.json").read_text())
    assert document["results_tape"] == {"written": 60, "dropped": 0}
    replayed = list(TapeReader(results))
    assert sorted(e.id for e in replayed) == sorted(f"ex{i}" for i in range(60))
    assert all(e.response(REPLAY) is not None for e in replayed)
