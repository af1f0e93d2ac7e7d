"""The admin API on a real socket: probes, Prometheus text, flags (the kill switch), stats, token."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shadowtap.proxy.admin import AdminServer, LocalSource, WorkersSource, merge_worker_metrics
from shadowtap.proxy.config import ProxyConfig
from shadowtap.proxy.flags import RuntimeFlags
from shadowtap.proxy.metrics import ProxyMetrics

CONFIG = ProxyConfig.from_mapping(
    {"primary": "http://127.0.0.1:9", "shadows": {"v2": "http://127.0.0.1:10", "v3": "http://127.0.0.1:11"}}
)


class Admin:
    def __init__(self, token: str | None, *, public_metrics: bool = False) -> None:
        self.flags = RuntimeFlags(CONFIG)
        self.metrics = ProxyMetrics()
        self.ready = False
        source = LocalSource(self.metrics, lambda: {"worker": 0, "ok": True}, lambda: self.ready)
        self.server = AdminServer(self.flags, source, token, public_metrics=public_metrics)
        self.url = ""

    async def start(self) -> Admin:
        port = await self.server.start("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{port}"
        return self


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    running = await Admin(token=None).start()
    yield running
    await running.server.close()


async def test_probes_follow_readiness(admin: Admin) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{admin.url}/healthz") as resp:
            assert resp.status == 200 and await resp.text() == "ok\n"
        async with client.get(f"{admin.url}/readyz") as resp:
            assert resp.status == 503
        admin.ready = True
        async with client.get(f"{admin.url}/readyz") as resp:
            assert resp.status == 200


async def test_metrics_and_stats(admin: Admin) -> None:
    admin.metrics.count_mirror("v2", "queue-full")
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{admin.url}/metrics") as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
            assert 'shadowtap_mirror_outcomes_total{outcome="queue-full",shadow="v2"} 1.0' in await resp.text()
        async with client.get(f"{admin.url}/stats") as resp:
            assert await resp.json() == {"worker": 0, "ok": True}


async def test_put_flags_is_all_or_nothing_and_immediate(admin: Admin, caplog: pytest.LogCaptureFixture) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.put(f"{admin.url}/flags", json={"mirroring": False, "recording": "no"}) as resp:
            assert resp.status == 400
            assert "flags.recording" in (await resp.json())["error"]
        assert admin.flags.mirroring  # the good half of a bad document changed nothing
        async with client.put(
            f"{admin.url}/flags", json={"mirroring": False, "shadows": {"v3": {"sample_percent": 2}}}
        ) as resp:
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
        assert body["mirroring"] is False and body["shadows"]["v3"]["sample_percent"] == 2.0
        assert "runtime flags changed by 127.0.0.1" in caplog.text and '"mirroring": false' in caplog.text
        # Shared-memory flags: what the stages read at the next request.
        assert admin.flags.snapshot()["mirroring"] is False and admin.flags.shadow_percent(1) == 2.0
        async with client.put(f"{admin.url}/flags", data=b"x" * 100_000) as resp:
            assert resp.status == 413
        async with client.put(f"{admin.url}/flags", data=b"[not json") as resp:
            assert resp.status == 400


async def test_bearer_token_guards_all_but_probes() -> None:
    running = await Admin(token="s3cret").start()
    try:
        async with aiohttp.ClientSession() as client:
            for path in ("/healthz", "/readyz"):
                async with client.get(f"{running.url}{path}") as resp:
                    assert resp.status in (200, 503)
            for method, path in (("GET", "/metrics"), ("GET", "/flags"), ("PUT", "/flags"), ("GET", "/stats")):
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                    async with client.request(method, f"{running.url}{path}", headers=headers, json={}) as resp:
                        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
                async with client.request(
                    method, f"{running.url}{path}", headers={"Authorization": "Bearer s3cret"}, json={}
                ) as resp:
                    assert resp.status == 200
    finally:
        await running.server.close()


async def test_public_metrics_opens_metrics_alone() -> None:
    # Prometheus scraping by pod annotations sends no token: /metrics may be opened, nothing else.
    running = await Admin(token="s3cret", public_metrics=True).start()
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{running.url}/metrics") as resp:
                assert resp.status == 200 and "shadowtap_" in await resp.text()
            for method, path in (("GET", "/flags"), ("PUT", "/flags"), ("GET", "/stats")):
                async with client.request(method, f"{running.url}{path}", json={}) as resp:
                    assert resp.status == 401
    finally:
        await running.server.close()


async def test_merged_metrics_label_every_worker_and_keep_each_family_once() -> None:
    first, second = ProxyMetrics(), ProxyMetrics()
    first.count_mirror("v2", "ok")
    second.count_mirror("v2", "ok")
    second.count_mirror("v2", "ok")
    first.primary_latency.observe(0.002)
    text = merge_worker_metrics([first.render().decode(), second.render().decode(), None]).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in families:  # one HELP and one TYPE per family, whatever the number of workers
        assert text.count(f"# TYPE {name}") == 1 or text.count(f"# TYPE {name}_total") == 1, name
    up = {s.labels["worker"]: s.value for s in families["shadowtap_worker_up"].samples}
    assert up == {"0": 1.0, "1": 1.0, "2": 0.0}
    outcomes = {
        s.labels["worker"]: s.value
        for s in families["shadowtap_mirror_outcomes"].samples
        if s.name.endswith("_total") and s.labels.get("outcome") == "ok"
    }
    assert outcomes == {"0": 1.0, "1": 2.0}
    latency = families["shadowtap_primary_latency_seconds"]
    assert latency.type == "histogram"
    counts = {s.labels["worker"]: s.value for s in latency.samples if s.name.endswith("_count")}
    assert counts == {"0": 1.0, "1": 0.0}
    assert all("worker" in s.labels for f in families.values() for s in f.samples)


async def test_workers_source_reports_a_worker_that_does_not_answer() -> None:
    healthy = await Admin(token="s3cret").start()
    healthy.ready = True
    healthy.metrics.count_mirror("v2", "ok")
    with socket.socket() as closed:  # a port nothing listens on: the "worker" is down
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}"
    flags = RuntimeFlags(CONFIG)
    combined = AdminServer(flags, WorkersSource([healthy.url, down], "s3cret", timeout_s=1.0), "s3cret")
    port = await combined.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer s3cret"}
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{url}/healthz") as resp:
                assert resp.status == 503 and "worker 1:" in await resp.text()
            async with client.get(f"{url}/readyz") as resp:
                assert resp.status == 503
            async with client.get(f"{url}/metrics") as resp:
                assert resp.status == 401  # the combined server guards what the workers guard
            async with client.get(f"{url}/metrics", headers=auth) as resp:
                text = await resp.text()
            assert 'shadowtap_worker_up{worker="0"} 1.0' in text and 'shadowtap_worker_up{worker="1"} 0.0' in text
            assert 'shadowtap_mirror_outcomes_total{outcome="ok",shadow="v2",worker="0"} 1.0' in text
            async with client.get(f"{url}/stats", headers=auth) as resp:
                workers = (await resp.json())["workers"]
            assert workers[0]["stats"] == {"worker": 0, "ok": True} and workers[0]["admin"] == healthy.url
            assert workers[1]["admin"] == down and "error" in workers[1] and "stats" not in workers[1]
            # The flags are the shared array itself: no worker needs to answer to change them.
            async with client.put(f"{url}/flags", headers=auth, json={"mirroring": False}) as resp:
                assert resp.status == 200
            assert not flags.mirroring
    finally:
        await combined.close()
        await healthy.server.close()


async def test_a_remote_address_without_a_token_warns_at_start(caplog: pytest.LogCaptureFixture) -> None:
    for token, host in ((None, "0.0.0.0"), ("s3cret", "0.0.0.0"), (None, "127.0.0.1")):
        caplog.clear()
        server = Admin(token=token).server
        try:
            with caplog.at_level("WARNING", logger="shadowtap.proxy.admin"):
                await server.start(host, 0)
        finally:
            await server.close()
        warned = [r for r in caplog.records if "no token" in r.getMessage()]
        assert bool(warned) is (token is None and host == "0.0.0.0"), (token, host)


async def _proxy(*admin_args: str) -> tuple[int | None, str, str]:
    """Start `shadowtap proxy` with these admin flags; its exit code (None: it started), stdout line, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowtap", "proxy", "--listen", "127.0.0.1:0", "--primary", "http://127.0.0.1:9",
        *admin_args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    try:
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
            started = process.returncode is None and "listening on" in line
            if started:
                process.terminate()
            _out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return (None if started else process.returncode), line, err.decode()


async def test_remote_admin_refuses_without_a_token_and_says_why() -> None:
    code, _line, err = await _proxy("--admin", "0.0.0.0:0", "--admin-allow-remote")
    assert code == 2 and "Traceback" not in err
    assert "without a token" in err and "--admin-insecure-no-token" in err and "--admin-token-env" in err


async def test_remote_admin_without_a_token_starts_when_told_and_warns() -> None:
    code, line, err = await _proxy("--admin", "0.0.0.0:0", "--admin-allow-remote", "--admin-insecure-no-token")
    assert code is None, err
    assert "admin http://0.0.0.0:" in line
    assert "the admin API on 0.0.0.0 has no token" in err
