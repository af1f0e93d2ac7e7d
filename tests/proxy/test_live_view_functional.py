"""The live analysis process (``shadowtap.proxy.live_view``) on real processes: ``/diff`` is built in
a process of its own, not the proxy's; the same query within the cache interval is one build; a
process that stops answering or dies costs ``/diff`` a 503 naming why, never a hang, and is
restarted, after which ``/diff``, the page and the trip rules work on; with ``--workers 2`` there is
one such process, the parent's child.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shadowtap.proxy import live_view
from shadowtap.proxy.app import ProxyApp
from tests.proxy.test_live_functional import wait_for
from tests.proxy.test_live_results_functional import Service, admin, primary_answer, send, services, start

__all__ = ["services"]  # the fixture, shared


async def get(app: ProxyApp, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as client, client.get(f"{app.admin_url}{path}") as resp:
        return resp.status, await resp.json()


async def test_diff_is_built_in_the_analysis_process_which_may_die_and_the_view_and_trips_go_on(
    services: dict[str, Service], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cache that outlives the test, so that "two polls, one build" does not depend on timing;
    # a short wait for answers, so that a stopped process is reported within the test.
    monkeypatch.setattr(live_view, "DIFF_CACHE_S", 3600.0)
    monkeypatch.setattr(live_view, "DIFF_TIMEOUT_S", 1.0)
    monkeypatch.setattr(live_view, "TICK_TIMEOUT_S", 1.0)
    rule = "v2:diff.critical>=1/1m;min=5"
    app = await start(services, tmp_path, secondary=False, trips=[rule])
    answers: list[tuple[int, Any]] = []
    sent: list[str] = []
    polls = 0

    async def poll() -> tuple[int, Any]:
        nonlocal polls
        polls += 1  # a query of its own each time: never an answer from the cache
        return await get(app, f"/diff?since=5m&examples={polls}")

    try:
        assert app.live is not None

        async def running() -> Any:
            view = (await admin(app, "/stats"))["live_diff"]["view"]
            return view if view["state"] == "running" else None

        view = await wait_for(running, "the analysis process to start")
        assert view["pid"] not in (None, os.getpid())
        analysis = await app.live.view.client.stats()
        assert analysis["pid"] == view["pid"]

        paths = [f"/pages/p{n}" for n in range(10)]
        sent.extend(paths)
        await send(app, paths, answers)

        async def compared() -> Any:
            status, document = await poll()
            assert status == 200, document
            return document if document["compared"] == len(paths) else None

        await wait_for(compared, "the equal pairs in /diff")
        # The reports were built over there, one per distinct query; the same query again is the
        # same document from the cache.
        before = await app.live.view.client.stats()
        assert before["builds"] == polls
        first = await get(app, "/diff?since=5m")
        second = await get(app, "/diff?since=5m")
        assert first == second and first[0] == 200
        after = await app.live.view.client.stats()
        assert (after["builds"], after["cache_hits"]) == (before["builds"] + 1, before["cache_hits"] + 1)

        async def read_there() -> Any:  # and the live results are read there, once a second
            return (await app.live.view.client.stats())["reads"] or None

        await wait_for(read_there, "a reading of the live results in the analysis process")

        # Stopped: it cannot answer, and /diff says so instead of waiting; the rules wait, saying why.
        os.kill(view["pid"], signal.SIGSTOP)
        status, document = await poll()
        assert status == 503 and "did not answer" in document["error"], document

        async def rules_wait() -> bool:
            assert app.trips is not None
            [entry] = app.trips.snapshot()
            return "live analysis process" in (entry.get("waiting") or "")

        await wait_for(rules_wait, "the trip rule to wait for the analysis process")
        # Killed: restarted after its back-off; meanwhile a 503 naming why, then answers again.
        os.kill(view["pid"], signal.SIGKILL)
        seen: list[tuple[int, str]] = []

        async def answers_again() -> bool:
            status, document = await poll()
            seen.append((status, document.get("error", "") if status != 200 else ""))
            return status == 200

        await wait_for(answers_again, "/diff from the restarted analysis process")
        assert all(status == 503 and "live analysis process" in error for status, error in seen[:-1]), seen
        stats = await admin(app, "/stats")
        assert stats["live_diff"]["view"]["restarts"] == 1
        assert stats["live_diff"]["view"]["pid"] not in (view["pid"], os.getpid())
        assert "exited with code -9" in stats["live_diff"]["view"]["last_exit"]
        async with aiohttp.ClientSession() as client, client.get(f"{app.admin_url}/live") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"

        # The trip rule works on through the new process: a critical change switches v2 off.
        async def tripped() -> bool:
            more = [f"/orders/{len(sent) + n}" for n in range(5)]
            sent.extend(more)
            await send(app, more, answers)
            return not app.flags.shadow_mirroring(0)

        await wait_for(tripped, "the critical change to trip v2 after the restart")
        assert app.flags.tripped_by(0) == rule
        assert answers == [primary_answer(path) for path in sent]
    finally:
        await app.shutdown()


def _children(parent: int) -> list[tuple[int, str]]:
    """(pid, command line) of ``parent``'s child processes, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == parent:
            out.append((int(entry), cmdline))
    return out


async def test_with_workers_one_analysis_process_in_the_parent_serves_diff(
    services: dict[str, Service], tmp_path: Path
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowtap", "proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
        "--workers", "2", "--primary", services["primary"].url, "--shadow", f"v2={services['v2'].url}",
        "--tape", str(tmp_path / "tape"), "--set", "live.priority=normal",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        match = re.search(r"listening on (\S+) admin (\S+) workers 2", line)
        assert match, line
        proxy, admin_url = match.groups()
        async with aiohttp.ClientSession() as client:
            for n in range(6):
                async with client.get(f"{proxy}/pages/p{n}", headers={"Connection": "close"}) as resp:
                    assert resp.status == 200

            async def diffed() -> Any:
                async with client.get(f"{admin_url}/diff") as resp:
                    document = await resp.json()
                    assert resp.status == 200, document
                return document if document["compared"] == 6 else None

            await wait_for(diffed, "the workers' pairs in the parent's /diff")
            async with client.get(f"{admin_url}/stats") as resp:
                stats = await resp.json()
        view = stats["live_diff"]["view"]
        workers = {entry["stats"]["pid"] for entry in stats["workers"]}
        assert len(workers) == 2 and view["state"] == "running"
        assert view["pid"] not in workers | {process.pid}
        # One analysis process, the parent's; none in a worker.
        analysers = [pid for pid, cmdline in _children(process.pid) if "shadowtap.proxy.live_view" in cmdline]
        assert analysers == [view["pid"]]
        for worker in workers:
            assert not [pid for pid, cmdline in _children(worker) if "shadowtap.proxy.live_view" in cmdline]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0, err.decode()


async def test_a_restarted_analysis_process_sends_no_diff_event_twice(
    services: dict[str, Service], tmp_path: Path
) -> None:
    log_path = tmp_path / "events.jsonl"
    app = await start(services, tmp_path, secondary=False, events={"path": str(log_path)})
    answers: list[tuple[int, Any]] = []
    sent: list[str] = []

    def diff_ids() -> list[str]:
        text = log_path.read_text() if log_path.exists() else ""
        return [e["id"] for e in map(json.loads, text.splitlines()) if e.get("event") == "diff"]

    async def every_verdict() -> bool:
        return len(diff_ids()) >= len(sent)

    try:
        assert app.live is not None
        first = [f"/items/{n}" for n in range(10)]
        sent.extend(first)
        await send(app, first, answers)
        await wait_for(every_verdict, "a diff event per exchange")
        old = app.live.view.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)

        async def restarted() -> bool:
            assert app.live is not None
            return app.live.view.pid not in (None, old)

        await wait_for(restarted, "the analysis process to be restarted")
        # The new process reads the store from its start; it knows from the proxy which pairs the
        # proxy had events for.
        more = [f"/pages/p{n}" for n in range(10)]
        sent.extend(more)
        await send(app, more, answers)
        await wait_for(every_verdict, "a diff event per exchange after the restart")
        assert app.results is not None
        reads = app.results.reads
        await wait_for(lambda: _after(app, reads + 2), "two more readings")
        ids = diff_ids()
        assert len(ids) == len(set(ids)) == len(sent)
        assert answers == [primary_answer(path) for path in sent]
    finally:
        await app.shutdown()


async def _after(app: ProxyApp, reads: int) -> bool:
    return app.results is not None and app.results.reads >= reads


def test_a_deep_tmpdir_still_gives_a_socket_path_that_binds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import tempfile

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    directory = live_view._socket_directory()
    try:
        path = os.path.join(directory, live_view._SOCKET_NAME)
        assert not directory.startswith(str(deep)) and os.stat(directory).st_mode & 0o777 == 0o700
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(path)
    finally:
        shutil.rmtree(directory)
    assert list(deep.iterdir()) == []  # the directory first made under it is gone
