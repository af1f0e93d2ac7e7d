"""Batched, never-early release of due work on an absolute monotonic schedule.

``DueQueue`` is the pure part (no clock of its own, no asyncio): items wait in a heap by due time
(``time.monotonic_ns()`` values); ``pop_due(now_ns)`` hands out every item due by ``now_ns``, in due
order (ties in the order they were pushed), and ``wake_ns()`` says when to look next: at the earliest
due time, but never sooner than a window after the last look that released something. However many
items are due, the loop wakes at most once per window to release them; an item goes at most a
window after it is due, never before. The window adapts to the rate of releases, between
``min_window_ns`` and ``window_ns``: long enough for about ``BATCH`` items a wake-up (a wake-up is
the dear part at low rates: 20 to 70 us of CPU on a shared 2-core VM, cold caches included), no
longer, because at high rates the loop is awake anyway and a shorter window is a shorter lag.

``WakeTimer`` is the asyncio edge: one timer, armed at an absolute monotonic deadline, that calls
back on the loop. On Linux it is a timerfd (armed with an absolute CLOCK_MONOTONIC time, nanosecond
precision, watched by the loop like a socket); elsewhere, or when asked, the loop's own timer, whose
millisecond granularity (uvloop's and libuv's) is rounded up so it never fires before the deadline.
This module must never busy-wait: a wake-up that comes early (a spurious one) re-arms for the
remainder, it does not spin on it.

Why not a timer per request: each was a handle, a future and a task step on the loop, and the
loop's millisecond timers forced a spin over the last fraction of a millisecond to be on time
(measured: a whole core at 2,000 requests/s).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import heapq
import itertools
import os
import sys
import time
from collections.abc import Callable
from typing import Final, Generic, Protocol, TypeVar

__all__ = ["BATCH", "WAKE_TIMERS", "DueQueue", "LoopTimer", "TimerFd", "WakeTimer", "make_wake_timer"]

T = TypeVar("T")

#: The kinds of wake timer: ``auto`` (a timerfd on Linux, else the loop's), ``timerfd``, ``loop``.
WAKE_TIMERS: Final = ("auto", "timerfd", "loop")

#: Items a wake-up aims to release, which sets the window between its bounds (module docstring).
BATCH: Final = 4
# Weight of the newest look in the release rate estimate: it follows a change of rate within a few
# dozen wake-ups, and one odd interval (a descheduled process) moves it little.
_RATE_WEIGHT: Final = 0.125

_NS_PER_MS: Final = 1_000_000
_NS_PER_S: Final = 1_000_000_000


class DueQueue(Generic[T]):
    """Items by due time, released in batches at most once per window (module docstring)."""

    __slots__ = ("_counter", "_heap", "_last_look_ns", "_max_window_ns", "_min_window_ns", "_rate_per_ns", "_window_ns")

    def __init__(self, window_ns: int, min_window_ns: int | None = None) -> None:
        min_window_ns = window_ns if min_window_ns is None else min_window_ns
        if not 0 <= min_window_ns <= window_ns:
            raise ValueError(f"need 0 <= min_window_ns <= window_ns, got {min_window_ns} and {window_ns}")
        self._max_window_ns = window_ns
        self._min_window_ns = min_window_ns
        # Until a rate is known the window is the longest: a replay starting slow costs no wake-ups.
        self._window_ns = window_ns
        self._rate_per_ns: float | None = None
        self._heap: list[tuple[int, int, T]] = []
        # Ties on the due time go in push order; the counter also keeps items from being compared.
        self._counter = itertools.count()
        self._last_look_ns: int | None = None

    @property
    def window_ns(self) -> int:
        """The current window: at least this long between two looks that release something."""
        return self._window_ns

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due_ns: int, item: T) -> bool:
        """Add ``item``; True when it is now the earliest (the timer may need arming sooner)."""
        seq = next(self._counter)
        heapq.heappush(self._heap, (due_ns, seq, item))
        return self._heap[0][1] == seq

    def pop_due(self, now_ns: int) -> list[tuple[int, T]]:
        """Every ``(due_ns, item)`` due by ``now_ns``, earliest first. A look that releases something
        starts a window; an early one (nothing due) does not delay what is waiting."""
        heap = self._heap
        released: list[tuple[int, T]] = []
        while heap and heap[0][0] <= now_ns:
            due_ns, _, item = heapq.heappop(heap)
            released.append((due_ns, item))
        if released:
            last_ns = self._last_look_ns
            if last_ns is not None and now_ns > last_ns:
                self._adapt(len(released) / (now_ns - last_ns))
            self._last_look_ns = now_ns
        return released

    def _adapt(self, rate_per_ns: float) -> None:
        rate = self._rate_per_ns
        rate = rate_per_ns if rate is None else rate + (rate_per_ns - rate) * _RATE_WEIGHT
        self._rate_per_ns = rate
        self._window_ns = min(self._max_window_ns, max(self._min_window_ns, int(BATCH / rate)))

    def wake_ns(self) -> int | None:
        """When to look next (None: nothing waits): the earliest due time, at least a window after
        the last look that released something."""
        if not self._heap:
            return None
        due_ns = self._heap[0][0]
        if self._last_look_ns is None:
            return due_ns
        return max(due_ns, self._last_look_ns + self._window_ns)

    def drain(self) -> list[T]:
        """Remove and return every waiting item, earliest first (a stop)."""
        items = [entry[2] for entry in sorted(self._heap)]
        self._heap.clear()
        return items


class WakeTimer(Protocol):
    """One timer calling back on the loop at an absolute ``time.monotonic_ns()`` deadline, never
    before it. Arming again replaces the deadline."""

    kind: str

    def arm(self, deadline_ns: int) -> None: ...

    def disarm(self) -> None: ...

    def close(self) -> None: ...


class LoopTimer:
    """The loop's own timer, rounded up to whole milliseconds so it never fires early.

    uvloop (libuv) fires a timer of ``T`` ms once its cached millisecond clock, floored, reaches
    the floored start time plus ``T``; asyncio's selector loop waits at least ``T`` ms. Either way
    ``T = ceil(deadline_ms) - floor(now_ms)`` fires at or after the deadline, up to two milliseconds
    after it (the start lag this fallback costs).
    """

    kind = "loop"

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None

    def arm(self, deadline_ns: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        delay_ms = max(1, -(-deadline_ns // _NS_PER_MS) - time.monotonic_ns() // _NS_PER_MS)
        self._handle = self._loop.call_later(delay_ms / 1000, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._callback()

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        self.disarm()


#: ``struct itimerspec`` on Linux: two ``struct timespec`` (interval, then value), each two longs.
#: An array rather than a ``ctypes.Structure`` subclass, which a compiled module cannot define.
_ITIMERSPEC_LONGS: Final = 4
_VALUE_SEC: Final = 2
_VALUE_NSEC: Final = 3
# <sys/timerfd.h> and <time.h> on Linux.
_CLOCK_MONOTONIC: Final = 1
_TFD_NONBLOCK: Final = os.O_NONBLOCK
_TFD_CLOEXEC: Final = 0o2000000
_TFD_TIMER_ABSTIME: Final = 1


class TimerFd:
    """A Linux timerfd on CLOCK_MONOTONIC (the clock of ``time.monotonic_ns()``), armed with an
    absolute deadline and watched with ``loop.add_reader``: wakes within the kernel's timer slack
    (50 us by default) of the deadline, never before it. Raises ``OSError`` where there is none."""

    kind = "timerfd"

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        if not sys.platform.startswith("linux"):
            raise OSError("timerfd is Linux only")
        libc = ctypes.CDLL(None, use_errno=True)
        spec_type = ctypes.c_long * _ITIMERSPEC_LONGS
        self._settime = libc.timerfd_settime
        self._settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(spec_type), ctypes.c_void_p]
        self._settime.restype = ctypes.c_int
        fd = int(libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC))
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        self._fd = fd
        self._loop = loop
        self._callback = callback
        # Set when the callback arms or disarms the timer (which clears its expiration): then the
        # expiration need not be read.
        self._set_since_fire = False
        # One spec reused for every arming: a deadline costs two stores and one call.
        self._spec = spec_type()
        self._spec_ref = ctypes.byref(self._spec)
        loop.add_reader(fd, self._fire)

    def _set(self, seconds: int, nanoseconds: int) -> None:
        spec = self._spec
        spec[_VALUE_SEC] = seconds
        spec[_VALUE_NSEC] = nanoseconds
        if self._settime(self._fd, _TFD_TIMER_ABSTIME, self._spec_ref, None) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        self._set_since_fire = True

    def arm(self, deadline_ns: int) -> None:
        # An all-zero time disarms: a deadline at or before the clock's zero is simply due.
        seconds, nanoseconds = divmod(max(1, deadline_ns), _NS_PER_S)
        self._set(seconds, nanoseconds)

    def disarm(self) -> None:
        self._set(0, 0)

    def _fire(self) -> None:
        # timerfd_settime resets the expiration count (the fd stops being readable), so when the
        # callback arms again, as the runner's always does, a read would be a system call for
        # nothing. A wake-up that comes early (re-armed after the loop saw it readable) finds
        # nothing due and arms for the deadline again.
        self._set_since_fire = False
        self._callback()
        if not self._set_since_fire and self._fd >= 0:
            with contextlib.suppress(BlockingIOError):
                os.read(self._fd, 8)  # left readable, it would wake the loop again at once

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


def make_wake_timer(loop: asyncio.AbstractEventLoop, callback: Callable[[], None], kind: str = "auto") -> WakeTimer:
    """A wake timer of ``kind`` (``WAKE_TIMERS``); ``auto`` falls back to the loop's own timer
    where a timerfd cannot be made."""
    if kind not in WAKE_TIMERS:
        raise ValueError(f"wake timer must be one of {', '.join(WAKE_TIMERS)}, not {kind!r}")
    if kind == "loop":
        return LoopTimer(loop, callback)
    try:
        return TimerFd(loop, callback)
    except (OSError, AttributeError, NotImplementedError):
        if kind == "timerfd":
            raise
        return LoopTimer(loop, callback)
