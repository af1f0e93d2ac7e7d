"""The due queue's batching on an injected clock, and the wake timers on a real loop."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
import uvloop

from shadowtap.replayer.pacer import BATCH, WAKE_TIMERS, DueQueue, LoopTimer, TimerFd, make_wake_timer

US = 1_000


class Clock:
    """Drives a ``DueQueue`` the way the runner's timer does: look at each wake time it asks for."""

    def __init__(self, queue: DueQueue[str], start_ns: int = 0) -> None:
        self.queue = queue
        self.now_ns = start_ns
        self.wakes: list[int] = []
        self.released: list[tuple[int, int, str]] = []  # (released at, due, item)

    def run(self) -> None:
        while (wake_ns := self.queue.wake_ns()) is not None:
            assert wake_ns >= self.now_ns, "asked to wake in the past"
            self.now_ns = wake_ns
            self.wakes.append(self.now_ns)
            self.released += [(self.now_ns, due_ns, item) for due_ns, item in self.queue.pop_due(self.now_ns)]


def test_releases_in_due_order_never_early_and_at_most_a_window_late() -> None:
    queue: DueQueue[str] = DueQueue(window_ns=500 * US)
    # 20,000/s for 10 ms, pushed out of order (session continuations come back in any order).
    dues = [i * 50 * US for i in range(200)]
    for due_ns in dues[::2] + dues[1::2]:
        queue.push(due_ns, f"r{due_ns}")
    clock = Clock(queue)
    clock.run()
    assert [due for _, due, _ in clock.released] == dues
    assert all(released >= due for released, due, _ in clock.released)
    assert all(released - due <= 500 * US for released, due, _ in clock.released)
    # One wake per window, however many are due in it: ten requests a wake-up.
    assert len(clock.wakes) == 21
    assert all(b - a >= 500 * US for a, b in zip(clock.wakes, clock.wakes[1:], strict=False))


def test_a_sparse_schedule_wakes_exactly_at_each_due_time() -> None:
    queue: DueQueue[str] = DueQueue(window_ns=500 * US)
    dues = [i * 10_000 * US for i in range(5)]  # 100/s: further apart than the window
    for due_ns in dues:
        queue.push(due_ns, str(due_ns))
    clock = Clock(queue)
    clock.run()
    assert clock.wakes == dues
    assert all(released == due for released, due, _ in clock.released)


def test_ties_go_in_push_order_and_items_are_never_compared() -> None:
    queue: DueQueue[object] = DueQueue(window_ns=0)
    items = [object() for _ in range(5)]  # objects that do not order: a comparison would raise
    for item in items:
        queue.push(7, item)
    assert [item for _, item in queue.pop_due(7)] == items


def test_push_says_when_the_item_is_the_new_earliest() -> None:
    queue: DueQueue[str] = DueQueue(window_ns=0)
    assert queue.push(100, "a")
    assert not queue.push(200, "b")
    assert queue.push(50, "c")
    assert not queue.push(50, "d")  # a tie is behind the earlier push
    assert queue.wake_ns() == 50


def test_an_early_look_releases_nothing_and_keeps_the_due_time() -> None:
    # A wake-up that came early (a spurious one, or a push in between) must not release ahead of time.
    queue: DueQueue[str] = DueQueue(window_ns=100)
    queue.push(1_000, "a")
    assert queue.pop_due(999) == []
    assert queue.wake_ns() == 1_000
    assert queue.pop_due(1_000) == [(1_000, "a")]
    assert queue.wake_ns() is None


def test_the_window_counts_from_the_last_look() -> None:
    queue: DueQueue[str] = DueQueue(window_ns=1_000)
    queue.push(5_000, "a")
    assert queue.pop_due(5_000) == [(5_000, "a")]
    queue.push(5_200, "b")  # due soon after a wake-up: waits for the window to pass
    assert queue.wake_ns() == 6_000
    queue.push(9_000, "c")
    assert [item for _, item in queue.pop_due(6_000)] == ["b"]
    assert queue.wake_ns() == 9_000  # far enough out: exactly on time


def test_drain_empties_in_due_order() -> None:
    queue: DueQueue[str] = DueQueue(window_ns=0)
    for due_ns, item in ((30, "c"), (10, "a"), (20, "b")):
        queue.push(due_ns, item)
    assert queue.drain() == ["a", "b", "c"]
    assert len(queue) == 0 and queue.wake_ns() is None


def steady(queue: DueQueue[str], rate_per_s: int, seconds: float) -> Clock:
    for i in range(int(rate_per_s * seconds)):
        queue.push(i * 1_000_000_000 // rate_per_s, str(i))
    clock = Clock(queue)
    clock.run()
    return clock


@pytest.mark.parametrize(
    ("rate_per_s", "lowest_us", "highest_us"),
    [
        (500, 1_500, 1_500),
        (2_000, 1_500, 1_500),
        # BATCH requests 200 us apart: any window that releases exactly BATCH of them is steady.
        (5_000, BATCH * 200, (BATCH + 1) * 200),
        (20_000, 500, 500),
        (100_000, 500, 500),
    ],
)
def test_the_window_adapts_to_about_a_batch_a_wake_up_between_its_bounds(
    rate_per_s: int, lowest_us: int, highest_us: int
) -> None:
    queue: DueQueue[str] = DueQueue(window_ns=1_500 * US, min_window_ns=500 * US)
    clock = steady(queue, rate_per_s, 0.5)
    assert lowest_us * US <= queue.window_ns <= highest_us * US
    # Whatever the window, nothing goes early or later than the longest window.
    assert all(0 <= released - due <= 1_500 * US for released, due, _ in clock.released)
    assert [due for _, due, _ in clock.released] == sorted(due for _, due, _ in clock.released)


def test_the_window_follows_a_change_of_rate() -> None:
    queue: DueQueue[str] = DueQueue(window_ns=1_500 * US, min_window_ns=500 * US)
    steady(queue, 20_000, 0.2)
    assert queue.window_ns == 500 * US
    # Then 1,000/s, a second after: the window grows back to the longest.
    for i in range(200):
        queue.push(1_000_000_000 + i * 1_000_000, f"slow{i}")
    Clock(queue, start_ns=1_000_000_000).run()
    assert queue.window_ns == 1_500 * US


def test_bad_windows_are_refused() -> None:
    with pytest.raises(ValueError):
        DueQueue(window_ns=-1)
    with pytest.raises(ValueError):
        DueQueue(window_ns=500, min_window_ns=600)


@pytest.mark.parametrize("kind", ["timerfd", "loop"])
async def test_a_wake_timer_never_fires_before_its_deadline(kind: str) -> None:
    await never_early(kind)


@pytest.mark.parametrize("kind", ["timerfd", "loop"])
def test_a_wake_timer_never_fires_before_its_deadline_on_uvloop(kind: str) -> None:
    # uvloop's timers run on libuv's cached millisecond clock: the case the loop timer rounds for.
    uvloop.run(never_early(kind))


async def never_early(kind: str) -> None:
    """Arm ``kind`` for 20 deadlines off the millisecond grid, one after another; each fires after its own."""
    loop = asyncio.get_running_loop()
    fired: list[int] = []
    done = loop.create_future()
    deadlines: list[int] = []

    def wake() -> None:
        fired.append(time.monotonic_ns())
        if len(fired) == len(deadlines):
            done.set_result(None)
        else:
            timer.arm(deadlines[len(fired)])

    timer = make_wake_timer(loop, wake, kind)
    assert timer.kind == kind
    try:
        start_ns = time.monotonic_ns()
        # Deadlines off the millisecond grid, the case the loop timer must round up.
        deadlines += [start_ns + i * 1_300 * US + 370 * US for i in range(1, 21)]
        timer.arm(deadlines[0])
        await done
    finally:
        timer.close()
    assert all(at >= deadline for at, deadline in zip(fired, deadlines, strict=True))


async def test_rearming_replaces_the_deadline_and_disarm_cancels() -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    woke = asyncio.Event()

    def wake() -> None:
        fired.append("wake")
        woke.set()

    for kind in ("timerfd", "loop"):
        fired.clear()
        woke.clear()
        timer = make_wake_timer(loop, wake, kind)
        try:
            timer.arm(time.monotonic_ns() + 60_000_000_000)  # a minute away
            timer.disarm()
            timer.arm(time.monotonic_ns() + 1_000 * US)  # replaced by a near deadline
            await woke.wait()
            assert fired == ["wake"]
        finally:
            timer.close()


async def test_auto_is_a_timerfd_on_linux_and_unknown_kinds_are_refused() -> None:
    loop = asyncio.get_running_loop()
    timer = make_wake_timer(loop, lambda: None)
    try:
        assert isinstance(timer, TimerFd if sys.platform.startswith("linux") else LoopTimer)
    finally:
        timer.close()
    assert WAKE_TIMERS == ("auto", "timerfd", "loop")
    with pytest.raises(ValueError):
        make_wake_timer(loop, lambda: None, "spin")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux only")
async def test_a_timerfd_fires_once_a_deadline_whether_or_not_its_callback_arms_it_again() -> None:
    # A callback that arms again leaves the expiration unread (arming clears it); one that does not
    # has it read, so the timer does not wake the loop again for the same deadline.
    loop = asyncio.get_running_loop()
    fired: list[int] = []
    done = loop.create_future()

    def wake() -> None:
        fired.append(time.monotonic_ns())
        if len(fired) < 3:
            timer.arm(time.monotonic_ns() + 500 * US)
        elif not done.done():
            done.set_result(None)

    timer = TimerFd(loop, wake)
    try:
        timer.arm(time.monotonic_ns() + 500 * US)
        await done
        # Not armed again after the third: the loop keeps running callbacks, and none comes.
        for _ in range(50):
            await asyncio.sleep(0.001)
    finally:
        timer.close()
    assert len(fired) == 3
