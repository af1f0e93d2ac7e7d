"""Isolation: a black-holed, slow, resetting or garbage-speaking shadow costs the primary nothing.

Each case measures the same primary through the proxy with no shadow and with the bad shadow, in
the same test, and compares latency with a generous bound (the machine is shared; the point is
"not raised by the shadow's seconds of delay", not a benchmark). Every primary request must succeed
and the shadow's drops and failures must be counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import struct
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shadowtap.proxy.app import ProxyApp
from shadowtap.proxy.config import ProxyConfig

REQUESTS = 150
CLIENTS = 4


class BadShadow:
    """A TCP server that misbehaves in one way; ``close`` also drops every accepted connection."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self._closing = asyncio.Event()
        self._handlers: list[asyncio.Task[Any]] = []
        self.url = ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.append(task)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if self.behaviour == "black-hole":
                    await self._closing.wait()
                    return
                elif self.behaviour == "slow":
                    # Far slower than the primary (about 1,000x) and past the shadow timeout.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), 2.0)
                    if self._closing.is_set():
                        return
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
                elif self.behaviour == "reset":
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                else:
                    writer.write(b"\x16\x03\x01 not http at all " + head[:16] + b"\r\n\r\n")
                    await writer.drain()
                    writer.close()
                    return

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self.url

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        self._closing.set()
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()


async def start_primary() -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text='{"ok": true}', content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def measure(url: str) -> list[float]:
    """Latency of every request (REQUESTS over CLIENTS concurrent keep-alive clients); all must be 200."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def one_client(offset: int) -> None:
            for i in range(offset, REQUESTS, CLIENTS):
                started = time.perf_counter()
                async with client.get(f"{url}/api/items/{i}") as resp:
                    assert resp.status == 200
                    assert await resp.read() == b'{"ok": true}'
                latencies.append(time.perf_counter() - started)

        async with asyncio.timeout(60):
            await asyncio.gather(*(one_client(c) for c in range(CLIENTS)))
    assert len(latencies) == REQUESTS
    return latencies


async def run_proxy(primary: str, shadows: dict[str, Any]) -> tuple[list[float], dict[tuple[str, str], int]]:
    """Latencies through a fresh proxy, and its mirror outcome counts once it has shut down."""
    config = ProxyConfig.from_mapping(
        # Live diff off: with a shadow it is on by default, and the baseline (no shadow) runs none.
        {"listen": "127.0.0.1:0", "primary": primary, "shadows": shadows, "admin": {"listen": "off"},
         "shutdown_timeout_s": 2.0, "live": {"enabled": False}}
    )  # fmt: skip
    app = ProxyApp(config)
    await app.start()
    try:
        latencies = await measure(app.listen_url)
    finally:
        await app.shutdown()
    return latencies, dict(app.metrics.mirror_outcomes)


@pytest.mark.parametrize("behaviour", ["black-hole", "slow", "reset", "garbage"])
async def test_bad_shadow_does_not_slow_or_fail_the_primary(behaviour: str) -> None:
    runner, primary = await start_primary()
    shadow = BadShadow(behaviour)
    await shadow.start()
    shadow_settings = {
        "bad": {"url": shadow.url, "total_timeout_s": 1.0, "concurrency": 4, "queue_size": 8,
                "breaker": {"consecutive_failures": 5, "open_s": 30}}
    }  # fmt: skip
    try:
        baseline, _ = await run_proxy(primary, {})
        shadowed, outcomes = await run_proxy(primary, shadow_settings)
    finally:
        await shadow.close()
        await runner.cleanup()

    base_p50, shadow_p50 = statistics.median(baseline), statistics.median(shadowed)
    base_p90 = statistics.quantiles(baseline, n=10)[-1]
    shadow_p90 = statistics.quantiles(shadowed, n=10)[-1]
    # Generous: the shadow's own delay is 1-2 s (or forever); a leak of it would blow these bounds.
    assert shadow_p50 < base_p50 * 3 + 0.005, (base_p50, shadow_p50)
    assert shadow_p90 < base_p90 * 3 + 0.010, (base_p90, shadow_p90)
    # No request waited for the shadow (its timeout is 1 s, the slow one answers after 2 s).
    assert max(shadowed) < 0.9, max(shadowed)
    dropped = {outcome: n for (name, outcome), n in outcomes.items() if outcome not in ("mirrored", "ok")}
    assert sum(dropped.values()) > 0, outcomes
    assert shadow.connections > 0
    # Each misbehaviour shows up as its own failure kind; bursts also fill the bounded queue and
    # open the breaker, and copies still queued at shutdown are cancelled.
    characteristic = {"black-hole": "timeout", "slow": "timeout", "reset": "reset", "garbage": "bad-response"}
    assert characteristic[behaviour] in dropped, dropped
    assert set(dropped) <= {characteristic[behaviour], "queue-full", "breaker-open", "cancelled"}, dropped
