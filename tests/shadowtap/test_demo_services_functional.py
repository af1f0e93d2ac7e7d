"""The demo services really differ only where PLANTED says, plus noise."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from shadowtap.demo.services import PLANTED, build_app


@pytest.fixture
async def bases() -> AsyncIterator[dict[int, str]]:
    runners = []
    out: dict[int, str] = {}
    for version in (1, 2):
        runner = web.AppRunner(build_app(version), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        out[version] = f"http://{host}:{port}"
        runners.append(runner)
    yield out
    for runner in runners:
        await runner.cleanup()


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, object]]:
    async with session.get(url) as response:
        return response.status, await response.json()


async def test_planted_changes_are_real(bases: dict[int, str]) -> None:
    async with aiohttp.ClientSession() as session:
        s1, u1 = await fetch(session, bases[1] + "/api/users/3")
        s2, u2 = await fetch(session, bases[2] + "/api/users/3")
        assert (s1, s2) == (200, 200)
        assert "email" in u1 and "email" not in u2
        assert u1["request_id"] != u2["request_id"]

        _, p1 = await fetch(session, bases[1] + "/api/products?category=books")
        _, p2 = await fetch(session, bases[2] + "/api/products?category=books")
        assert all(isinstance(i["price"], float) for i in p1["items"])  # type: ignore[index,union-attr]
        assert all(isinstance(i["price"], str) for i in p2["items"])  # type: ignore[index,union-attr]

        assert (await fetch(session, bases[1] + "/api/orders/14"))[0] == 200
        assert (await fetch(session, bases[2] + "/api/orders/14"))[0] == 500
        assert (await fetch(session, bases[2] + "/api/orders/15"))[0] == 200

        totals = [
            (
                (await fetch(session, f"{bases[1]}/api/cart/{n}"))[1]["total"],
                (await fetch(session, f"{bases[2]}/api/cart/{n}"))[1]["total"],
            )
            for n in range(20)
        ]
        assert any(a != b for a, b in totals), "the rounding change must show on some carts"
        assert any(a == b for a, b in totals), "and not on all of them"


async def test_versions_agree_off_the_planted_paths(bases: dict[int, str]) -> None:
    async with aiohttp.ClientSession() as session:
        _, h1 = await fetch(session, bases[1] + "/api/health")
        _, h2 = await fetch(session, bases[2] + "/api/health")
        assert h1 == h2 == {"ok": True}
        _, o1 = await fetch(session, bases[1] + "/api/orders/15")
        _, o2 = await fetch(session, bases[2] + "/api/orders/15")
        for volatile in ("request_id", "generated_at"):
            o1.pop(volatile)
            o2.pop(volatile)
        assert o1 == o2


def test_planted_list_names_four_severities() -> None:
    assert {p.severity for p in PLANTED} == {"critical", "high", "medium"}
    assert len({(p.endpoint, p.path) for p in PLANTED}) == len(PLANTED)
