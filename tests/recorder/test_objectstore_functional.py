"""Tapes in object storage against a real S3-compatible server (SeaweedFS, tests/s3_server.py):
upload on rotation, multipart, the keep policy, a bounded spool through an outage, streaming reads,
and many sources under one prefix read as one tape in time order."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from shadowtap.recorder import InputFormatError, SyncTapeWriter, TapeOptions, TapeReader, TapeWriteError, TapeWriter
from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.merge import merge_tapes
from shadowtap.recorder.objectstore import SegmentUploader, UploadOptions, list_object_segments, open_object_segment
from shadowtap.recorder.reader import SegmentRange, frame_starts
from shadowtap.recorder.writer import tape_target
from tests.recorder.tape_samples import make_exchange
from tests.s3_server import S3Server, s3_environment, shared_s3_server

_MiB = 1024 * 1024


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> S3Server:
    server = shared_s3_server()
    s3_environment(monkeypatch, server)
    return server


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Poll until ``condition`` holds (a deadline only against hanging, never a timed assertion)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {timeout_s} s")
        time.sleep(0.05)


def keys(server: S3Server, bucket: str, prefix: str = "") -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))


def spooled(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.stape"))


def test_each_closed_segment_is_uploaded_on_rotation_and_the_spool_emptied(server: S3Server, tmp_path: Path) -> None:
    bucket = server.new_bucket()
    url = f"s3://{bucket}/prod"
    options = TapeOptions(max_segment_bytes=8192, block_bytes=1024, compression="none")
    options = dataclasses.replace(options, upload=UploadOptions(url=url, source="pod-a"))
    directory, options = tape_target(url, options, spool=tmp_path / "spool")
    writer = SyncTapeWriter(directory, options)
    for i in range(60):
        writer.write(make_exchange(i, body=b"x" * 300))
    # Rotation closed segments while the writer is still open: they reach the bucket without a close.
    wait_for(lambda: len(keys(server, bucket)) >= 2, "segments uploaded on rotation")
    writer.close()
    stats = writer.stats
    names = keys(server, bucket)
    assert len(names) == stats.segments == stats.uploaded_segments > 2
    assert all(name.startswith("prod/pod-a/seg-") and name.endswith(".stape") for name in names)
    assert spooled(directory) == []  # removed once uploaded (the default policy)
    assert (stats.upload_pending_bytes, stats.upload_failures) == (0, 0)
    assert [ex.id for ex in TapeReader(url)] == [make_exchange(i).id for i in range(60)]


def test_a_large_segment_goes_up_in_parts_and_the_keep_policy_keeps_it(server: S3Server, tmp_path: Path) -> None:
    bucket = server.new_bucket()
    url = f"s3://{bucket}/big"
    upload = UploadOptions(url=url, source="one", keep_uploaded=True, multipart_threshold_bytes=5 * _MiB)
    spool = tmp_path / "spool"
    body = os.urandom(64 * 1024)
    with SyncTapeWriter(spool, TapeOptions(compression="none", upload=upload)) as writer:
        for i in range(110):  # ~7 MiB in one segment: two parts
            writer.write(make_exchange(i, body=body))
    (name,) = keys(server, bucket)
    head = server.client().head_object(Bucket=bucket, Key=name)
    assert head["ContentLength"] > 5 * _MiB
    _, dash, parts = head["ETag"].strip('"').rpartition("-")
    assert dash and int(parts) >= 2  # a multipart upload's ETag ends with its count of parts
    assert spooled(spool) == [] and [p.name for p in (spool / "uploaded").iterdir()] == [name.rpartition("/")[2]]
    assert sum(1 for _ in TapeReader(url)) == 110


async def test_an_outage_fills_the_spool_to_its_cap_then_refuses_and_counts_and_a_later_writer_uploads_it(
    server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = server.new_bucket()
    url = f"s3://{bucket}/outage"
    spool = tmp_path / "spool"
    # Nothing listens here: every upload fails (and is retried) while the writer carries on.
    down = S3Server()
    monkeypatch.setenv("AWS_ENDPOINT_URL", down.endpoint)
    monkeypatch.setattr("shadowtap.recorder.objectstore._client", None)
    upload = UploadOptions(url=url, source="pod", max_spool_bytes=64 * 1024, retry_initial_s=0.05, retry_max_s=0.2)
    options = TapeOptions(max_segment_bytes=8192, compression="none", upload=upload, block_bytes=1024)
    writer = TapeWriter(spool, options)
    await writer.start()
    for i in range(400):
        assert writer.submit(make_exchange(i, body=b"y" * 500))
        await asyncio.sleep(0)  # one exchange per batch, so rotation happens as it would under load
    await asyncio.to_thread(wait_for, lambda: writer.stats.queue_depth == 0, "the queue to drain")
    await asyncio.to_thread(wait_for, lambda: writer.stats.upload_failures >= 2, "uploads to fail (and retry)")
    stats = writer.stats
    assert stats.upload_failures > 0 and stats.uploaded_segments == 0
    assert stats.spool_full > 0 and stats.write_errors > 0  # refused past the cap, and counted
    assert stats.written + stats.write_errors == 400  # nothing silently lost
    assert 0 < stats.upload_pending_bytes <= 64 * 1024
    uploader = writer._sink.uploader
    assert uploader is not None and uploader._thread is not None
    uploader.options = dataclasses.replace(uploader.options, drain_timeout_s=0.2)
    await writer.close()
    # The outage outlived the writer: its uploader stops at its next failure, the segments stay.
    await asyncio.to_thread(uploader._thread.join)
    assert spooled(spool)
    down.remove()

    # The server is reachable again: the next writer over this spool uploads what the last one left.
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setattr("shadowtap.recorder.objectstore._client", None)
    later = SegmentUploader(spool, dataclasses.replace(upload, max_spool_bytes=_MiB))
    later.start()
    later.close(timeout_s=60)
    assert spooled(spool) == []
    assert later.stats.uploaded == len(keys(server, bucket)) > 0
    assert sum(1 for _ in TapeReader(url)) == stats.written


def test_many_sources_under_one_prefix_read_as_one_tape_in_time_order(server: S3Server, tmp_path: Path) -> None:
    bucket = server.new_bucket()
    url = f"s3://{bucket}/fleet"
    for pod in range(3):
        upload = UploadOptions(url=url, source=f"pod-{pod}")
        options = TapeOptions(max_segment_bytes=4096, block_bytes=1024, upload=upload)
        with SyncTapeWriter(tmp_path / f"spool-{pod}", options) as writer:
            for i in range(pod, 90, 3):  # interleaved in time across the pods
                writer.write(make_exchange(i))
    assert {s.source for s in list_object_segments(url)} == {"pod-0", "pod-1", "pod-2"}
    reader = TapeReader(url)
    started = [ex.started_at_ns for ex in reader]
    assert started == sorted(started) and len(started) == 90
    assert reader.report.exchanges == 90 and len(reader.report.segments) == len(list_object_segments(url))
    # One source alone, and one segment object alone, are tapes too.
    assert [ex.id for ex in TapeReader(f"{url}/pod-1")] == [make_exchange(i).id for i in range(1, 90, 3)]
    first = list_object_segments(f"{url}/pod-2")[0]
    assert next(iter(TapeReader(str(first)))).id == make_exchange(2).id

    merged = merge_tapes(f"s3://{bucket}/merged", [url], spool=tmp_path / "merged-spool")
    assert merged.exchanges == 90
    assert [ex.started_at_ns for ex in TapeReader(f"s3://{bucket}/merged")] == started
    with pytest.raises(ConfigError, match="inside an input"):
        merge_tapes(f"{url}/all", [url], spool=tmp_path / "again")


def test_a_tape_larger_than_the_memory_cap_streams(server: S3Server, tmp_path: Path) -> None:
    bucket = server.new_bucket()
    url = f"s3://{bucket}/stream"
    body = os.urandom(16 * 1024)
    with SyncTapeWriter(tmp_path / "spool", TapeOptions(compression="none", upload=UploadOptions(url=url))) as writer:
        for i in range(1600):  # ~26 MiB, one segment object
            writer.write(make_exchange(i, body=body))
    (segment,) = list_object_segments(url)
    assert segment.size > 24 * _MiB
    cap = 6 * _MiB  # a quarter of the tape: a reader that downloaded it first could not stay under
    tracemalloc.start()
    try:
        count = 0
        for ex in TapeReader(url):
            count += 1
            assert ex.primary is not None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 1600
    assert peak < cap, f"reading held {peak} bytes at its peak"


def test_errors_name_the_url(server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = f"s3://no-such-bucket-{os.getpid()}/x"
    with pytest.raises(InputFormatError) as info:
        TapeReader(missing)
    assert missing in str(info.value)
    empty = f"s3://{server.new_bucket()}/nothing"
    with pytest.raises(InputFormatError, match="no tape segments") as info:
        TapeReader(empty)
    assert empty in str(info.value)
    with pytest.raises(ConfigError, match="no bucket"):
        TapeReader("s3:///prefix")
    monkeypatch.setitem(sys.modules, "boto3", None)
    monkeypatch.setattr("shadowtap.recorder.objectstore._client", None)
    with pytest.raises(ConfigError) as info:
        TapeReader(empty)
    assert str(info.value) == "s3:// tapes need boto3: pip install 'shadowtap[s3]'"


def test_a_body_that_drops_mid_read_resumes_with_a_ranged_get(server: S3Server, tmp_path: Path) -> None:
    bucket = server.new_bucket()
    url = f"s3://{bucket}/resume"
    with SyncTapeWriter(tmp_path / "spool", TapeOptions(upload=UploadOptions(url=url))) as writer:
        writer.write_many(make_exchange(i, body=os.urandom(2000)) for i in range(200))
    (segment,) = list_object_segments(url)
    whole = server.client().get_object(Bucket=bucket, Key=segment.key)["Body"].read()
    stream = open_object_segment(segment)
    first = stream.read(1000)
    stream._body.close()  # the connection goes away under the reader
    rest = b""
    while chunk := stream.read(64 * 1024):
        rest += chunk
    assert first + rest == whole and stream.position == segment.size


def test_a_blocking_writer_that_cannot_upload_says_so_when_it_closes(
    server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = S3Server()  # nothing listens on its port
    monkeypatch.setenv("AWS_ENDPOINT_URL", down.endpoint)
    monkeypatch.setattr("shadowtap.recorder.objectstore._client", None)
    url = f"s3://{server.new_bucket()}/down"
    upload = UploadOptions(url=url, drain_timeout_s=0.5, retry_initial_s=0.05)
    writer = SyncTapeWriter(tmp_path / "spool", TapeOptions(upload=upload))
    writer.write_many(make_exchange(i) for i in range(10))
    with pytest.raises(TapeWriteError, match="1 segment\\(s\\) not uploaded") as info:
        writer.close()
    assert url in str(info.value) and str(tmp_path / "spool") in str(info.value)
    assert len(spooled(tmp_path / "spool")) == 1
    down.remove()


def test_ranges_of_an_object_are_read_with_ranged_gets(server: S3Server, tmp_path: Path) -> None:
    bucket = server.new_bucket()
    url = f"s3://{bucket}/ranges"
    options = TapeOptions(compression="none", upload=UploadOptions(url=url, source="pod-a", keep_uploaded=True))
    directory, options = tape_target(url, options, spool=tmp_path / "spool")
    with SyncTapeWriter(directory, options) as writer:
        writer.write_many(make_exchange(i) for i in range(200))
    (local,) = sorted((directory / "uploaded").glob("*.stape"))  # the object's bytes, kept
    (remote,) = list_object_segments(url)
    size = local.stat().st_size
    cuts = frame_starts(local, [size // 3, 2 * size // 3])
    assert cuts is not None
    bounds = [0, *cuts, size]
    parts = [
        [ex.id for ex in TapeReader.of_ranges([SegmentRange(remote, lo, None if hi == size else hi)])]
        for lo, hi in itertools.pairwise(bounds)
    ]
    assert all(parts) and [i for part in parts for i in part] == [make_exchange(i).id for i in range(200)]
