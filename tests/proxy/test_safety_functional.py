"""Safety defaults through the real proxy: safe methods only, marker, credentials, sampling, kill switch."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shadowtap.proxy.app import ProxyApp
from shadowtap.proxy.config import ProxyConfig
from tests.proxy.conftest import AppUpstream


class Recorder(AppUpstream):
    """A real upstream that records method, path and headers of what it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.seen.append((request.method, request.path_qs, {k.lower(): v for k, v in request.headers.items()}))
        return web.Response(text="ok")

    async def settle(self, expected: int, timeout_s: float = 5.0) -> None:
        """Wait until ``expected`` copies arrived (mirrors are asynchronous), then a little more."""
        async with asyncio.timeout(timeout_s):
            while len(self.seen) < expected:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Recorder, Recorder]]:
    primary, shadow = await Recorder().start(), await Recorder().start()
    yield primary, shadow
    await primary.close()
    await shadow.close()


async def proxy(primary: Recorder, shadow_upstream: Recorder, **extra: Any) -> ProxyApp:
    shadow_spec = {"name": "v2", "url": shadow_upstream.url, **extra.pop("shadow", {})}
    app = ProxyApp(
        ProxyConfig.from_mapping({"listen": "127.0.0.1:0", "primary": primary.url, "shadows": [shadow_spec], **extra})
    )
    await app.start()
    return app


async def test_only_safe_methods_marked_and_without_credentials(pair: tuple[Recorder, Recorder]) -> None:
    primary, shadow = pair
    app = await proxy(primary, shadow)
    secrets = {"Authorization": "Bearer prod", "Cookie": "session=prod", "X-Api-Key": "k", "X-Keep": "yes"}
    async with aiohttp.ClientSession() as client:
        for method in ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"):
            async with client.request(method, f"{app.listen_url}/r/{method}", headers=secrets, data=b"x") as resp:
                assert resp.status == 200
    await shadow.settle(3)
    await app.shutdown()
    assert len(primary.seen) == 7
    assert primary.seen[0][2]["authorization"] == "Bearer prod"  # the primary gets everything
    assert sorted(m for m, _, _ in shadow.seen) == ["GET", "HEAD", "OPTIONS"]
    for _, path, headers in shadow.seen:
        assert headers["x-shadowtap-shadow"] == "1"
        assert headers["x-shadowtap-correlation-id"]
        assert headers["x-keep"] == "yes"
        for secret in ("authorization", "cookie", "x-api-key"):
            assert secret not in headers, (path, secret)
    assert len({h["x-shadowtap-correlation-id"] for _, _, h in shadow.seen}) == 3


async def test_shadow_credentials_from_environment(
    pair: tuple[Recorder, Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    primary, shadow = pair
    monkeypatch.setenv("SHADOW_AUTH", "Bearer shadow-only")
    app = await proxy(primary, shadow, shadow={"credentials": {"Authorization": "SHADOW_AUTH"}})
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"{app.listen_url}/me", headers={"Authorization": "Bearer prod"}) as resp,
    ):
        assert resp.status == 200
    await shadow.settle(1)
    await app.shutdown()
    assert shadow.seen[0][2]["authorization"] == "Bearer shadow-only"


async def test_sampling_is_close_to_percent(pair: tuple[Recorder, Recorder]) -> None:
    primary, shadow = pair
    app = await proxy(primary, shadow, shadow={"sample_percent": 25})
    total = 400
    async with aiohttp.ClientSession() as client:
        for i in range(total):
            async with client.get(f"{app.listen_url}/s/{i}") as resp:
                assert resp.status == 200
    await asyncio.sleep(0.3)
    await app.shutdown()
    mirrored = len(shadow.seen)
    # Binomial(400, 0.25): mean 100, sd 8.7; +-40 is over 4.5 sd.
    assert 60 <= mirrored <= 140, mirrored
    assert app.metrics.mirror_outcomes["v2", "sampled-out"] == total - mirrored


async def test_consistent_sampling_is_all_or_none_per_key(pair: tuple[Recorder, Recorder]) -> None:
    primary, shadow = pair
    app = await proxy(primary, shadow, shadow={"sample_percent": 40}, mirror={"sample_key": "header:X-User"})
    users = [f"user-{u}" for u in range(60)]
    async with aiohttp.ClientSession() as client:
        for round_ in range(3):
            for user in users:
                async with client.get(f"{app.listen_url}/u?r={round_}", headers={"X-User": user}) as resp:
                    assert resp.status == 200
    await asyncio.sleep(0.3)
    await app.shutdown()
    per_user = Counter(headers["x-user"] for _, _, headers in shadow.seen)
    assert set(per_user.values()) <= {3}, per_user  # every request of a sampled user, or none
    assert 8 <= len(per_user) <= 40, len(per_user)  # about 40% of 60 users


async def test_kill_switch_stops_mirroring_at_once(pair: tuple[Recorder, Recorder]) -> None:
    primary, shadow = pair
    app = await proxy(primary, shadow)
    admin = app.admin_url
    async with aiohttp.ClientSession() as client:
        for i in range(20):
            async with client.get(f"{app.listen_url}/before/{i}") as resp:
                assert resp.status == 200
        async with client.put(f"{admin}/flags", json={"mirroring": False}) as resp:
            assert resp.status == 200 and (await resp.json())["mirroring"] is False
        for i in range(50):
            async with client.get(f"{app.listen_url}/after/{i}") as resp:
                assert resp.status == 200
        async with client.put(f"{admin}/flags", json={"mirroring": True, "shadows": {"v2": {"mirroring": False}}}) as r:
            assert r.status == 200
        async with client.get(f"{app.listen_url}/shadow-off") as resp:
            assert resp.status == 200
        async with client.put(f"{admin}/flags", json={"shadows": {"v2": {"mirroring": True}}}) as resp:
            assert resp.status == 200
        async with client.get(f"{app.listen_url}/back-on") as resp:
            assert resp.status == 200
    await shadow.settle(21)
    await app.shutdown()
    paths = [path for _, path, _ in shadow.seen]
    assert len(primary.seen) == 72
    assert not [p for p in paths if p.startswith("/after") or p == "/shadow-off"]
    assert sorted(paths) == sorted([f"/before/{i}" for i in range(20)] + ["/back-on"])
    assert app.metrics.mirror_outcomes["v2", "disabled"] == 51


async def test_kill_switch_also_stops_queued_copies() -> None:
    release = asyncio.Event()
    seen: list[str] = []

    async def stuck(request: web.Request) -> web.Response:
        seen.append(request.path)
        await release.wait()
        return web.Response(text="late")

    app_shadow = web.Application()
    app_shadow.router.add_get("/{tail:.*}", stuck)
    runner = web.AppRunner(app_shadow, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    primary = await Recorder().start()
    app = ProxyApp(
        ProxyConfig.from_mapping(
            {
                "listen": "127.0.0.1:0",
                "primary": primary.url,
                "shadows": [{"name": "v2", "url": f"http://127.0.0.1:{runner.addresses[0][1]}", "concurrency": 1}],
            }
        )
    )
    await app.start()
    async with aiohttp.ClientSession() as client:
        for i in range(5):
            async with client.get(f"{app.listen_url}/q/{i}") as resp:
                assert resp.status == 200
        async with asyncio.timeout(5):
            while not seen:
                await asyncio.sleep(0.01)
        assert app.mirror is not None and app.mirror.stats()["v2"]["queue_depth"] == 4
        async with client.put(f"{app.admin_url}/flags", json={"mirroring": False}) as resp:
            assert resp.status == 200
    release.set()
    await asyncio.sleep(0.3)
    await app.shutdown()
    await runner.cleanup()
    await primary.close()
    assert seen == ["/q/0"]
    assert app.metrics.mirror_outcomes["v2", "cancelled"] == 4
