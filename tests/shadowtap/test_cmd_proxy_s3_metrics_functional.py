"""`shadowtap proxy --tape s3://...` counts its segment uploads in Prometheus ``/metrics`` (and
``/stats``), against a real S3 server (SeaweedFS, tests/s3_server.py)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.s3_server import s3_environment, shared_s3_server
from tests.shadowtap.test_cmd_proxy_functional import processes, start, stop, upstreams

__all__ = ["processes", "upstreams"]  # the fixtures, shared with the plain proxy tests


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not in /metrics"
    return float(found.group(1))


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_uploads_are_counted_in_metrics_and_stats(
    writer: str,
    upstreams: tuple[str, str, list[str]],
    processes: list[asyncio.subprocess.Process],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = shared_s3_server()
    s3_environment(monkeypatch, server)
    bucket = server.new_bucket()
    primary, _shadow, _ = upstreams
    process, match = await start(
        processes, "--primary", primary, "--tape", f"s3://{bucket}/prod", "--tape-spool", str(tmp_path / "spool"),
        "--tape-writer", writer, "--tape-segment-bytes", "4096", "--tape-fsync", "none",
    )  # fmt: skip
    url, admin = match.group(1), match.group(2)
    async with aiohttp.ClientSession() as client:
        for i in range(60):
            async with client.get(f"{url}/item/{i}") as resp:
                assert resp.status == 200
            await asyncio.sleep(0.01)  # a batch per request or so, so segments rotate as they fill
        deadline = time.monotonic() + 90  # against hanging only
        while True:
            async with client.get(f"{admin}/metrics") as resp:
                text = await resp.text()
            if metric(text, "shadowtap_tape_uploads_total") >= 3:
                break
            assert time.monotonic() < deadline, text
            await asyncio.sleep(0.1)
        assert metric(text, "shadowtap_tape_upload_failures_total") == 0
        assert metric(text, "shadowtap_tape_spool_full_total") == 0
        assert metric(text, "shadowtap_tape_upload_spool_bytes") >= 0
        assert "# HELP shadowtap_tape_upload_spool_bytes Bytes of closed tape segments" in text
        async with client.get(f"{admin}/stats") as resp:
            document: dict[str, Any] = await resp.json()
        assert document["tape"]["uploaded_segments"] >= metric(text, "shadowtap_tape_uploads_total")
    code, stderr = await stop(process)
    assert code == 0, stderr
    objects = server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    assert len(objects) >= 3
