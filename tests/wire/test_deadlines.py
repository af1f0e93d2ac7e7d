"""``shadowtap.wire.client.Deadlines``: many exchanges' deadlines on one timer of a real loop. Each
entry is told once, never before its own deadline; an entry dropped first is never told and not
kept; one told may add another."""

from __future__ import annotations

import asyncio
import time

import pytest

from shadowtap.wire.client import Deadlines

TIMEOUT_S = 0.08


class Entry:
    def __init__(self, name: str, log: list[tuple[str, float, float]]) -> None:
        self.name = name
        self.log = log
        self.added = time.monotonic()

    def timed_out(self, timeout_s: float) -> None:
        self.log.append((self.name, time.monotonic() - self.added, timeout_s))


async def wait_for(log: list[tuple[str, float, float]], count: int) -> None:
    for _ in range(200):
        if len(log) >= count:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(2 * TIMEOUT_S)  # nothing more comes


async def test_each_entry_is_told_once_in_order_never_early() -> None:
    deadlines = Deadlines(asyncio.get_running_loop(), TIMEOUT_S)
    log: list[tuple[str, float, float]] = []
    entries = [Entry(name, log) for name in "abc"]
    for entry in entries:
        deadlines.add(entry)
        await asyncio.sleep(0.02)
    await wait_for(log, 3)
    assert [name for name, _, _ in log] == ["a", "b", "c"]
    # Each waited its own whole timeout (the first one's timer woke before the others were due).
    assert all(TIMEOUT_S <= waited < TIMEOUT_S + 0.05 and told == TIMEOUT_S for _, waited, told in log)
    assert len(deadlines) == 0


async def test_entries_that_end_first_are_never_told_and_not_kept() -> None:
    deadlines = Deadlines(asyncio.get_running_loop(), TIMEOUT_S)
    log: list[tuple[str, float, float]] = []
    first, second, third = Entry("first", log), Entry("second", log), Entry("third", log)
    deadlines.add(first)
    await asyncio.sleep(0.03)
    deadlines.add(second)
    deadlines.add(third)
    deadlines.discard(first)  # the oldest ended: the timer still wakes at its deadline, for nothing
    deadlines.discard(third)
    deadlines.discard(third)  # twice, or after its deadline: nothing happens
    assert len(deadlines) == 1
    await wait_for(log, 1)
    assert [name for name, _, _ in log] == ["second"] and log[0][1] >= TIMEOUT_S
    deadlines.discard(second)
    # Many that end at once leave nothing behind.
    for index in range(10_000):
        entry = Entry(str(index), log)
        deadlines.add(entry)
        deadlines.discard(entry)
    assert len(deadlines) == 0
    await asyncio.sleep(2 * TIMEOUT_S)
    assert len(log) == 1


async def test_an_entry_told_may_add_another_and_close_forgets_them_all() -> None:
    deadlines = Deadlines(asyncio.get_running_loop(), TIMEOUT_S)
    log: list[tuple[str, float, float]] = []

    class Again(Entry):
        def timed_out(self, timeout_s: float) -> None:
            super().timed_out(timeout_s)
            deadlines.add(Entry("again", self.log))

    deadlines.add(Again("first", log))
    await wait_for(log, 2)
    assert [name for name, _, _ in log] == ["first", "again"]
    deadlines.add(Entry("forgotten", log))
    deadlines.close()
    await asyncio.sleep(2 * TIMEOUT_S)
    assert len(log) == 2 and len(deadlines) == 0


async def test_an_entry_that_raises_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    deadlines = Deadlines(asyncio.get_running_loop(), TIMEOUT_S)
    log: list[tuple[str, float, float]] = []

    class Broken(Entry):
        def timed_out(self, timeout_s: float) -> None:
            super().timed_out(timeout_s)
            raise RuntimeError("a bug in a callback")

    deadlines.add(Broken("broken", log))
    deadlines.add(Entry("same deadline", log))
    await asyncio.sleep(0.02)
    deadlines.add(Entry("later", log))
    await wait_for(log, 3)
    assert [name for name, _, _ in log] == ["broken", "same deadline", "later"]
    assert "deadline callback failed" in caplog.text and "a bug in a callback" in caplog.text
