"""`shadowtap proxy --tape s3://...` as a real process against a real S3 server (SeaweedFS) that goes
down mid-run: no primary request is lost or slowed into an error, the failed uploads are retried and
counted, and once the server is back every segment reaches the bucket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shadowtap.recorder import TapeReader
from shadowtap.recorder.model import Response
from tests.s3_server import S3Server, s3_environment
from tests.shadowtap.test_cmd_proxy_functional import processes, start, stop, upstreams

__all__ = ["processes", "upstreams"]  # the fixtures, shared with the plain proxy tests


def keys(server: S3Server, bucket: str) -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", ())]


def object_count(server: S3Server, bucket: str) -> int:
    return len(keys(server, bucket))


async def until(condition: Callable[[], Any], what: str, timeout_s: float = 90.0) -> None:
    """Poll until ``condition`` holds (a deadline only against hanging, never a timed assertion)."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {timeout_s} s")
        await asyncio.sleep(0.1)


@pytest.fixture
def own_server() -> Any:
    server = S3Server().start()
    yield server
    server.remove()


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_an_s3_outage_costs_no_primary_request_and_uploads_resume(
    writer: str,
    own_server: S3Server,
    upstreams: tuple[str, str, list[str]],
    processes: list[asyncio.subprocess.Process],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = own_server
    s3_environment(monkeypatch, server)
    monkeypatch.setenv("SHADOWTAP_TAPE_SOURCE", "pod-a")
    bucket = server.new_bucket()
    tape = f"s3://{bucket}/prod"
    spool = tmp_path / "spool"
    primary, _shadow, _ = upstreams
    process, match = await start(
        processes, "--primary", primary, "--tape", tape, "--tape-spool", str(spool), "--tape-writer", writer,
        "--tape-segment-bytes", "4096", "--tape-fsync", "none",
        *(["--set", "record.keep_uploaded=true"] if writer == "process" else []),
    )  # fmt: skip
    url, admin = match.group(1), match.group(2)
    sent: list[str] = []

    async def tape_stats(client: aiohttp.ClientSession) -> dict[str, Any]:
        async with client.get(f"{admin}/stats") as resp:
            document: dict[str, Any] = await resp.json()
        return document["tape"] if "tape" in document else document["workers"][0]["tape"]

    async def tape_stats_when(
        client: aiohttp.ClientSession, condition: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + 90  # against hanging only
        while not condition(stats := await tape_stats(client)):
            assert time.monotonic() < deadline, f"still waiting for {what}: {stats}"
            await asyncio.sleep(0.1)
        return stats

    async with aiohttp.ClientSession() as client:

        async def traffic(phase: str, count: int) -> None:
            for i in range(count):
                path = f"/{phase}/{i}"
                async with client.get(f"{url}{path}") as resp:
                    assert resp.status == 200 and await resp.text() == f"primary {path}"
                sent.append(path)
                await asyncio.sleep(0.02)  # a batch per request or so, so segments rotate as they fill

        await traffic("before", 40)
        await until(lambda: object_count(server, bucket) > 0, "the first segments in the bucket")
        server.stop()
        await traffic("during", 80)  # the bucket is gone: every request still gets its primary answer
        # The writer's upload counters are in the admin stats (the writer process reports them too).
        stats = await tape_stats_when(client, lambda t: t["upload_failures"] > 0, "failed uploads counted")
        assert stats["upload_pending_bytes"] > 0
        assert stats["write_errors"] == 0  # the spool is far from its cap: nothing refused
        # Segments closed during the outage wait in the spool.
        await until(lambda: any(spool.glob("*.stape")), "segments waiting in the spool")
        server.start()
        await traffic("after", 40)
        stats = await tape_stats_when(client, lambda t: t["upload_pending_bytes"] == 0, "the spool uploaded")
        assert stats["uploaded_segments"] > 0
    code, stderr = await stop(process)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert list(spool.glob("*.stape")) == []  # everything uploaded before the writer exited
    kept = sorted(p.name for p in spool.glob("uploaded/*.stape"))  # record.keep_uploaded for one writer
    assert kept == ([] if writer == "thread" else sorted(k.rpartition("/")[2] for k in keys(server, bucket)))
    taped = list(TapeReader(tape))
    assert sorted(ex.request.target for ex in taped) == sorted(sent)
    assert all(isinstance(ex.primary, Response) and ex.primary.status == 200 for ex in taped)
    assert {ex.started_at_ns for ex in taped} and [ex.started_at_ns for ex in taped] == sorted(
        ex.started_at_ns for ex in taped
    )
