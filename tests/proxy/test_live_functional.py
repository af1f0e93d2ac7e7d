"""Live diff on real processes: a proxy with a primary (v1) and a shadow (v2) that changed a field's
type, a secondary (v1 again) to learn noise from, the tape writer's tap and the live differ.

``GET /diff`` shows the planted change while the proxy runs; after it stops, ``shadowtap report`` on
the live store says what ``shadowtap diff`` says on the tape; the live differ killed mid-run costs no
request and is restarted; a full tap drops and counts, never holding up the tape; the runtime flag
pauses it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from shadowtap.differ.store import DiffStore, RunMeta
from shadowtap.proxy.app import ProxyApp
from shadowtap.proxy.config import ProxyConfig
from shadowtap.recorder import TapeReader
from shadowtap.recorder.tape_process import ProcessTapeWriter

#: Generous bounds on waiting for asynchronous work (never asserted as durations).
_WAIT_S = 60.0
#: The live differ runs on idle CPU time by default (it yields to everything else, and its tap
#: drops): on a machine shared with other test processes it could wait longer than any bound, so
#: the tests that wait for it to diff run it at the normal priority (the default is tested below).
NORMAL: dict[str, Any] = {"priority": "normal"}


class Service:
    """A real aiohttp server: ``/items/{id}`` in JSON, ``price`` an int (v1) or a string (v2), and a
    per-instance ``served_by`` the secondary shows to be noise."""

    def __init__(self, version: int, name: str) -> None:
        self.version = version
        self.name = name
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.counter = itertools.count()

    async def item(self, request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        return web.json_response(
            {
                "id": i,
                "name": f"item {i}",
                "price": 10 * i if self.version == 1 else str(10 * i),
                "served_by": self.name,
                "note": "<script>document.title='owned'</script>",
                "pad": request.query.get("pad", ""),
            }
        )

    async def start(self) -> Service:
        app = web.Application()
        app.router.add_get("/items/{i}", self.item)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def services() -> AsyncIterator[dict[str, Service]]:
    out = {
        "primary": await Service(1, "primary-host").start(),
        "v2": await Service(2, "v2-host").start(),
        "secondary": await Service(1, "secondary-host").start(),
    }
    yield out
    for service in out.values():
        await service.close()


async def wait_for(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = _WAIT_S) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.1)


async def get_json(client: aiohttp.ClientSession, url: str) -> Any:
    async with client.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def planted(report: dict[str, Any]) -> dict[str, Any] | None:
    for endpoint in report["endpoints"]:
        for sig in endpoint["signatures"]:
            if sig["path"] == "body.price" and sig["transition"] == "int->str" and not sig["suppressed"]:
                return sig
    return None


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """A report without what names the run rather than its results (when built, from which source)."""
    return {k: v for k, v in report.items() if k not in ("generated_at_ns", "sources")}


async def test_live_diff_shows_the_change_and_agrees_with_diff_on_the_tape(
    services: dict[str, Service], tmp_path: Path
) -> None:
    tape, live_db = tmp_path / "tape", tmp_path / "live.sqlite"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowtap", "proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
        "--primary", services["primary"].url, "--shadow", f"v2={services['v2'].url}",
        "--shadow", f"secondary={services['secondary'].url}", "--tape", str(tape), "--live-db", str(live_db),
        "--set", "live.priority=normal",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), _WAIT_S)).decode()
        match = re.search(r"listening on (\S+) admin (\S+)", line)
        assert match, line
        proxy, admin = match.groups()
        async with aiohttp.ClientSession() as client:
            for i in range(40):
                async with client.get(f"{proxy}/items/{i}") as resp:
                    assert resp.status == 200 and (await resp.json())["price"] == 10 * i

            async def shows_the_change() -> dict[str, Any] | None:
                return planted(await get_json(client, f"{admin}/diff?since=5m"))

            sig = await wait_for(shows_the_change, "the planted change in GET /diff")
            assert sig["endpoint"] == "GET /items/{id}" and sig["severity"] in ("high", "critical")
            report = await get_json(client, f"{admin}/diff?since=10m")
            assert report["candidate_name"] == "v2" and report["secondary_name"] == "secondary"
            # The secondary (v1 on another host) answers served_by differently too: learned noise.
            assert any(s["suppressed"] for e in report["endpoints"] for s in e["signatures"])
            stats = await get_json(client, f"{admin}/stats")
            live = stats["live_diff"]
            assert live["state"] == "running" and live["databases"] == {"v2": str(live_db)}
            assert live["noise"]["secondary"] == "secondary" and live["dropped"] == 0
            async with client.get(f"{admin}/diff?since=soon") as resp:
                assert resp.status == 400
            async with client.get(f"{admin}/diff?shadow=nope") as resp:
                assert resp.status == 404
            none = await get_json(client, f"{admin}/diff?since=10m&examples=0")
            assert none["pairs"] == report["pairs"] and not any(
                s["examples"] for e in none["endpoints"] for s in e["signatures"]
            )
            assert planted(report)["examples"]  # type: ignore[index]
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), _WAIT_S)
    assert process.returncode == 0, err.decode()

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
    from_tape = await asyncio.to_thread(cli, "diff", str(tape), "--workers", "1")
    written = sum(1 for _ in TapeReader(str(tape)))
    assert written == 40 and from_live["pairs"] == 40
    assert planted(from_live) is not None
    assert comparable(from_live) == comparable(from_tape)


async def start_app(config: dict[str, Any]) -> ProxyApp:
    app = ProxyApp(ProxyConfig.from_mapping({"listen": "127.0.0.1:0", **config}))
    await app.start()
    return app


async def test_a_killed_live_differ_costs_no_request_and_is_restarted(
    services: dict[str, Service], tmp_path: Path
) -> None:
    app = await start_app(
        {
            "primary": services["primary"].url,
            "shadows": {"v2": services["v2"].url},
            "record": {"tape": str(tmp_path / "tape"), "join_timeout_s": 5},
            "live": NORMAL,
        }
    )
    database = Path(app.stats()["live_diff"]["databases"]["v2"])
    try:
        live = app.live
        assert live is not None and database.is_file()

        async def running() -> int | None:
            return live.pid

        first_pid = await wait_for(running, "the live differ to start")
        statuses: list[int] = []
        async with aiohttp.ClientSession() as client:
            for i in range(60):
                if i == 20:
                    os.kill(first_pid, signal.SIGKILL)
                async with client.get(f"{app.listen_url}/items/{i}") as resp:
                    statuses.append(resp.status)
                    await resp.read()
                await asyncio.sleep(0.01)
            assert statuses == [200] * 60

            async def restarted() -> bool:
                live = app.stats()["live_diff"]
                return bool(live["restarts"] >= 1 and live["state"] == "running" and live["pid"] != first_pid)

            await wait_for(restarted, "the live differ to be restarted")
            before = app.stats()["live_diff"]["compared"]
            for i in range(60, 70):
                async with client.get(f"{app.listen_url}/items/{i}") as resp:
                    assert resp.status == 200
                    await resp.read()

            async def diffing_again() -> bool:
                return bool(app.stats()["live_diff"]["compared"] >= before + 10)

            await wait_for(diffing_again, "the new live differ to diff the new exchanges")
            async with client.get(f"{app.admin_url}/metrics") as resp:
                families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
            restarts = families["shadowtap_live_diff_restarts"].samples[0].value
            by_result = {s.labels["result"]: s.value for s in families["shadowtap_live_diff_exchanges"].samples}
            assert restarts >= 1 and by_result["compared"] >= before + 10 and by_result["dropped"] == 0

            async def committed() -> dict[str, dict[str, int]] | None:
                assert app.live is not None
                counts = await asyncio.to_thread(app.live.severity_counts)
                return counts if counts["v2"].get("high") else None

            # What a diff.high trip rule would judge: the price's type change (and the host as a value).
            assert await wait_for(committed, "the signatures by severity") == {"v2": {"high": 1, "medium": 1}}
    finally:
        await app.shutdown()
    # Without live.db the store was a temporary one, gone with the proxy; the tape holds segments only.
    assert not database.parent.exists()
    assert all(p.suffix == ".stape" for p in (tmp_path / "tape").iterdir())


async def test_a_full_tap_drops_and_counts_and_the_flag_pauses(services: dict[str, Service], tmp_path: Path) -> None:
    app = await start_app(
        {
            "primary": services["primary"].url,
            "shadows": {"v2": services["v2"].url},
            "record": {"tape": str(tmp_path / "tape"), "join_timeout_s": 5},
            "live": {**NORMAL, "tap_bytes": 4096},
        }
    )
    try:
        live, tape = app.live, app.tape
        assert live is not None and tape is not None and app.admin_url is not None

        async def running() -> int | None:
            return live.pid

        pid = await wait_for(running, "the live differ to start")
        os.kill(pid, signal.SIGSTOP)  # a differ that stops reading: the pipe fills
        try:
            async with aiohttp.ClientSession() as client:
                for i in range(100):
                    async with client.get(f"{app.listen_url}/items/{i}?pad={'x' * 2000}") as resp:
                        assert resp.status == 200
                        await resp.read()

                async def all_written() -> bool:
                    return tape.stats.written == 100 and live.stats()["tapped"] + live.stats()["dropped"] == 100

                await wait_for(all_written, "the tape to write all 100 exchanges")
        finally:
            os.kill(pid, signal.SIGCONT)
        figures = live.stats()
        assert figures["dropped"] > 0 and figures["tapped"] > 0
        tapped = figures["tapped"]

        async def caught_up() -> bool:
            return bool(live.stats()["exchanges"] == tapped)

        await wait_for(caught_up, "the live differ to diff what the tap took")
        assert live.stats()["compared"] == tapped and live.stats()["bad_bytes"] == 0

        # The runtime flag pauses it: exchanges are read off the tap and not diffed, counted.
        async with aiohttp.ClientSession() as client:
            async with client.put(f"{app.admin_url}/flags", json={"live_diff": False}) as resp:
                assert resp.status == 200 and (await resp.json())["live_diff"] is False

            async def paused() -> bool:
                return bool(live.stats()["state"] == "paused")

            await wait_for(paused, "the pause to show")
            await asyncio.sleep(0.5)  # the flag is polled every 0.25 s: let the differ hear it
            for i in range(5):
                async with client.get(f"{app.listen_url}/items/{i}") as resp:
                    await resp.read()

            async def counted_paused() -> bool:
                return bool(live.stats()["paused"] == 5)

            await wait_for(counted_paused, "the paused exchanges to be counted")
            assert live.stats()["compared"] == tapped
            async with client.put(f"{app.admin_url}/flags", json={"live_diff": True}) as resp:
                assert resp.status == 200
    finally:
        await app.shutdown()


async def test_live_diff_refusals_and_its_off_switch(services: dict[str, Service], tmp_path: Path) -> None:
    from shadowtap.recorder.errors import ConfigError

    base = {"listen": "127.0.0.1:0", "primary": services["primary"].url, "shadows": {"v2": services["v2"].url}}
    # The thread writer cannot tap: with a tape it keeps live diff off, and refuses live.enabled: true.
    threaded = {**base, "record": {"tape": str(tmp_path / "threaded"), "writer": "thread"}}
    app = ProxyApp(ProxyConfig.from_mapping({**threaded, "live": {"enabled": True}}))
    with pytest.raises(ConfigError, match="thread"):
        await app.start()
    # A live.db that cannot be made, or holds another comparison, stops the start, naming the key.
    taped = {**base, "record": {"tape": str(tmp_path / "tape")}}
    app = ProxyApp(ProxyConfig.from_mapping({**taped, "live": {"db": str(tmp_path / "no" / "such" / "live.db")}}))
    with pytest.raises(ConfigError, match="live.db"):
        await app.start()
    other = DiffStore(tmp_path / "other.sqlite")
    other.set_meta(RunMeta("primary", "v9", None, ("elsewhere",)))
    other.close()
    app = ProxyApp(ProxyConfig.from_mapping({**taped, "live": {"db": str(tmp_path / "other.sqlite")}}))
    with pytest.raises(ConfigError, match="use another --db"):
        await app.start()
    # The live differ decodes gRPC bodies with the config's descriptor set: one it cannot read stops
    # the start, naming the key (each live process loads the set itself).
    (tmp_path / "bad.desc").write_bytes(b"\xff\xffnot a descriptor set")
    app = ProxyApp(ProxyConfig.from_mapping({**taped, "diff": {"proto": {"descriptor": str(tmp_path / "bad.desc")}}}))
    with pytest.raises(ConfigError, match="diff.proto.descriptor"):
        await app.start()
    app = await start_app({**base, "live": {"enabled": False}})  # switched off: /stats says so, no writer
    try:
        assert app.live is None and app.tape is None and app.record is None
        off = app.stats()["live_diff"]
        assert off["state"] == "off" and "switched off" in off["why"]
        assert app.admin_url is not None
        async with aiohttp.ClientSession() as client, client.get(f"{app.admin_url}/diff") as resp:
            assert resp.status == 404 and "switched off" in (await resp.json())["error"]
    finally:
        await app.shutdown()
    # By default, without a tape: on, its tape writer process writes nothing; the process writer
    # whatever record.writer says (the thread writer cannot copy its batches to the differ).
    for record in ({}, {"writer": "thread"}):
        app = await start_app({**base, "record": record})
        try:
            assert app.live is not None and isinstance(app.tape, ProcessTapeWriter) and app.flags.recording
            assert app.stats()["tape"] is None and app.stats()["live_diff"]["tape"] is None
        finally:
            await app.shutdown()


async def test_each_candidate_shadow_has_its_own_store(services: dict[str, Service], tmp_path: Path) -> None:
    v3 = await Service(1, "v3-host").start()
    app = await start_app(
        {
            "primary": services["primary"].url,
            "shadows": {"v2": services["v2"].url, "v3": v3.url},
            "record": {"tape": str(tmp_path / "tape"), "join_timeout_s": 5},
            "live": {**NORMAL, "db": str(tmp_path / "live.sqlite")},
        }
    )
    try:
        assert app.live is not None and app.admin_url is not None
        assert dict(app.live.databases) == {
            "v2": str(tmp_path / "live-v2.sqlite"),
            "v3": str(tmp_path / "live-v3.sqlite"),
        }
        async with aiohttp.ClientSession() as client:
            for i in range(12):
                async with client.get(f"{app.listen_url}/items/{i}") as resp:
                    assert resp.status == 200

            async def both() -> tuple[dict[str, Any], dict[str, Any]] | None:
                v2 = await get_json(client, f"{app.admin_url}/diff?shadow=v2")
                v3_report = await get_json(client, f"{app.admin_url}/diff?shadow=v3")
                return (v2, v3_report) if v2["pairs"] == 12 and v3_report["pairs"] == 12 else None

            v2_report, v3_report = await wait_for(both, "both stores to hold the 12 exchanges")
            # v2 changed the price's type; v3 is v1 on another host: only its host differs.
            assert planted(v2_report) is not None and planted(v3_report) is None
            assert {s["path"] for e in v3_report["endpoints"] for s in e["signatures"]} == {"body.served_by"}
    finally:
        await app.shutdown()
        await v3.close()
    assert (tmp_path / "live-v2.sqlite").is_file() and (tmp_path / "live-v3.sqlite").is_file()


async def test_live_diff_with_the_join_on_the_loop(services: dict[str, Service], tmp_path: Path) -> None:
    """With the event log on, the record stage joins on the loop and sends the writer whole records:
    the tap copies those the same way."""
    app = await start_app(
        {
            "primary": services["primary"].url,
            "shadows": {"v2": services["v2"].url},
            "record": {"tape": str(tmp_path / "tape"), "join_timeout_s": 5},
            "events": {"path": str(tmp_path / "events.jsonl")},
            "live": NORMAL,
        }
    )
    try:
        assert app.live is not None
        async with aiohttp.ClientSession() as client:
            for i in range(8):
                async with client.get(f"{app.listen_url}/items/{i}") as resp:
                    assert resp.status == 200

        async def compared() -> bool:
            return bool(app.stats()["live_diff"]["compared"] == 8)

        await wait_for(compared, "the live differ to compare the 8 exchanges")
    finally:
        await app.shutdown()


@pytest.mark.parametrize("priority", ["idle", "low"])
async def test_the_live_differ_yields_the_cpu(services: dict[str, Service], tmp_path: Path, priority: str) -> None:
    live_settings = {} if priority == "idle" else {"priority": priority}  # idle is the default
    app = await start_app(
        {
            "primary": services["primary"].url,
            "shadows": {"v2": services["v2"].url},
            "record": {"tape": str(tmp_path / "tape")},
            "live": live_settings,
        }
    )
    try:
        live = app.live
        assert live is not None

        async def running() -> int | None:
            return live.pid

        pid = await wait_for(running, "the live differ to start")

        async def lowered() -> bool:  # set right after its ready report
            if priority == "idle":
                return os.sched_getscheduler(pid) == os.SCHED_IDLE
            return os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 10

        await wait_for(lowered, f"the live differ's {priority} priority")
    finally:
        await app.shutdown()
