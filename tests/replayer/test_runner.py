"""The runner over an in-memory transport: session order, caps, results and a plan that fails."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator

import pytest

import shadowtap.replayer.runner as runner_module
from shadowtap.recorder import (
    PRIMARY,
    REPLAY,
    ConfigError,
    Exchange,
    Failure,
    FailureKind,
    Headers,
    Outcome,
    Response,
    TapeFormatError,
)
from shadowtap.replayer.plan import PlannedRequest, PlanOptions, Scaling, plan_requests
from shadowtap.replayer.runner import Progress, RunnerSettings, replay
from shadowtap.replayer.transport import MemoryTransport
from tests.replayer.tapes import MS, make_exchange


class Sink:
    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    def submit(self, exchange: Exchange) -> bool:
        self.exchanges.append(exchange)
        return True


def planned(tape: list[Exchange], **scaling: object) -> Iterator[PlannedRequest]:
    return plan_requests(lambda: tape, PlanOptions(scaling=Scaling(**scaling)))  # type: ignore[arg-type]


async def test_sessions_keep_order_and_never_overlap_while_sessions_run_concurrently() -> None:
    tape = [make_exchange(i, i * 2, session=f"s{i % 3}") for i in range(30)]
    active: dict[str, int] = {}
    log: list[tuple[str, str]] = []
    max_concurrent = 0

    async def handler(method: str, target: str, headers: Headers, body: bytes) -> Outcome:
        nonlocal max_concurrent
        session = f"s{int(target.rsplit('/', 1)[1]) % 3}"
        assert active.get(session, 0) == 0, "two requests of one session overlapped"
        active[session] = 1
        max_concurrent = max(max_concurrent, sum(active.values()))
        log.append((session, target))
        await asyncio.sleep(0.01)  # longer than the recorded 2 ms spacing: sessions must wait
        active[session] = 0
        return Response(200)

    outcome = await replay(planned(tape, speed=0.0), MemoryTransport(handler))
    assert outcome.stats.overall.requests == 30 and outcome.error is None
    for s in ("s0", "s1", "s2"):
        seen = [int(t.rsplit("/", 1)[1]) for sess, t in log if sess == s]
        assert seen == sorted(seen) and len(seen) == 10
    assert max_concurrent == 3


async def test_in_flight_cap_holds_back_and_counts_and_the_wait_is_in_corrected_time() -> None:
    tape = [make_exchange(i, 0) for i in range(20)]

    async def handler(method: str, target: str, headers: Headers, body: bytes) -> Outcome:
        await asyncio.sleep(0.02)
        return Response(200)

    outcome = await replay(planned(tape), MemoryTransport(handler), settings=RunnerSettings(max_in_flight=2))
    stats = outcome.stats
    assert stats.held_back == 18
    assert stats.overall.percentile_ms("service", 50) < 60
    assert stats.overall.percentile_ms("corrected", 100) > 150  # the last pair waited for 9 pairs


async def test_results_carry_recorded_and_replayed_responses_with_timings() -> None:
    tape = [make_exchange(0, 0), make_exchange(1, 5, target="/down")]

    async def handler(method: str, target: str, headers: Headers, body: bytes) -> Outcome:
        if target == "/down":
            return Failure(FailureKind.CONNECT_ERROR, "refused")
        return Response(201, "Created", (), b"replayed")

    sink = Sink()
    outcome = await replay(planned(tape, clones=2, clone_offset_s=0.01), MemoryTransport(handler), results=sink)
    assert outcome.results_submitted == 4
    by_id = {e.id: e for e in sink.exchanges}
    assert set(by_id) == {"ex0", "ex1", "ex0~c1i0", "ex1~c1i0"}
    first = by_id["ex0"]
    assert first.primary == tape[0].primary
    assert first.response(REPLAY) == Response(201, "Created", (), b"replayed")
    assert first.request == tape[0].request
    assert first.tags["recorded_id"] == "ex0" and first.tags["source"] == "replay"
    timing = first.timings[REPLAY]
    assert timing.sent_ns is not None and timing.done_ns is not None and 0 <= timing.sent_ns <= timing.done_ns
    assert by_id["ex1~c1i0"].outcome(REPLAY) == Failure(FailureKind.CONNECT_ERROR, "refused")
    assert PRIMARY not in first.timings  # nothing was recorded for the primary's timing
    assert outcome.stats.overall.errors["connect"] == 2


async def test_a_plan_that_fails_midway_keeps_what_was_replayed() -> None:
    tape = [make_exchange(i, 0) for i in range(5)]

    def broken() -> Iterator[PlannedRequest]:
        yield from planned(tape, speed=0.0)
        raise TapeFormatError("checksum mismatch", path="bad.tape", offset=4096)

    async def handler(method: str, target: str, headers: Headers, body: bytes) -> Outcome:
        return Response(200)

    sink = Sink()
    outcome = await replay(broken(), MemoryTransport(handler), results=sink)
    assert outcome.error is not None and "bad.tape at byte 4096" in str(outcome.error)
    assert len(sink.exchanges) == 5 and outcome.stats.overall.requests == 5


async def test_stop_event_ends_dispatch_and_progress_reports() -> None:
    tape = [make_exchange(i, i * 50) for i in range(40)]
    stop = asyncio.Event()
    snapshots: list[Progress] = []

    async def handler(method: str, target: str, headers: Headers, body: bytes) -> Outcome:
        if target == "/r/3":
            stop.set()
        return Response(200)

    started = time.monotonic()
    outcome = await replay(
        planned(tape),
        MemoryTransport(handler),
        stop=stop,
        progress=snapshots.append,
        settings=RunnerSettings(progress_interval_s=0.05, lookahead_s=0.0),
    )
    assert outcome.stopped and 4 <= outcome.stats.overall.requests < 10
    assert time.monotonic() - started < 1.0
    assert snapshots and snapshots[-1].done == outcome.stats.overall.requests


async def test_start_lag_is_small_in_memory() -> None:
    tape = [make_exchange(i, i * 5) for i in range(100)]

    async def handler(method: str, target: str, headers: Headers, body: bytes) -> Outcome:
        return Response(200)

    outcome = await replay(planned(tape), MemoryTransport(handler), t0_ns=time.monotonic_ns() + 50 * MS)
    # Loose for a shared machine; the real figure is measured by bench/replay_bench.py.
    assert outcome.stats.overall.percentile_ms("start_lag", 50) < 5


async def test_a_stop_cuts_long_waits_short() -> None:
    # One session whose second request is due a minute later: a stop must not wait for it.
    tape = [make_exchange(0, 0, session="s"), make_exchange(1, 60_000, session="s")]
    stop = asyncio.Event()

    async def handler(method: str, target: str, headers: Headers, body: bytes) -> Outcome:
        asyncio.get_running_loop().call_later(0.05, stop.set)
        return Response(200)

    started = time.monotonic()
    outcome = await replay(planned(tape), MemoryTransport(handler), stop=stop, settings=RunnerSettings(lookahead_s=120))
    assert time.monotonic() - started < 1.0
    assert outcome.stopped and outcome.stats.overall.requests == 1 and outcome.planned == 1


async def test_a_transport_that_raises_costs_one_request_not_the_replay() -> None:
    tape = [make_exchange(i, 0) for i in range(5)]

    async def handler(method: str, target: str, headers: Headers, body: bytes) -> Outcome:
        if target == "/r/2":
            raise ValueError("bug in a transport")
        return Response(200)

    sink = Sink()
    outcome = await replay(planned(tape, speed=0.0), MemoryTransport(handler), results=sink)
    assert outcome.stats.overall.requests == 5 and outcome.stats.overall.errors == {"other": 1}
    failed = next(e for e in sink.exchanges if e.id == "ex2").outcome(REPLAY)
    assert isinstance(failed, Failure) and "bug in a transport" in failed.message


@pytest.mark.parametrize(
    ("setting", "value", "field"),
    [
        ("read_slice_s", 0, "read-slice"),
        ("batch_window_s", -0.001, "batch-window"),
        ("batch_window_s", 0.5, "batch-window"),
        ("min_batch_window_s", 0.002, "min-batch-window"),
        ("wake_timer", "spin", "wake-timer"),
    ],
)
def test_runner_settings_are_checked(setting: str, value: object, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunnerSettings(**{setting: value})  # type: ignore[arg-type]
    assert info.value.field == field


async def test_due_requests_go_between_slices_of_a_slow_plan() -> None:
    # Every request is due at once and reading each costs 0.1 ms: the dispatcher must let the
    # first ones go after a slice instead of reading the whole plan first (that was start lag).
    tape = [make_exchange(i, 0) for i in range(200)]
    read = 0
    read_when_first_sent: list[int] = []

    def slow_plan() -> Iterator[PlannedRequest]:
        nonlocal read
        for request in planned(tape, speed=0.0):
            spin_until_ns = time.monotonic_ns() + 100_000
            while time.monotonic_ns() < spin_until_ns:
                pass
            read += 1
            yield request

    async def handler(method: str, target: str, headers: Headers, body: bytes) -> Outcome:
        if not read_when_first_sent:
            read_when_first_sent.append(read)
        return Response(200)

    settings = RunnerSettings(read_slice_s=0.0005, lookahead_s=60)
    outcome = await replay(slow_plan(), MemoryTransport(handler), settings=settings)
    assert outcome.stats.overall.requests == 200
    # The first pull runs on a thread, then a 0.5 ms slice reads about 5 more before yielding.
    assert read_when_first_sent[0] < 50


async def test_the_heap_is_frozen_and_the_collector_off_while_replaying_and_both_restored_after() -> None:
    frozen_while_sending: list[int] = []
    collecting_while_sending: list[bool] = []

    async def handler(method: str, target: str, headers: Headers, body: bytes) -> Outcome:
        frozen_while_sending.append(gc.get_freeze_count())
        collecting_while_sending.append(gc.isenabled())
        return Response(200)

    assert gc.get_freeze_count() == 0 and gc.isenabled()
    outcome = await replay(planned([make_exchange(i, 0) for i in range(3)], speed=0.0), MemoryTransport(handler))
    assert outcome.stats.overall.requests == 3
    assert min(frozen_while_sending) > 0
    assert collecting_while_sending == [False] * 3
    assert gc.get_freeze_count() == 0 and gc.isenabled()


async def test_the_progress_tick_collects_cycles_that_pile_up_while_the_collector_is_off() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    alive: list[int] = []
    stop = asyncio.Event()

    async def handler(method: str, target: str, headers: Headers, body: bytes) -> Outcome:
        for _ in range(runner_module._GC_PILE + 1000):
            Cycle()  # garbage that only the collector frees
        alive.append(gc.get_count()[0])
        return Response(200)

    def progress(p: Progress) -> None:
        if alive and gc.get_count()[0] < alive[0]:
            stop.set()  # collected: the replay can end

    tape = [make_exchange(i, i * 10_000) for i in range(2)]
    settings = RunnerSettings(progress_interval_s=0.01)
    outcome = await replay(planned(tape), MemoryTransport(handler), settings=settings, progress=progress, stop=stop)
    assert outcome.stats.overall.requests >= 1
    assert alive[0] > runner_module._GC_PILE
    assert stop.is_set()


async def test_requests_waiting_for_their_slot_are_not_tasks() -> None:
    # A pulled request waits as an entry in the due queue; only requests being sent are tasks (whose
    # objects the collector walks), so at 2,000/s a handful exist, not one per pulled request.
    tape = [make_exchange(i, 0) for i in range(1000)]
    waiting: list[int] = []

    async def handler(method: str, target: str, headers: Headers, body: bytes) -> Outcome:
        waiting.append(len(asyncio.all_tasks()))
        return Response(200)

    outcome = await replay(planned(tape, rate_per_s=2000.0), MemoryTransport(handler))
    assert outcome.stats.overall.requests == 1000
    assert max(waiting) < 100
