"""Live diff without a tape, on real processes: ``shadowtap proxy`` with a primary (v1), a shadow (v2)
that changed a field's type and a ``secondary`` (v1 again), and no ``--tape``.

Live diff is on by default: the tape writer process runs for the live differ alone. ``/diff`` shows
the planted change, no segment file is written in the working or temporary directory the proxy was
given, and a credential in the requests reaches the live store only redacted. ``--no-live-diff``
starts no tape writer process at all.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest

from shadowtap.recorder.model import exchange_from_wire
from tests.proxy.test_live_functional import _WAIT_S, Service, get_json, planted, services, wait_for

__all__ = ["services"]  # the fixture, used by name

#: The credential the client sends; redaction must keep it out of every byte the live differ keeps.
SECRET = "Bearer tapeless-secret-4711"


def children(pid: int) -> list[str]:
    """The command lines of ``pid``'s child processes (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            out.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return out


class Proxy:
    """``shadowtap proxy`` in a process of its own, in ``work`` with ``TMPDIR=tmp``."""

    def __init__(self, process: asyncio.subprocess.Process, line: str) -> None:
        self.process = process
        self.line = line
        match = re.search(r"listening on (\S+) admin (\S+)", line)
        assert match, line
        self.url, self.admin = match.groups()

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(self.process.wait(), _WAIT_S) == 0


@pytest.fixture
async def start_proxy(services: dict[str, Service], tmp_path: Path) -> AsyncIterator[Any]:
    started: list[Proxy] = []

    async def start(*args: str) -> Proxy:
        work, tmp = tmp_path / "work", tmp_path / "tmp"
        work.mkdir(exist_ok=True)
        tmp.mkdir(exist_ok=True)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shadowtap", "proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
            "--primary", services["primary"].url, "--shadow", f"v2={services['v2'].url}",
            "--shadow", f"secondary={services['secondary'].url}", "--set", "live.priority=normal", *args,
            stdout=asyncio.subprocess.PIPE, cwd=work, env={**os.environ, "TMPDIR": str(tmp)},
        )  # fmt: skip
        assert process.stdout is not None
        try:
            line = (await asyncio.wait_for(process.stdout.readline(), _WAIT_S)).decode()
        except BaseException:
            process.kill()
            await process.wait()
            raise
        proxy = Proxy(process, line)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        if proxy.process.returncode is None:
            proxy.process.kill()
            await proxy.process.wait()


def files_under(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


async def test_live_diff_runs_without_a_tape_and_writes_no_segment(start_proxy: Any, tmp_path: Path) -> None:
    proxy = await start_proxy()
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    try:
        assert proxy.line.rstrip().endswith("live diff on without a tape"), proxy.line
        writers = [c for c in children(proxy.process.pid) if "shadowtap.recorder.tape_process" in c]
        assert len(writers) == 1 and "--no-tape" in writers[0], writers
        async with aiohttp.ClientSession() as client:
            for i in range(40):
                headers = {"Authorization": SECRET, "X-Api-Key": "tapeless-key-0815"}
                async with client.get(f"{proxy.url}/items/{i}", headers=headers) as resp:
                    assert resp.status == 200
                    await resp.read()

            async def shown() -> dict[str, Any] | None:
                return planted(await get_json(client, f"{proxy.admin}/diff"))

            assert (await wait_for(shown, "the planted change in /diff"))["count"] >= 1
            stats = await get_json(client, f"{proxy.admin}/stats")
            live = stats["live_diff"]
            assert stats["tape"] is None and live["tape"] is None and live["state"] == "running"
            assert live["tapped"] >= 1 and live["dropped"] == 0
            flags = await get_json(client, f"{proxy.admin}/flags")
            assert flags["recording"] is True and flags["live_diff"] is True
        # The live store (a temporary one, in the TMPDIR given) holds whole example exchanges: their
        # credentials are the redacted ones, and the secrets are in no byte the differ wrote.
        store = Path(live["databases"]["v2"])
        assert tmp in store.parents
        connection = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        try:
            blobs = [row[0] for row in connection.execute("SELECT exchange FROM example_exchanges")]
        finally:
            connection.close()
        assert blobs
        for blob in blobs:
            request = exchange_from_wire(msgpack.unpackb(blob, raw=False, use_list=False)).request
            sent = {name.lower(): value for name, value in request.headers}
            assert sent[b"authorization"] != SECRET.encode() and b"tapeless-secret" not in sent[b"authorization"]
            assert b"x-api-key" not in sent or sent[b"x-api-key"] != b"tapeless-key-0815"
        for path in files_under(work, tmp):
            data = path.read_bytes()
            assert b"tapeless-secret" not in data and b"tapeless-key-0815" not in data, path
        assert not [p for p in files_under(work, tmp) if p.suffix == ".stape"]
    finally:
        await proxy.stop()
    # Stopped: the temporary store is gone, and nothing else was left in either directory.
    assert files_under(work, tmp) == []


async def test_no_live_diff_starts_no_tape_writer_process(start_proxy: Any, tmp_path: Path) -> None:
    proxy = await start_proxy("--no-live-diff")
    try:
        assert proxy.line.rstrip().endswith("live diff off"), proxy.line
        async with aiohttp.ClientSession() as client:
            for i in range(5):
                async with client.get(f"{proxy.url}/items/{i}") as resp:
                    assert resp.status == 200
                    await resp.read()
            stats = await get_json(client, f"{proxy.admin}/stats")
            assert "tape" not in stats and "record" not in stats
            assert stats["live_diff"] == {"state": "off", "why": "switched off (live.enabled: false)"}
            flags = await get_json(client, f"{proxy.admin}/flags")
            assert flags["recording"] is False and "live_diff" not in flags
            async with client.get(f"{proxy.admin}/diff") as resp:
                assert resp.status == 404 and "switched off" in (await resp.json())["error"]
        assert not [c for c in children(proxy.process.pid) if "shadowtap" in c], children(proxy.process.pid)
    finally:
        await proxy.stop()
    assert files_under(tmp_path / "work", tmp_path / "tmp") == []


async def test_workers_feed_one_live_differ_without_a_tape(start_proxy: Any, tmp_path: Path) -> None:
    proxy = await start_proxy("--workers", "2")
    requests = 24
    try:
        assert proxy.line.rstrip().endswith("live diff on without a tape"), proxy.line
        async with aiohttp.ClientSession() as client:
            for i in range(requests):
                # A fresh connection each time, so the kernel spreads them over both workers.
                headers = {"Connection": "close", "Authorization": SECRET}
                async with client.get(f"{proxy.url}/items/{i}", headers=headers) as resp:
                    assert resp.status == 200
                    await resp.read()

            async def all_diffed() -> dict[str, Any] | None:
                stats = await get_json(client, f"{proxy.admin}/stats")
                return stats if stats["live_diff"]["compared"] == requests else None

            stats = await wait_for(all_diffed, "every exchange of both workers diffed")
            live = stats["live_diff"]
            assert live["taps"] == 2 and live["tape"] is None and live["dropped"] == 0
            served = [w["stats"]["server"]["requests"] for w in stats["workers"]]
            tapped = [w["stats"]["live_diff"]["tapped"] for w in stats["workers"]]
            assert all(n > 0 for n in served) and tapped == served, (served, tapped)
            assert all(w["stats"]["tape"] is None for w in stats["workers"])

            async def shown() -> dict[str, Any] | None:
                sig = planted(await get_json(client, f"{proxy.admin}/diff"))
                return sig if sig is not None and sig["count"] == requests else None

            await wait_for(shown, "the planted change counted over both workers in /diff")
        work, tmp = tmp_path / "work", tmp_path / "tmp"
        for path in files_under(work, tmp):
            assert path.suffix != ".stape" and b"tapeless-secret" not in path.read_bytes(), path
    finally:
        await proxy.stop()
    assert files_under(tmp_path / "work", tmp_path / "tmp") == []
