"""The runner on real sockets: schedule fidelity, coordinated omission, a refusing target."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from typing import Any

import pytest
from aiohttp import web

from shadowtap.recorder import REPLAY, Exchange
from shadowtap.replayer.plan import PlanOptions, Scaling, plan_requests
from shadowtap.replayer.runner import RunnerSettings, replay
from shadowtap.replayer.transport import ClientSettings, HttpTransport
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


class ArrivalRecorder(asyncio.Protocol):
    """A minimal HTTP/1.1 server protocol: notes when each request's first bytes arrive and
    answers at once, so server work does not crowd the schedule on a shared 2-core machine."""

    arrivals: dict[int, int]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        now_ns = time.monotonic_ns()
        if not self.buffer:
            self.first_ns = now_ns
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            path = head.split(b" ", 2)[1].decode()
            self.arrivals[int(path.rsplit("/", 1)[1])] = self.first_ns
            self.first_ns = now_ns
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # type: ignore[attr-defined]


@pytest.mark.parametrize("speed", [1.0, 5.0, 20.0])
async def test_arrivals_follow_the_plan_without_cumulative_drift(speed: float) -> None:
    # The recorded pattern is stretched by the speed so every run lasts about a second: a short
    # descheduling of the process (the machine is shared) then cannot move the median.
    offsets = [at * speed / 2 for at in arrival_pattern()]
    tape = [make_exchange(i, at) for i, at in enumerate(offsets)]
    arrivals: dict[int, int] = {}

    class Recorder(ArrivalRecorder):
        pass

    Recorder.arrivals = arrivals
    server = await asyncio.get_running_loop().create_server(Recorder, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with HttpTransport(url) as transport:
            # Warm a few connections so the first arrivals do not carry a connect.
            await asyncio.gather(*(transport.send("GET", f"/r/{999 + i}", (), b"") for i in range(4)))
            arrivals.clear()
            t0_ns = time.monotonic_ns() + 100 * MS
            plan = plan_requests(lambda: tape, PlanOptions(scaling=Scaling(speed=speed)))
            outcome = await replay(plan, transport, t0_ns=t0_ns)
    finally:
        server.close()
        await server.wait_closed()
    assert outcome.stats.overall.requests == len(tape) == len(arrivals)
    lags_ms = [(arrivals[i] - (t0_ns + int(offsets[i] * MS / speed))) / MS for i in range(len(tape))]
    assert min(lags_ms) > -0.5, "a request went out before its slot"
    # Bounds loose enough for a shared 2-core machine; the bench measures the real p99.
    assert statistics.median(lags_ms) < 5.0, [round(x, 1) for x in lags_ms]
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


class Results:
    """A results sink that keeps every replayed exchange by its request number."""

    def __init__(self) -> None:
        self.by_index: dict[int, Exchange] = {}

    def submit(self, exchange: Exchange) -> bool:
        self.by_index[int(exchange.id.removeprefix("ex"))] = exchange
        return True

    def sent_ns(self, i: int) -> int:
        exchange = self.by_index[i]
        timing = exchange.timings[REPLAY]
        assert exchange.started_mono_ns is not None and timing.sent_ns is not None
        return exchange.started_mono_ns + timing.sent_ns

    def done_ns(self, i: int) -> int:
        exchange = self.by_index[i]
        timing = exchange.timings[REPLAY]
        assert exchange.started_mono_ns is not None and timing.done_ns is not None
        return exchange.started_mono_ns + timing.done_ns


async def serve(arrivals: dict[int, int], *, slow_every: int = 0, slow_s: float = 0.0) -> asyncio.Server:
    """The arrival recorder on port 0; every ``slow_every``-th request is answered ``slow_s`` late."""

    class Recorder(ArrivalRecorder):
        def data_received(self, data: bytes) -> None:
            if not slow_every:
                super().data_received(data)
                return
            # One request at a time per connection here: answer it now or later.
            now_ns = time.monotonic_ns()
            path = data.split(b" ", 2)[1].decode()
            i = int(path.rsplit("/", 1)[1])
            arrivals[i] = now_ns
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            if i % slow_every == 0:
                asyncio.get_running_loop().call_later(slow_s, self.transport.write, answer)  # type: ignore[attr-defined]
            else:
                self.transport.write(answer)  # type: ignore[attr-defined]

    Recorder.arrivals = arrivals
    return await asyncio.get_running_loop().create_server(Recorder, "127.0.0.1", 0)


@pytest.mark.parametrize("wake_timer", ["timerfd", "loop"])
async def test_paced_requests_go_in_order_and_never_before_their_slot(wake_timer: str) -> None:
    # 300 sessions of one request at 3,000/s: several due in every batch window.
    tape = [make_exchange(i, 0.0) for i in range(300)]
    arrivals: dict[int, int] = {}
    server = await serve(arrivals)
    results = Results()
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with HttpTransport(url) as transport:
            t0_ns = time.monotonic_ns() + 50 * MS
            plan = plan_requests(lambda: tape, PlanOptions(scaling=Scaling(rate_per_s=3000.0)))
            settings = RunnerSettings(wake_timer=wake_timer)
            outcome = await replay(plan, transport, t0_ns=t0_ns, settings=settings, results=results)
    finally:
        server.close()
        await server.wait_closed()
    assert outcome.error is None and outcome.stats.overall.requests == 300 == len(arrivals)
    slots_ns = [t0_ns + i * 1_000_000_000 // 3000 for i in range(300)]
    # Never early: not by the runner's clock, and not by the target's.
    assert all(results.by_index[i].started_mono_ns == slots_ns[i] for i in range(300))
    assert all(results.sent_ns(i) >= slots_ns[i] for i in range(300))
    assert all(arrivals[i] >= slots_ns[i] for i in range(300))
    # In order: a request due later is never sent before one due earlier.
    sent = [results.sent_ns(i) for i in range(300)]
    assert sent == sorted(sent)


@pytest.mark.parametrize("wake_timer", ["timerfd", "loop"])
async def test_sessions_keep_their_order_and_recorded_gaps_on_the_wire(wake_timer: str) -> None:
    # Three interleaved sessions, a request every 4 ms in each; every fifth answer takes 15 ms, so
    # the gap after it (not the slot) decides when the session's next request may go.
    tape = [make_exchange(i, i * 4 / 3, session=f"s{i % 3}") for i in range(90)]
    arrivals: dict[int, int] = {}
    server = await serve(arrivals, slow_every=5, slow_s=0.015)
    results = Results()
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with HttpTransport(url) as transport:
            t0_ns = time.monotonic_ns() + 50 * MS
            plan = list(plan_requests(lambda: tape, PlanOptions()))
            settings = RunnerSettings(wake_timer=wake_timer)
            outcome = await replay(plan, transport, t0_ns=t0_ns, settings=settings, results=results)
    finally:
        server.close()
        await server.wait_closed()
    assert outcome.error is None and outcome.stats.overall.requests == 90 == len(arrivals)
    by_index = {int(p.source.id.removeprefix("ex")): p for p in plan}
    for s in range(3):
        session = [i for i in range(90) if i % 3 == s]
        for previous, i in zip(session, session[1:], strict=False):
            gap_ns = by_index[i].gap_ns
            assert gap_ns == 4 * MS
            # After the previous answer came back, plus the recorded think time, and not before its slot.
            assert arrivals[i] >= results.done_ns(previous) + gap_ns
            assert arrivals[i] >= t0_ns + by_index[i].slot_ns
            assert results.sent_ns(i) >= results.done_ns(previous)


async def test_a_cap_holds_back_and_counts_every_request_it_made_wait() -> None:
    # Ten requests due at once, two at a time: the first two go, the other eight are held back.
    tape = [make_exchange(i, 0.0) for i in range(10)]
    arrivals: dict[int, int] = {}
    server = await serve(arrivals, slow_every=1, slow_s=0.02)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with HttpTransport(url, ClientSettings(max_connections=2)) as transport:
            plan = plan_requests(lambda: tape, PlanOptions())
            outcome = await replay(plan, transport, settings=RunnerSettings(max_in_flight=2))
    finally:
        server.close()
        await server.wait_closed()
    assert outcome.stats.overall.requests == 10 == len(arrivals)
    assert outcome.stats.held_back == 8


class CountingStarts:
    """A transport that counts the requests its inner HttpTransport sent without a task."""

    def __init__(self, inner: HttpTransport) -> None:
        self.inner = inner
        self.started: list[str] = []

    def start(self, method: str, target: str, *rest: Any) -> bool:
        sent = self.inner.start(method, target, *rest)
        if sent:
            self.started.append(target)
        return sent

    def send(self, *args: Any) -> Any:
        return self.inner.send(*args)


async def test_a_stop_still_waits_for_the_answers_of_requests_sent_without_a_task() -> None:
    stop = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        if request.match_info["i"] == "3":
            stop.set()  # the replay is stopped while this one is in flight, as by Ctrl-C
            await asyncio.sleep(0.5)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/r/{i}", handle)
    server, url = await start_server(app)
    tape = [make_exchange(i, i * 20.0) for i in range(50)]
    sink = Results()
    try:
        async with HttpTransport(url, ClientSettings(max_connections=1)) as inner:
            transport = CountingStarts(inner)
            plan = plan_requests(lambda: tape, PlanOptions())
            outcome = await replay(plan, transport, results=sink, stop=stop)  # type: ignore[arg-type]
    finally:
        await server.cleanup()
    assert outcome.stopped and outcome.error is None
    assert "/r/3" in transport.started  # a warm pool: it went without a task
    assert sorted(sink.by_index) == [0, 1, 2, 3]
    # /r/3's answer came after the stop, and it is what counts: not a reset when the replay ended.
    answer = sink.by_index[3].response(REPLAY)
    assert answer is not None and answer.status == 200
    overall = outcome.stats.overall
    assert overall.requests == 4 and overall.error_count == 0 and outcome.results_submitted == 4
