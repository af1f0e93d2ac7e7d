"""Trip rules on a running proxy: real primary and shadow servers, real sockets, the guard's own timer."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from shadowtap.proxy.app import ProxyApp
from shadowtap.proxy.config import ProxyConfig
from tests.proxy.conftest import AppUpstream


class Primary(AppUpstream):
    async def handle(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="from primary")


class Shadow(AppUpstream):
    """Healthy until ``mode`` says otherwise: ``500`` answers 500, ``reset`` drops the connection,
    ``slow`` answers after ``delay_s``."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"
        self.delay_s = 0.05
        self.seen = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen += 1
        if self.mode == "500":
            return web.Response(status=500, text="broken")
        if self.mode == "reset":
            assert request.transport is not None
            request.transport.abort()
            raise ConnectionResetError("shadow resets")
        if self.mode == "slow":
            await asyncio.sleep(self.delay_s)
        return web.Response(text="from shadow")


@pytest.fixture
async def servers() -> AsyncIterator[tuple[Primary, Shadow]]:
    primary, shadow = await Primary().start(), await Shadow().start()
    yield primary, shadow
    await primary.close()
    await shadow.close()


async def start(primary: Primary, shadow: Shadow, trips: list[str]) -> ProxyApp:
    config = {
        "primary": primary.url,
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "shadows": {"v2": {"url": shadow.url, "breaker": {"consecutive_failures": 1000}}},
        "trips": trips,
    }
    app = ProxyApp(ProxyConfig.from_mapping(config))
    await app.start()
    return app


async def load_until(app: ProxyApp, done: Callable[[], bool], statuses: list[int], limit: int = 3000) -> None:
    """Send GETs through the proxy, a few at a time, until ``done()``; every status goes to ``statuses``."""
    async with aiohttp.ClientSession() as client:
        for _ in range(limit):
            if done():
                return
            for _ in range(5):
                async with client.get(f"{app.listen_url}/items/1") as resp:
                    statuses.append(resp.status)
                    assert await resp.text() == "from primary"
            await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def tripped(app: ProxyApp) -> bool:
    return not app.flags.shadow_mirroring(0)


async def admin_get(app: ProxyApp, path: str) -> Any:
    async with aiohttp.ClientSession() as client, client.get(f"{app.admin_url}{path}") as resp:
        return await resp.json() if path != "/metrics" else await resp.text()


@pytest.mark.parametrize("failure", ["500", "reset"])
async def test_a_shadow_that_starts_failing_is_switched_off_and_the_primary_sees_nothing(
    servers: tuple[Primary, Shadow], failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    primary, shadow = servers
    rule = "shadow.errors>20%/3s;min=10"
    app = await start(primary, shadow, [rule])
    statuses: list[int] = []
    try:
        # Healthy traffic first: the rule is judged and stays armed.
        await load_until(app, lambda: app.metrics.mirror_outcomes.get(("v2", "ok"), 0) >= 30, statuses)
        assert not tripped(app)
        shadow.mode = failure
        with caplog.at_level(logging.WARNING, "shadowtap.proxy.trips"):
            await load_until(app, lambda: tripped(app), statuses)
        seen_at_trip = shadow.seen
        await load_until(app, lambda: len(statuses) >= 100 + seen_at_trip, statuses)
        # Off means off: the copies in flight at the trip are the last the shadow got.
        assert shadow.seen - seen_at_trip <= app.config.shadows[0].concurrency
        assert set(statuses) == {200}
        line = next(r.getMessage() for r in caplog.records if "tripped for shadow v2" in r.getMessage())
        assert rule in line and "errors" in line and "over the last 3 s" in line
        flags = await admin_get(app, "/flags")
        assert flags["shadows"]["v2"] == {**flags["shadows"]["v2"], "mirroring": False, "tripped": rule}
        stats = await admin_get(app, "/stats")
        assert [(t["rule"], t["shadow"], t["state"], t["trips"]) for t in stats["trips"]] == [
            (rule, "v2", "tripped", 1)
        ]
        families = {f.name: f for f in text_string_to_metric_families(await admin_get(app, "/metrics"))}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
        assert samples[("shadowtap_trips_total", (("rule", rule), ("shadow", "v2")))] == 1.0
        assert samples[("shadowtap_tripped", (("shadow", "v2"),))] == 1.0
    finally:
        await app.shutdown()


async def test_a_slow_shadow_trips_against_the_primary(servers: tuple[Primary, Shadow]) -> None:
    primary, shadow = servers
    shadow.mode = "slow"
    rule = "shadow.p90>3x primary/5s;min=20"
    app = await start(primary, shadow, [rule])
    statuses: list[int] = []
    try:
        await load_until(app, lambda: tripped(app), statuses)
        assert set(statuses) == {200}
        assert app.trips is not None
        [judged] = app.trips.snapshot()
        assert judged["state"] == "tripped" and judged["observed"] > 3
    finally:
        await app.shutdown()


async def test_a_rule_with_rearm_turns_mirroring_back_on_by_itself(servers: tuple[Primary, Shadow]) -> None:
    primary, shadow = servers
    shadow.mode = "500"
    app = await start(primary, shadow, ["shadow.errors>=50%/2s;min=5;rearm=2s"])
    statuses: list[int] = []
    try:
        await load_until(app, lambda: tripped(app), statuses)
        shadow.mode = "ok"
        # No traffic needed: the guard's timer re-arms it.
        for _ in range(200):
            if not tripped(app):
                break
            await asyncio.sleep(0.05)
        assert not tripped(app) and app.flags.tripped_by(0) is None
        await load_until(app, lambda: app.metrics.mirror_outcomes.get(("v2", "ok"), 0) >= 20, statuses)
        assert not tripped(app)
    finally:
        await app.shutdown()


async def test_a_tripped_shadow_stays_off_until_a_person_turns_it_on(servers: tuple[Primary, Shadow]) -> None:
    primary, shadow = servers
    shadow.mode = "500"
    rule = "shadow.errors>20%/2s;min=5"
    app = await start(primary, shadow, [rule])
    statuses: list[int] = []
    try:
        await load_until(app, lambda: tripped(app), statuses)
        turn_on = {"shadows": {"v2": {"mirroring": True}}}
        async with aiohttp.ClientSession() as client, client.put(f"{app.admin_url}/flags", json=turn_on) as resp:
            assert resp.status == 200
            assert (await resp.json())["shadows"]["v2"]["tripped"] is None
        assert app.flags.shadow_mirroring(0)
        # Still failing: judged afresh on the traffic since, it trips again.
        await load_until(app, lambda: tripped(app), statuses)
        assert app.trips is not None and app.trips.trips_total[("v2", rule)] == 2
        assert set(statuses) == {200}
    finally:
        await app.shutdown()


def test_the_trip_flag_and_config_errors_name_the_rule() -> None:
    command = [sys.executable, "-m", "shadowtap", "proxy", "--primary", "http://127.0.0.1:9",
               "--shadow", "v2=http://127.0.0.1:10", "--trip", "shadow.errors>20%/1m",
               "--trip", "v3:shadow.p99>2x primary"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert (
        "trips[1]" in done.stderr
        and "v3:shadow.p99>2x primary" in done.stderr
        and "no shadow named 'v3'" in done.stderr
    )
    command[-1] = "shadow.errors>20"
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "'shadow.errors>20'" in done.stderr and "percent" in done.stderr


async def test_with_workers_a_trip_in_one_switches_the_shadow_off_for_all(servers: tuple[Primary, Shadow]) -> None:
    from tests.shadowtap.test_cmd_proxy_functional import start as start_process
    from tests.shadowtap.test_cmd_proxy_functional import stop as stop_process

    primary, shadow = servers
    shadow.mode = "500"
    rule = "shadow.errors>20%/2s;min=5"
    started: list[asyncio.subprocess.Process] = []
    try:
        process, match = await start_process(
            started, "--primary", primary.url, "--shadow", f"v2={shadow.url}", "--workers", "2", "--trip", rule
        )
        url, admin = match.group(1), match.group(2)
        statuses: list[int] = []
        async with aiohttp.ClientSession() as client:
            for _ in range(3000):
                async with client.get(f"{admin}/flags") as resp:
                    flags = await resp.json()
                if flags["shadows"]["v2"]["tripped"] == rule:
                    break
                for _ in range(5):
                    # A fresh connection each time, so the kernel spreads them over both workers.
                    async with client.get(f"{url}/items/1", headers={"Connection": "close"}) as resp:
                        statuses.append(resp.status)
                        assert await resp.text() == "from primary"
            assert flags["shadows"]["v2"]["mirroring"] is False
            async with client.get(f"{admin}/stats") as resp:
                workers = (await resp.json())["workers"]
        # Every worker sees the shared flag; the one (or both) that judged it tripped says so.
        assert [w["stats"]["flags"]["shadows"]["v2"]["tripped"] for w in workers] == [rule, rule]
        states = [w["stats"]["trips"][0]["state"] for w in workers]
        assert "tripped" in states and set(states) <= {"tripped", "armed", "warming up"}
        assert set(statuses) == {200}
        code, stderr = await stop_process(process)
        assert code == 0 and f"trip rule {rule!r} tripped for shadow v2" in stderr
    finally:
        for process in started:
            if process.returncode is None:
                process.kill()
                await process.communicate()
