"""`shadowtap diff --workers` over an ``s3://`` tape, against a real S3 server (SeaweedFS,
tests/s3_server.py): with two objects per worker or more, each worker streams objects of its own
(claimed whole, each by one worker); with fewer, every worker streams the tape and diffs its
endpoints' exchanges. Either way the report is the one worker's, byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shadowtap.commands.diff import _Job, _worker_jobs
from shadowtap.differ import RunMeta
from shadowtap.recorder import SyncTapeWriter, TapeOptions, TapeReader
from shadowtap.recorder.objectstore import ObjectSegment, UploadOptions, list_object_segments
from tests.differ.corpus.traffic import CANDIDATE, CONFIG, traffic
from tests.s3_server import s3_environment, shared_s3_server
from tests.shadowtap.test_cmd_diff_scale_functional import without_timings

REPO = Path(__file__).resolve().parents[2]


def upload_tape(url: str, spool: Path, pods: int, segment_bytes: int) -> None:
    exchanges = list(traffic(1500, planted=True))
    for pod in range(pods):
        upload = UploadOptions(url=url, source=f"pod-{pod}")
        # Blocks of 16 KiB: a segment rotates once a block is written past its size.
        options = TapeOptions(fsync="none", max_segment_bytes=segment_bytes, block_bytes=16 * 2**10, upload=upload)
        with SyncTapeWriter(spool / f"pod-{pod}", options) as writer:
            writer.write_many(exchanges[pod::pods])


def diff_reports(url: str, tmp_path: Path) -> dict[int, tuple[str, str]]:
    (tmp_path / "diff.yaml").write_text(yaml.safe_dump(CONFIG))
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.json"
        result = subprocess.run(
            [
                sys.executable, "-m", "shadowtap", "diff", url, "--candidate", CANDIDATE,
                "--config", str(tmp_path / "diff.yaml"), "--workers", str(workers), "--json", str(out),
                "--no-color", "--full", "--no-progress",
            ],
            cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        outputs[workers] = (result.stdout, without_timings(out.read_text()))
    return outputs


def jobs_for(url: str, workers: int) -> list[_Job]:
    job = _Job(
        tapes=(url,), noise_tapes=(), noise_name="replay", salvage=False, config=None, proto_descriptor=None,
        proto_reflection=None, meta=RunMeta("primary", CANDIDATE, None, (url,)), shard=0, shards=workers,
        db="", progress=False, collect_names=False,
    )  # fmt: skip
    return _worker_jobs(job, TapeReader(url), None, workers, "/nonexistent")


def test_workers_claim_objects_of_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = shared_s3_server()
    s3_environment(monkeypatch, server)
    url = f"s3://{server.new_bucket()}/fleet"
    upload_tape(url, tmp_path, pods=2, segment_bytes=48 * 2**10)
    objects = list_object_segments(url)
    assert len(objects) >= 4
    jobs = jobs_for(url, 2)
    # Every process is offered every object, whole, once; each claims the next as it goes.
    assert all(job.ranged and job.chunks == jobs[0].chunks for job in jobs)
    claimed = [r for chunk in jobs[0].chunks for r in chunk.ranges]
    assert all(isinstance(r.segment, ObjectSegment) and (r.start, r.stop) == (0, None) for r in claimed)
    assert sorted(str(r.segment) for r in claimed) == sorted(str(o) for o in objects)
    outputs = diff_reports(url, tmp_path)
    assert outputs[1] == outputs[2]
    assert '"pairs": 1500' in outputs[2][1]


def test_a_tape_of_few_objects_is_shared_by_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = shared_s3_server()
    s3_environment(monkeypatch, server)
    url = f"s3://{server.new_bucket()}/one"
    upload_tape(url, tmp_path, pods=1, segment_bytes=128 * 2**20)
    assert len(list_object_segments(url)) == 1
    jobs = jobs_for(url, 2)
    assert [(job.ranged, job.shard, job.shards) for job in jobs] == [(False, 0, 2), (False, 1, 2)]
    outputs = diff_reports(url, tmp_path)
    assert outputs[1] == outputs[2]
    assert '"pairs": 1500' in outputs[2][1]
