"""The admin API on a real socket: probes, Prometheus text, flags (the kill switch), stats, token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.admin import AdminServer
from proxy.config import ProxyConfig, RuntimeFlags
from proxy.metrics import ProxyMetrics

CONFIG = ProxyConfig.from_mapping(
    {"primary": "http://127.0.0.1:9", "shadows": {"v2": "http://127.0.0.1:10", "v3": "http://127.0.0.1:11"}}
)


class Admin:
    def __init__(self, token: str | None) -> None:
        self.flags = RuntimeFlags(CONFIG)
        self.metrics = ProxyMetrics()
        self.ready = False
        self.server = AdminServer(
            self.flags, self.metrics, lambda: {"worker": 0, "ok": True}, lambda: self.ready, token
        )
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
