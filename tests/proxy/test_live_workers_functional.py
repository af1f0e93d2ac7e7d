"""Live diff with ``--workers 2`` on real processes: one live differ in the parent, fed by both
workers' tape writers through a pipe each, one view on the parent's admin address.

A primary (v1), a shadow ``v2`` that changed a field's type and a ``secondary`` (v1 on another
host) to learn noise from, as in test_live_functional. Traffic reaches both workers; the parent's
``GET /diff`` reports the planted change counted over both, its ``/stats`` has the differ's figures
with the tap summed over the workers; after the proxy stops, the live store reports what ``shadowtap
diff`` reports on the tape both workers wrote. The differ killed mid-run is restarted by the parent,
costs no request and diffs again; the pause flag pauses it. A stopped differ fills each worker's
pipe: the workers drop and count, every request is answered and taped.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from shadowtap.recorder import TapeReader
from tests.proxy.test_live_functional import (
    Service,
    comparable,
    get_json,
    planted,
    services,
    wait_for,
)

__all__ = ["services"]  # the fixture, imported to be used here

_WAIT_S = 60.0
_REQUESTS = 60


async def start_proxy(services: dict[str, Service], tmp_path: Path, *extra: str) -> tuple[Any, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowtap", "proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
        "--workers", "2", "--primary", services["primary"].url, "--shadow", f"v2={services['v2'].url}",
        "--shadow", f"secondary={services['secondary'].url}", "--tape", str(tmp_path / "tape"),
        "--set", "live.priority=normal", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), _WAIT_S)).decode()
    match = re.search(r"listening on (\S+) admin (\S+) workers 2", line)
    if match is None:
        process.kill()
        _, err = await process.communicate()
        raise AssertionError(f"{line!r}: {err.decode()}")
    return process, match.group(1), match.group(2)


async def stop_proxy(process: Any) -> str:
    process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), _WAIT_S)
    assert process.returncode == 0, err.decode()
    return str(err.decode())


async def send(client: aiohttp.ClientSession, proxy: str, ids: range) -> None:
    for i in ids:
        # A fresh connection each time, so the kernel spreads them over both workers.
        async with client.get(f"{proxy}/items/{i}", headers={"Connection": "close"}) as resp:
            assert resp.status == 200 and (await resp.json())["price"] == 10 * i


async def test_one_live_differ_for_both_workers_and_its_store_agrees_with_diff_on_the_tape(
    services: dict[str, Service], tmp_path: Path
) -> None:
    live_db = tmp_path / "live.sqlite"
    process, proxy, admin = await start_proxy(services, tmp_path, "--live-db", str(live_db))
    try:
        async with aiohttp.ClientSession() as client:
            await send(client, proxy, range(_REQUESTS))

            async def all_diffed() -> dict[str, Any] | None:
                # The differ's count is the parent's own; what the workers tapped reaches it with their
                # stats, a moment later (make test once saw 58 of 60 with all 60 compared).
                stats = await get_json(client, f"{admin}/stats")
                live = stats["live_diff"]
                return stats if live["compared"] == _REQUESTS and live["tapped"] == _REQUESTS else None

            stats = await wait_for(all_diffed, "every exchange of both workers diffed")
            live = stats["live_diff"]
            assert live["state"] == "running" and live["taps"] == 2 and live["databases"] == {"v2": str(live_db)}
            assert live["tapped"] == _REQUESTS and live["dropped"] == 0 and live["restarts"] == 0
            assert live["noise"]["secondary"] == "secondary" and live["noise"]["pairs"] == _REQUESTS
            served = [w["stats"]["server"]["requests"] for w in stats["workers"]]
            tapped = [w["stats"]["live_diff"]["tapped"] for w in stats["workers"]]
            assert all(n > 0 for n in served) and sum(served) == _REQUESTS, served
            assert tapped == served and {w["stats"]["live_diff"]["state"] for w in stats["workers"]} == {
                "in the parent process"
            }

            async def committed() -> dict[str, Any] | None:  # the differ commits about once a second
                report: dict[str, Any] = await get_json(client, f"{admin}/diff?since=10m")
                sig = planted(report)
                return report if sig is not None and sig["count"] == _REQUESTS else None

            report = await wait_for(committed, "the planted change counted over both workers in GET /diff")
            assert planted(report)["endpoint"] == "GET /items/{id}"  # type: ignore[index]
            assert report["candidate_name"] == "v2" and report["secondary_name"] == "secondary"
            assert report["pairs"] == _REQUESTS
            assert any(s["suppressed"] for e in report["endpoints"] for s in e["signatures"])
            async with client.get(f"{admin}/metrics") as resp:
                samples = {
                    (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                    for family in text_string_to_metric_families(await resp.text())
                    for sample in family.samples
                }
            live_now = (await get_json(client, f"{admin}/stats"))["live_diff"]
            for result in ("compared", "tapped", "dropped"):
                key = ("shadowtap_live_diff_exchanges_total", (("result", result),))
                assert samples[key] == live_now[result], result
            assert samples[("shadowtap_live_diff_restarts_total", ())] == 0
            assert [samples[("shadowtap_worker_up", (("worker", w),))] for w in "01"] == [1, 1]
            async with client.get(f"{admin}/live") as resp:
                assert resp.status == 200 and "Content-Security-Policy" in resp.headers
            async with client.get(f"{admin}/flags") as resp:
                assert (await resp.json())["live_diff"] is True
    finally:
        await stop_proxy(process)

    def cli(*args: str) -> dict[str, Any]:
        out = tmp_path / f"{args[0]}.json"
        done = subprocess.run(
            [sys.executable, "-m", "shadowtap", *args, "--json", str(out), "--quiet"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "NO_COLOR": "1"},
        )
        assert done.returncode in (0, 1), done.stderr
        return json.loads(out.read_text())  # type: ignore[no-any-return]

    from_live = await asyncio.to_thread(cli, "report", "--db", str(live_db))
    from_tape = await asyncio.to_thread(cli, "diff", str(tmp_path / "tape"), "--workers", "1")
    assert sum(1 for _ in TapeReader(str(tmp_path / "tape"))) == _REQUESTS and from_live["pairs"] == _REQUESTS
    assert planted(from_live) is not None
    assert comparable(from_live) == comparable(from_tape)


async def test_the_parent_restarts_a_killed_live_differ_and_pauses_it_by_the_flag(
    services: dict[str, Service], tmp_path: Path
) -> None:
    process, proxy, admin = await start_proxy(services, tmp_path)
    try:
        async with aiohttp.ClientSession() as client:

            async def running() -> int | None:
                live = (await get_json(client, f"{admin}/stats"))["live_diff"]
                return live["pid"] if live["state"] == "running" else None

            first = await wait_for(running, "the live differ")
            os.kill(first, signal.SIGKILL)
            await send(client, proxy, range(20))  # every answer is the primary's, differ or not

            async def restarted() -> dict[str, Any] | None:
                live = (await get_json(client, f"{admin}/stats"))["live_diff"]
                pid = live["pid"]
                return live if live["restarts"] == 1 and pid is not None and pid != first else None

            live = await wait_for(restarted, "the live differ restarted")
            assert "exited with code -9" in live["last_exit"]
            await send(client, proxy, range(20, 40))

            async def diffing() -> bool:
                return planted(await get_json(client, f"{admin}/diff?since=10m")) is not None

            await wait_for(diffing, "the restarted differ's results")
            async with client.put(f"{admin}/flags", json={"live_diff": False}) as resp:
                assert resp.status == 200

            async def paused() -> bool:
                return bool((await get_json(client, f"{admin}/stats"))["live_diff"]["state"] == "paused")

            await wait_for(paused, "the live differ paused")

            sent = [40]

            async def heard() -> bool:  # the flag reaches the differ within a poll
                await send(client, proxy, range(sent[0], sent[0] + 1))
                sent[0] += 1
                return bool((await get_json(client, f"{admin}/stats"))["live_diff"]["paused"] > 0)

            await wait_for(heard, "a copy read while paused")

            async def read_all() -> dict[str, Any] | None:
                live = (await get_json(client, f"{admin}/stats"))["live_diff"]
                return live if live["exchanges"] == live["tapped"] == sent[0] else None

            before = await wait_for(read_all, "every copy so far read")
            await send(client, proxy, range(sent[0], sent[0] + 10))

            async def counted() -> dict[str, Any] | None:
                live = (await get_json(client, f"{admin}/stats"))["live_diff"]
                return live if live["paused"] - before["paused"] == 10 else None

            live = await wait_for(counted, "the copies read while paused")
            assert live["compared"] == before["compared"]
    finally:
        stderr = await stop_proxy(process)
    assert "restarting in" in stderr


async def test_a_stopped_differ_fills_the_workers_pipes_and_they_drop_and_count(
    services: dict[str, Service], tmp_path: Path
) -> None:
    process, proxy, admin = await start_proxy(services, tmp_path, "--set", "live.tap_bytes=4096")
    try:
        async with aiohttp.ClientSession() as client:

            async def running() -> int | None:
                live = (await get_json(client, f"{admin}/stats"))["live_diff"]
                return live["pid"] if live["state"] == "running" else None

            pid = await wait_for(running, "the live differ")
            os.kill(pid, signal.SIGSTOP)  # reads nothing: each worker's one-page pipe fills
            try:
                for i in range(100):
                    url = f"{proxy}/items/{i}?pad={'x' * 2000}"
                    async with client.get(url, headers={"Connection": "close"}) as resp:
                        assert resp.status == 200 and (await resp.json())["price"] == 10 * i

                async def all_written() -> dict[str, Any] | None:
                    stats = await get_json(client, f"{admin}/stats")
                    workers = [w["stats"] for w in stats["workers"]]
                    written = sum(w["tape"]["written"] for w in workers)
                    live = stats["live_diff"]
                    return stats if written == 100 and live["tapped"] + live["dropped"] == 100 else None

                stats = await wait_for(all_written, "both workers' tapes to write all 100 exchanges")
            finally:
                os.kill(pid, signal.SIGCONT)
            live = stats["live_diff"]
            assert live["dropped"] > 0 and live["tapped"] > 0
            per_worker = [w["stats"]["live_diff"] for w in stats["workers"]]
            assert all(w["tapped"] + w["dropped"] > 0 for w in per_worker), per_worker

            async def caught_up() -> bool:
                return bool((await get_json(client, f"{admin}/stats"))["live_diff"]["compared"] == live["tapped"])

            await wait_for(caught_up, "the differ to diff what the pipes took")
            # Whole batches or nothing: the differ never met a frame cut short.
            assert (await get_json(client, f"{admin}/stats"))["live_diff"]["bad_bytes"] == 0
    finally:
        await stop_proxy(process)
