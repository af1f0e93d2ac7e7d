"""The proxy data path's own cost per request, in process: no sockets, no kernel, no other processes.

The wall-clock bench (``proxy_bench.py``) mixes the proxy's Python with system calls and with wrk and
nginx sharing two cores; ``proxy_instructions.py`` is steady but slow (callgrind). This one drives the
real ``_ClientConnection`` and ``Http1Connection`` objects of a started ``ProxyServer`` with
transports that only collect what is written: a client request goes in, the primary's response goes
in, and the time per request is the best of five rounds. It is the quick gauge for hot-path edits.

Cases: pass-through with the metrics observer (what ``shadowtap proxy`` runs without shadows or a
tape), pass-through with no observer, and pass-through with one stage that watches completion (the
exchange record and response copy are built, as for mirroring or recording, minus the stages' own
work). The mirror cases run a whole ``ProxyApp`` with one shadow sampled at 100 %: eight clients'
requests per loop turn (as under load), their copies pipelined on one shadow connection whose
answers arrive in one read; with recording, the tape goes to a real ``TapeWriter`` in a temporary
directory (its thread's work counts only where it holds the GIL during the rounds), or to a sink
that takes records and drops them (the record stage alone). The baseline, measured in the same
run, is llhttp (httptools) alone parsing the same request and response with no callbacks but
message completion: what any Python proxy built on it pays. This script prints figures; it never
asserts on them (it stops with an error only when the proxy did not relay or mirror every request).

    .venv/bin/python bench/proxy_inprocess.py [--requests 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httptools
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import proxy_bench  # noqa: E402

from shadowtap.proxy import server as data_path  # noqa: E402
from shadowtap.proxy.app import ProxyApp  # noqa: E402
from shadowtap.proxy.config import ProxyConfig  # noqa: E402
from shadowtap.proxy.forward import ForwardSettings  # noqa: E402
from shadowtap.proxy.metrics import MetricsStage, ProxyMetrics  # noqa: E402
from shadowtap.proxy.stages import ProxiedExchange  # noqa: E402
from shadowtap.recorder._frames import FrameEncoder  # noqa: E402
from shadowtap.recorder.writer import IntakeStats  # noqa: E402
from shadowtap.wire.client import Http1Connection, PipelinedConnection  # noqa: E402

REQUEST = b"GET /api/items?page=2 HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 06:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: 60\r\nConnection: keep-alive\r\n\r\n" + b"x" * 60
)


class _Collecting:
    """A transport that keeps what is written (cleared between rounds) and notes a close."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, data: list[bytes]) -> None:
        self.written.extend(data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def close(self) -> None:
        self.closed = True

    abort = close


class _WatchesCompletion:
    """A stage that does nothing but makes the data path build each exchange's record."""

    name = "noop"

    def request_complete(self, exchange: ProxiedExchange) -> None:
        return None

    def exchange_complete(self, exchange: ProxiedExchange) -> None:
        return None

    async def aclose(self, timeout_s: float) -> None:
        return None


def _best_ns(step: Callable[[], None], requests: int) -> float:
    for _ in range(2000):
        step()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter_ns()
        for _ in range(requests):
            step()
        best = min(best, (time.perf_counter_ns() - started) / requests)
    return best


async def _data_path_ns(requests: int, observers: bool, stage: bool) -> float:
    settings = ForwardSettings(primary="http://127.0.0.1:9")
    server = data_path.ProxyServer(
        settings,
        stages=[_WatchesCompletion()] if stage else [],
        observers=[MetricsStage(ProxyMetrics())] if observers else [],
    )
    await server.start("127.0.0.1", 0)
    try:
        ctx = server._ctx
        assert ctx is not None
        client = data_path._ClientConnection(ctx)
        client_side = _Collecting()
        client.connection_made(client_side)  # type: ignore[arg-type]
        primary = Http1Connection(ctx.pool)
        primary_side = _Collecting()
        primary.connection_made(primary_side)  # type: ignore[arg-type]
        ctx.pool.release(primary)

        def step() -> None:
            client.data_received(REQUEST)
            primary.data_received(RESPONSE)
            client_side.written.clear()
            primary_side.written.clear()

        step()
        client.data_received(REQUEST)
        sent = b"".join(primary_side.written)
        primary.data_received(RESPONSE)
        answered = b"".join(client_side.written)
        if not sent.startswith(b"GET /api/items?page=2 HTTP/1.1\r\n") or not answered.endswith(b"x" * 60):
            raise SystemExit(f"the data path did not relay the exchange: {sent!r} / {answered!r}")
        ns = _best_ns(step, requests)
        if client_side.closed or primary_side.closed:
            raise SystemExit("the data path closed a keep-alive connection during the rounds")
        return ns
    finally:
        await server.shutdown(1.0)


#: Client connections whose requests arrive in one loop turn in the mirror cases.
_CLIENTS = 8


class _DropsRecords:
    """A tape sink that joins in "another process", as ``ProcessTapeWriter`` does: it packs every
    record's ``wire()`` array as that writer would, then drops them. What is left is the record
    stage's cost on the loop; the pipe write is not counted (one per batch of a few milliseconds)."""

    hosts_intake = True

    def __init__(self) -> None:
        self._pack = FrameEncoder().pack
        self.joined = 0

    @property
    def intake_stats(self) -> IntakeStats:
        return IntakeStats({"joined": self.joined})

    def submit_record(self, record: list[object]) -> bool:
        self._pack(record)
        return True

    def submit_entry(self, item: Any) -> bool:
        self._pack(item.wire())
        self.joined += 1
        return True

    def submit_extra(self, item: Any) -> bool:
        self._pack(item.wire())
        return True


async def _best_async_ns(step: Callable[[], Awaitable[None]], requests: int) -> float:
    for _ in range(2000 // _CLIENTS):
        await step()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter_ns()
        for _ in range(requests // _CLIENTS):
            await step()
        best = min(best, (time.perf_counter_ns() - started) / (requests // _CLIENTS * _CLIENTS))
    return best


async def _mirror_ns(requests: int, tape: str) -> float:
    """Per request, with one shadow at 100 %; ``tape`` is "" (no recording), "drop" or "writer"."""
    with tempfile.TemporaryDirectory() as work:
        mapping: dict[str, object] = {
            "primary": "http://127.0.0.1:9",
            "listen": "127.0.0.1:0",
            "shadows": [{"name": "v2", "url": "http://127.0.0.1:9", "sample_percent": 100}],
            "admin": {"listen": "off"},
        }
        if tape:
            mapping["record"] = {"tape": f"{work}/tape"}
        app = ProxyApp(ProxyConfig.from_mapping(mapping))
        await app.start()
        try:
            assert app.server is not None and app.mirror is not None
            if tape == "drop":
                assert app.record is not None
                # As the app wires a joining writer: the stage sends parts and keeps no joiner.
                sink = _DropsRecords()
                app.record._tape = app.record._remote = sink
                app.record._joiner = None
            ctx = app.server._ctx
            assert ctx is not None
            clients = []
            for _ in range(_CLIENTS):
                client = data_path._ClientConnection(ctx)
                client_side = _Collecting()
                client.connection_made(client_side)  # type: ignore[arg-type]
                primary = Http1Connection(ctx.pool)
                primary.connection_made(_Collecting())  # type: ignore[arg-type]
                ctx.pool.release(primary)  # back in the pool after each exchange (keep-alive)
                clients.append((client, client_side, primary))
            shadow_mirror = app.mirror.shadows[0]
            assert shadow_mirror._pool is not None
            shadow = PipelinedConnection(shadow_mirror._pool)
            shadow_side = _Collecting()
            shadow.connection_made(shadow_side)  # type: ignore[arg-type]
            shadow_mirror._pool.release(shadow)
            answers = RESPONSE * _CLIENTS

            async def step() -> None:
                for client, _, _ in clients:
                    client.data_received(REQUEST)
                for _, _, primary in clients:
                    primary.data_received(RESPONSE)
                await asyncio.sleep(0)  # the mirror's pump: the copies leave in one write
                shadow.data_received(answers)
                for _, client_side, primary in clients:
                    client_side.written.clear()
                    primary.transport.written.clear()  # type: ignore[union-attr]
                shadow_side.written.clear()

            await step()
            ns = await _best_async_ns(step, requests)
            state = app.mirror.stats()["v2"]
            answered = app.metrics.mirror_outcomes.get(("v2", "ok"), 0)
            if state["in_flight"] or state["queue_depth"] or shadow.closed or answered < requests:
                raise SystemExit(f"the mirror did not keep up: {answered} answered, {state}")
            if tape:
                assert app.record is not None
                stats = app.record.snapshot()
                if stats["joined"] < requests:
                    raise SystemExit(f"the record stage joined too few exchanges: {stats}")
            return ns
        finally:
            await app.shutdown()


class _Completes:
    def on_message_complete(self) -> None:
        return None


def _parse_only_ns(requests: int) -> float:
    request_parser = httptools.HttpRequestParser(_Completes())
    response_parser = httptools.HttpResponseParser(_Completes())

    def step() -> None:
        request_parser.feed_data(REQUEST)
        response_parser.feed_data(RESPONSE)

    return _best_ns(step, requests)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000, help="requests per round (best of 5 rounds)")
    args = parser.parse_args()
    requests = max(1000, args.requests)
    print(f"proxy_inprocess: {requests:,} requests per round, best of 5, fake transports")
    print(f"  {proxy_bench.interpreter()}")
    baseline = _parse_only_ns(requests)
    rows = [("llhttp parse only (baseline)", baseline)]
    for name, observers, stage in (
        ("pass-through, metrics observer", True, False),
        ("pass-through, no observer", False, False),
        ("pass-through + a completion stage", True, True),
    ):
        rows.append((name, uvloop.run(_data_path_ns(requests, observers, stage))))
    for name, tape in (
        ("mirroring (1 shadow, 100 %)", ""),
        ("mirroring + record stage, parts dropped", "drop"),
        ("mirroring + recording to a tape", "writer"),
    ):
        rows.append((name, uvloop.run(_mirror_ns(requests, tape))))
    print(f"\n{'case':<38} {'ns/request':>11} {'x baseline':>11}")
    for name, ns in rows:
        print(f"{name:<38} {ns:>11,.0f} {ns / baseline:>11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
