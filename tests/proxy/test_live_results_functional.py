"""The live differ's results back in the proxy, on real processes: a proxy with a tape and live diff,
a real primary (v1), a v2 shadow with planted changes and a secondary (v1 again).

``diff.*`` trip rules switch a shadow off on what the live differ found (and wait while it cannot
tell); the Prometheus diff metrics say what ``GET /diff`` says, with bounded endpoint labels; the
event log carries a follow-up ``diff`` event per judged exchange; ``GET /diff`` has the latency
comparison the live page shows. With ``--workers 2`` a worker's rule trips the shadow for both, and
only worker 0 exports the diff metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from shadowtap.proxy import live_results
from shadowtap.proxy.app import ProxyApp
from shadowtap.proxy.config import ProxyConfig
from tests.proxy.test_live_functional import wait_for

#: The tests wait for the live differ, which runs at normal priority here (see test_live_functional).
LIVE: dict[str, Any] = {"priority": "normal"}


class Service:
    """``/items/{id}`` in JSON (v2: ``price`` a string, a high change) and ``/orders/{id}`` (v2: 404,
    a critical change of status class, when ``broken``); ``/pages/{name}`` the same everywhere."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.broken = version == 2
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.seen = 0

    async def item(self, request: web.Request) -> web.Response:
        self.seen += 1
        i = int(request.match_info["i"])
        return web.json_response({"id": i, "price": 10 * i if self.version == 1 else str(10 * i)})

    async def order(self, request: web.Request) -> web.Response:
        self.seen += 1
        if self.broken:
            return web.json_response({"error": "no such order"}, status=404)
        return web.json_response({"order": int(request.match_info["i"]), "state": "paid"})

    async def page(self, request: web.Request) -> web.Response:
        self.seen += 1
        return web.json_response({"page": request.match_info["name"]})

    async def start(self) -> Service:
        app = web.Application()
        app.router.add_get("/items/{i}", self.item)
        app.router.add_get("/orders/{i}", self.order)
        app.router.add_get("/pages/{name}", self.page)
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
    out = {"primary": await Service(1).start(), "v2": await Service(2).start(), "secondary": await Service(1).start()}
    yield out
    for service in out.values():
        await service.close()


async def start(services: dict[str, Service], tmp_path: Path, *, secondary: bool = True, **extra: Any) -> ProxyApp:
    shadows: dict[str, Any] = {"v2": services["v2"].url}
    if secondary:
        shadows["secondary"] = services["secondary"].url
    config = {
        "primary": services["primary"].url,
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "shadows": shadows,
        "record": {"tape": str(tmp_path / "tape")},
        "live": LIVE,
        **extra,
    }
    app = ProxyApp(ProxyConfig.from_mapping(config))
    await app.start()
    return app


async def admin(app: ProxyApp, path: str) -> Any:
    async with aiohttp.ClientSession() as client, client.get(f"{app.admin_url}{path}") as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json() if path != "/metrics" else await resp.text()


async def metric_samples(app: ProxyApp) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = text_string_to_metric_families(await admin(app, "/metrics"))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


async def send(app: ProxyApp, paths: list[str], answers: list[tuple[int, Any]]) -> None:
    async with aiohttp.ClientSession() as client:
        for path in paths:
            async with client.get(f"{app.listen_url}{path}") as resp:
                answers.append((resp.status, await resp.json()))


def primary_answer(path: str) -> tuple[int, Any]:
    kind, _, key = path.strip("/").partition("/")
    if kind == "items":
        return 200, {"id": int(key), "price": 10 * int(key)}
    if kind == "orders":
        return 200, {"order": int(key), "state": "paid"}
    return 200, {"page": key}


async def test_a_critical_change_trips_the_shadow_off_and_every_client_got_the_primary(
    services: dict[str, Service], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rule = "v2:diff.critical>=1/1m;min=10"
    app = await start(services, tmp_path, trips=[rule, "diff.differing>10%/1m"])
    sent: list[str] = []
    answers: list[tuple[int, Any]] = []
    try:
        assert app.trips is not None
        states = {(t["rule"], t["shadow"]): t for t in app.trips.snapshot()}
        # Nothing judged yet: every diff rule waits for the live differ, and says why.
        assert {t["state"] for t in states.values()} == {"waiting for live diff"}
        assert all(t["waiting"] for t in states.values())
        # Equal traffic first: the rules get judged and stay armed (the noise model warms up first).
        i = 0

        async def equal_traffic_judged() -> bool:
            nonlocal i
            paths = [f"/pages/p{i + n}" for n in range(5)]
            i += 5
            sent.extend(paths)
            await send(app, paths, answers)
            assert app.trips is not None
            return all(t["state"] == "armed" for t in app.trips.snapshot() if t["shadow"] == "v2")

        with caplog.at_level(logging.WARNING, "shadowtap.proxy.trips"):
            await wait_for(equal_traffic_judged, "the diff rules armed on equal traffic")
            assert app.flags.shadow_mirroring(0)

            async def tripped() -> bool:
                nonlocal i
                paths = [f"/orders/{i + n}" for n in range(5)]
                i += 5
                sent.extend(paths)
                await send(app, paths, answers)
                return not app.flags.shadow_mirroring(0)

            await wait_for(tripped, "the critical change to trip v2")
        seen_at_trip = services["v2"].seen
        more = [f"/orders/{n}" for n in range(1000, 1040)]
        sent.extend(more)
        await send(app, more, answers)
        # Off means off: only copies already in flight at the trip reached v2 after it.
        assert services["v2"].seen - seen_at_trip <= app.config.shadows[0].concurrency
        assert answers == [primary_answer(path) for path in sent]
        assert app.flags.shadow_mirroring(1), "the secondary is judged on its own and was not tripped"

        line = next(r.getMessage() for r in caplog.records if "tripped for shadow v2" in r.getMessage())
        assert rule in line and "critical" in line and "mirroring to v2 is off" in line
        flags = await admin(app, "/flags")
        assert flags["shadows"]["v2"]["mirroring"] is False and flags["shadows"]["v2"]["tripped"] == rule
        stats = await admin(app, "/stats")
        judged = {(t["rule"], t["shadow"]): t for t in stats["trips"]}
        assert judged[(rule, "v2")]["state"] == "tripped" and judged[(rule, "v2")]["observed"] >= 1
        samples = await metric_samples(app)
        assert samples[("shadowtap_tripped", (("shadow", "v2"),))] == 1.0
        assert samples[("shadowtap_trips_total", (("rule", rule), ("shadow", "v2")))] == 1.0

        # A person turns it back on: judged afresh on the traffic since, and the change is still there.
        services["v2"].broken = False
        async with (
            aiohttp.ClientSession() as client,
            client.put(f"{app.admin_url}/flags", json={"shadows": {"v2": {"mirroring": True}}}) as resp,
        ):
            assert resp.status == 200

        async def judged_afresh() -> bool:
            nonlocal i
            paths = [f"/orders/{i + n}" for n in range(5)]
            i += 5
            sent.extend(paths)
            await send(app, paths, answers)
            assert app.trips is not None
            [entry] = [t for t in app.trips.snapshot() if (t["rule"], t["shadow"]) == (rule, "v2")]
            return bool(entry["state"] == "armed" and entry["samples"] >= 10)

        await wait_for(judged_afresh, "the re-armed rule judged on fresh traffic")
        # The critical pairs from before the trip are still in the store's window: never judged again.
        assert app.flags.shadow_mirroring(0) and app.flags.tripped_by(0) is None
        assert answers == [primary_answer(path) for path in sent]
    finally:
        await app.shutdown()


async def test_a_diff_rule_without_live_diff_says_so_and_never_trips(
    services: dict[str, Service], tmp_path: Path
) -> None:
    app = await start(services, tmp_path, trips=["diff.critical>=1;min=1"], live={"enabled": False})
    try:
        answers: list[tuple[int, Any]] = []
        await send(app, [f"/orders/{n}" for n in range(30)], answers)

        async def judged() -> list[dict[str, Any]] | None:
            stats = await admin(app, "/stats")
            return stats["trips"] if app.results is not None and app.results.reads >= 2 else None

        trips = await wait_for(judged, "two readings of the live results")
        assert {t["state"] for t in trips} == {"waiting for live diff"}
        assert all("live diff is off" in t["waiting"] for t in trips)
        assert app.flags.shadow_mirroring(0) and app.flags.shadow_mirroring(1)
    finally:
        await app.shutdown()


async def test_diff_metrics_say_what_the_live_report_says(
    services: dict[str, Service], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_results, "MAX_ENDPOINT_LABELS", 2)
    app = await start(services, tmp_path, secondary=False)
    try:
        answers: list[tuple[int, Any]] = []
        paths = [f"/items/{n}" for n in range(20)] + [f"/orders/{n}" for n in range(7)]
        paths += [f"/pages/{name}" for name in ("about", "help", "terms")]
        await send(app, paths, answers)
        assert answers == [primary_answer(path) for path in paths]

        async def all_counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            samples = await metric_samples(app)
            compared = sum(v for (name, labels), v in samples.items()
                           if name == "shadowtap_diff_pairs_total" and ("result", "compared") in labels)  # fmt: skip
            return samples if compared == len(paths) else None

        samples = await wait_for(all_counted, "every pair in the diff metrics")
        report = await admin(app, "/diff")
        by_endpoint = {e["endpoint"]: e for e in report["endpoints"]}
        assert set(by_endpoint) == {"GET /items/{id}", "GET /orders/{id}", "GET /pages/about", "GET /pages/help",
                                    "GET /pages/terms"}  # fmt: skip
        pairs: dict[str, dict[str, float]] = {}
        for (name, labels), value in samples.items():
            if name == "shadowtap_diff_pairs_total":
                named = dict(labels)
                assert named["shadow"] == "v2"
                pairs.setdefault(named["endpoint"], {})[named["result"]] = value
        # Two labelled templates (the first two seen), the rest under "other": never a raw path.
        assert len(pairs) == 3 and "other" in pairs and not any("/items/1" in name for name in pairs)
        expected: dict[str, dict[str, float]] = {}
        for endpoint in report["endpoints"]:
            label = endpoint["endpoint"] if endpoint["endpoint"] in pairs else "other"
            into = expected.setdefault(label, {})
            for result in ("compared", "equal", "differing", "errors"):
                into[result] = into.get(result, 0) + endpoint[result]
        assert {label: {k: v for k, v in figures.items() if v} for label, figures in expected.items()} == pairs
        assert pairs.get("GET /items/{id}", pairs["other"])["differing"] >= 1

        signatures = {dict(labels)["severity"]: value for (name, labels), value in samples.items()
                      if name == "shadowtap_diff_signatures"}  # fmt: skip
        in_report: dict[str, int] = {}
        for endpoint in report["endpoints"]:
            for sig in endpoint["signatures"]:
                if not sig["suppressed"]:
                    in_report[sig["severity"]] = in_report.get(sig["severity"], 0) + 1
        assert signatures == {level: float(in_report.get(level, 0)) for level in ("critical", "high", "medium", "low")}
        assert signatures["critical"] >= 1 and signatures["high"] >= 1
    finally:
        await app.shutdown()


async def test_wide_events_carry_the_diff_verdict_of_their_exchange(
    services: dict[str, Service], tmp_path: Path
) -> None:
    log_path = tmp_path / "events.jsonl"
    app = await start(services, tmp_path, events={"path": str(log_path)})
    try:
        answers: list[tuple[int, Any]] = []
        paths = [f"/items/{n}" for n in range(12)] + [f"/pages/p{n}" for n in range(8)]
        await send(app, paths, answers)

        def lines() -> list[dict[str, Any]]:
            return [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []

        async def every_verdict() -> list[dict[str, Any]] | None:
            found = lines()
            diffs = [e for e in found if e.get("event") == "diff" and e["shadow"] == "v2"]
            return found if len(diffs) == len(paths) else None

        found = await wait_for(every_verdict, "a diff event per exchange")
        exchanges = {e["id"]: e for e in found if "event" not in e}
        diffs = {e["id"]: e for e in found if e.get("event") == "diff" and e["shadow"] == "v2"}
        assert set(diffs) == set(exchanges) and len(exchanges) == len(paths)
        report = await admin(app, "/diff?shadow=v2")
        price = next(s for e in report["endpoints"] for s in e["signatures"] if s["path"] == "body.price")
        for exchange_id, event in diffs.items():
            assert event["ts_ns"] == exchanges[exchange_id]["ts_ns"]
            if exchanges[exchange_id]["path"].startswith("/items/"):
                assert event["verdict"] == "differing" and event["severity"] == "high"
                assert event["endpoint"] == "GET /items/{id}" and price["id"] in event["signatures"]
            else:
                assert event["verdict"] == "equal" and event["signatures"] == [] and event["severity"] is None
        assert app.events is not None and app.events.dropped == 0
    finally:
        await app.shutdown()


async def test_the_live_report_has_the_latency_comparison(services: dict[str, Service], tmp_path: Path) -> None:
    app = await start(services, tmp_path, secondary=False)
    try:
        answers: list[tuple[int, Any]] = []
        await send(app, [f"/items/{n}" for n in range(15)], answers)

        async def timed() -> dict[str, Any] | None:
            report = await admin(app, "/diff?since=5m")
            return report if report["latency"]["pairs"] == 15 else None

        report = await wait_for(timed, "15 timed pairs in /diff")
        [comparison] = report["latency"]["comparisons"]
        assert comparison["endpoint"] == "GET /items/{id}" and comparison["shadow"] == "v2"
        assert comparison["pairs"] == 15 and comparison["verdict"] == "too few samples"
        assert report["latency"]["min_pairs"] > 15
    finally:
        await app.shutdown()


async def test_with_workers_a_critical_change_trips_the_shadow_for_all_and_worker_0_counts_it(
    services: dict[str, Service], tmp_path: Path
) -> None:
    rule = "v2:diff.critical>=1;min=5"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowtap", "proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
        "--workers", "2", "--primary", services["primary"].url, "--shadow", f"v2={services['v2'].url}",
        "--tape", str(tmp_path / "tape"), "--set", "live.priority=normal", "--trip", rule,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    err = b""
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        match = re.search(r"listening on (\S+) admin (\S+) workers 2", line)
        assert match, line
        proxy, admin_url = match.groups()
        sent: list[str] = []
        answers: list[tuple[int, Any]] = []
        async with aiohttp.ClientSession() as client:

            async def tripped() -> bool:
                for n in range(5):
                    path = f"/orders/{len(sent) + n}"
                    sent.append(path)
                    # A fresh connection each time, so the kernel spreads them over both workers.
                    async with client.get(f"{proxy}{path}", headers={"Connection": "close"}) as resp:
                        answers.append((resp.status, await resp.json()))
                async with client.get(f"{admin_url}/flags") as resp:
                    flags = await resp.json()
                return bool(flags["shadows"]["v2"]["tripped"] == rule)

            await wait_for(tripped, "the critical change to trip v2 from a worker")
            assert answers == [primary_answer(path) for path in sent]
            async with client.get(f"{admin_url}/flags") as resp:
                assert (await resp.json())["shadows"]["v2"]["mirroring"] is False

            async def counted() -> list[Any] | None:
                async with client.get(f"{admin_url}/metrics") as resp:
                    exposition = await resp.text()
                found = [s for f in text_string_to_metric_families(exposition) for s in f.samples]
                # The other worker may have tripped it before worker 0's last reading: wait for it.
                return found if any(s.name == "shadowtap_diff_signatures" and s.value for s in found) else None

            series = await wait_for(counted, "worker 0's metrics to count the critical signature")
        # Every worker reads the one live store; only worker 0 exports what it found.
        critical = [s for s in series if s.name == "shadowtap_diff_signatures" and s.labels["severity"] == "critical"]
        assert [(s.labels["worker"], s.value) for s in critical] == [("0", 1.0)]
        compared = [s for s in series if s.name == "shadowtap_diff_pairs_total" and s.labels["result"] == "compared"]
        assert {s.labels["worker"] for s in compared} == {"0"} and sum(s.value for s in compared) >= 5
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0, err.decode()
    assert f"trip rule {rule!r} tripped for shadow v2" in err.decode()
