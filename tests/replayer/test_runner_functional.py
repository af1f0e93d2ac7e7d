"""The runner on real sockets: schedule fidelity, coordinated omission, a refusing target."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time

import pytest
from aiohttp import web

from recorder import Exchange
from replayer.plan import PlanOptions, Scaling, plan_requests
from replayer.runner import RunnerSettings, replay
from replayer.transport import ClientSettings, HttpTransport
from tests.replayer.tapes import MS, make_exchange


async def start_server(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def arrival_pattern() -> list[float]:
    """A recorded pattern with bursts, pauses and a steady part: offsets in ms over 2 s."""
    offsets: list[float] = []
    t = 0.0
    for i in range(80):
        offsets.append(t)
        t += (1.0, 40.0, 5.0, 0.0, 60.0)[i % 5]
    return offsets


@pytest.mark.parametrize("speed", [1.0, 5.0, 20.0])
async def test_arrivals_follow_the_plan_without_cumulative_drift(speed: float) -> None:
    offsets = arrival_pattern()
    tape = [make_exchange(i, at) for i, at in enumerate(offsets)]
    arrivals: dict[int, int] = {}

    async def handle(request: web.Request) -> web.Response:
        arrivals[int(request.match_info["i"])] = time.monotonic_ns()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/r/{i}", handle)
    server, url = await start_server(app)
    try:
        async with HttpTransport(url) as transport:
            # Warm one connection so the first arrival does not carry a connect.
            await transport.send("GET", "/r/999", (), b"")
            arrivals.clear()
            t0_ns = time.monotonic_ns() + 100 * MS
            plan = plan_requests(lambda: tape, PlanOptions(scaling=Scaling(speed=speed)))
            outcome = await replay(plan, transport, t0_ns=t0_ns)
    finally:
        await server.cleanup()
    assert outcome.stats.overall.requests == len(tape) == len(arrivals)
    lags_ms = [(arrivals[i] - (t0_ns + int(offsets[i] * MS / speed))) / MS for i in range(len(tape))]
    assert min(lags_ms) > -0.5, "a request went out before its slot"
    # Bounds loose enough for a shared 2-core machine; the bench measures the real p99.
    assert statistics.median(lags_ms) < 5.0
    assert max(lags_ms) < 100.0
    quarter = len(lags_ms) // 4
    drift_ms = statistics.median(lags_ms[-quarter:]) - statistics.median(lags_ms[:quarter])
    assert abs(drift_ms) < 5.0, f"cumulative drift of {drift_ms:.1f} ms"


async def test_a_stall_shows_in_corrected_time_not_only_in_service_time() -> None:
    stalled = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        if request.match_info["i"] == "0" and not stalled.is_set():
            stalled.set()
            await asyncio.sleep(1.0)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/r/{i}", handle)
    server, url = await start_server(app)
    tape = [make_exchange(i, i * 10.0) for i in range(150)]  # 100 requests/s for 1.5 s
    try:
        async with HttpTransport(url, ClientSettings(max_connections=1)) as transport:
            plan = plan_requests(lambda: tape, PlanOptions())
            outcome = await replay(plan, transport, settings=RunnerSettings(max_in_flight=1))
    finally:
        await server.cleanup()
    overall = outcome.stats.overall
    assert overall.requests == 150 and overall.error_count == 0
    # One request took a second; everything sent behind it waited, which only corrected time shows.
    assert overall.percentile_ms("service", 100) >= 900
    assert overall.percentile_ms("service", 50) < 50
    assert overall.percentile_ms("corrected", 50) > 200
    assert outcome.stats.held_back >= 90
    # The scheduler itself stayed healthy: the wait is not start lag.
    assert overall.percentile_ms("start_lag", 50) < 5


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_target_that_refuses_connections_is_counted_as_connect_errors() -> None:
    tape = [make_exchange(i, i * 1.0) for i in range(10)]
    results: list[Exchange] = []

    class Sink:
        def submit(self, exchange: Exchange) -> bool:
            results.append(exchange)
            return True

    async with HttpTransport(f"http://127.0.0.1:{closed_port()}") as transport:
        outcome = await replay(plan_requests(lambda: tape, PlanOptions()), transport, results=Sink())
    assert outcome.stats.overall.errors["connect"] == 10
    assert outcome.stats.summary().error_rate == 1.0
    assert len(results) == 10
