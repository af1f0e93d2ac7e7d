"""The parent's merged ``/stats`` on real processes (``shadowtap proxy --workers 2``): a shadow
that answers 500 trips a rule in one worker or both; the parent's ``mirror`` and ``trips`` are the
workers' figures merged, read from the same ``/stats`` document as the workers' own."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.proxy.test_trips_functional import Primary, Shadow, servers
from tests.shadowtap.test_cmd_proxy_functional import start, stop

__all__ = ["servers"]  # the fixture, imported to be used here


async def test_the_parents_stats_merge_the_workers_outcomes_breakers_and_a_trip(
    servers: tuple[Primary, Shadow],
) -> None:
    primary, shadow = servers
    shadow.mode = "500"
    rule = "shadow.errors>20%/2s;min=5"
    started: list[asyncio.subprocess.Process] = []
    try:
        process, match = await start(
            started, "--primary", primary.url, "--shadow", f"v2={shadow.url}", "--workers", "2", "--trip", rule
        )
        url, admin = match.group(1), match.group(2)
        async with aiohttp.ClientSession() as client:
            for _ in range(3000):
                async with client.get(f"{admin}/flags") as resp:
                    if (await resp.json())["shadows"]["v2"]["tripped"] == rule:
                        break
                for _ in range(5):
                    # A fresh connection each time, so the kernel spreads them over both workers.
                    async with client.get(f"{url}/items/1", headers={"Connection": "close"}) as resp:
                        assert resp.status == 200
            async with client.get(f"{admin}/stats") as resp:
                stats: dict[str, Any] = await resp.json()
        workers = [entry["stats"] for entry in stats["workers"]]
        assert stats["merged"] == {"workers": 2, "answered": [0, 1], "unanswered": []}

        v2 = stats["mirror"]["v2"]
        each = [w["mirror"]["v2"] for w in workers]
        for outcome in {k for w in each for k in w["outcomes"]}:
            assert v2["outcomes"][outcome] == sum(w["outcomes"].get(outcome, 0) for w in each), outcome
        assert v2["outcomes"]["mirrored"] > 0
        assert v2["breakers"] == {str(i): w["breaker"] for i, w in enumerate(each)}
        assert v2["breaker_opened"] == sum(w["breaker_opened"] for w in each)
        statuses = {
            k: sum(w["requests_by_status"].get(k, 0) for w in workers) for w in workers for k in w["requests_by_status"]
        }
        assert stats["requests_by_status"] == statuses

        [merged] = stats["trips"]
        states = [w["trips"][0]["state"] for w in workers]
        assert merged["rule"] == rule and merged["shadow"] == "v2" and merged["state"] == "tripped"
        assert merged["tripped_in"] == [i for i, state in enumerate(states) if state == "tripped"] != []
        assert merged["trips"] == sum(w["trips"][0]["trips"] for w in workers) >= 1
        assert stats["flags"]["shadows"]["v2"] == {
            "mirroring": False,
            "sample_percent": 100.0,
            "recording": True,
            "tripped": rule,
        }
        code, _ = await stop(process)
        assert code == 0
    finally:
        for started_process in started:
            if started_process.returncode is None:
                started_process.kill()
                await started_process.communicate()
