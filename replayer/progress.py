"""Live progress of a replay on stderr: a rich bar on a terminal, plain lines otherwise.

The runner calls ``update`` with a ``Progress`` snapshot a few times a second. When the plan's size
is known (``total_requests``) the bar counts requests sent of it and shows an ETA (``eta_s``);
otherwise it fills with the schedule's time (``total_s``). This module must
never write to stdout (the summary and ``--json -`` own it), never slow the replay (it only
formats a snapshot), and never print more than one plain line every ``plain_interval_s``.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import IO, Final

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from shadowtap.replayer.runner import Progress as Snapshot

__all__ = ["ProgressDisplay", "bar_text", "eta_s"]

_PLAIN_INTERVAL_S: Final = 5.0


def _line(s: Snapshot) -> str:
    return (
        f"{s.elapsed_s:7.1f}s  sent {s.done:>9,}  rate {s.rate_per_s:8.0f}/s  errors {s.errors:>7,}  "
        f"in flight {s.in_flight:>5}  held back {s.held_back:>7,}  p99 {s.p99_ms:8.1f} ms"
    )


def eta_s(snapshot: Snapshot, total_requests: int, schedule_s: float | None) -> float | None:
    """Seconds until the last of ``total_requests`` is sent, or None while there is no telling.

    A paced replay cannot end before its schedule does (``schedule_s``), nor sooner than the
    requests left at the rate achieved so far; the later of the two is the estimate.
    """
    left = total_requests - snapshot.done
    if left <= 0:
        return 0.0
    by_schedule = None if schedule_s is None else max(schedule_s - snapshot.elapsed_s, 0.0)
    by_rate = left / snapshot.rate_per_s if snapshot.rate_per_s > 0 else None
    if by_schedule is None or by_rate is None:
        return by_rate if by_schedule is None else (by_schedule or None)
    return max(by_schedule, by_rate)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def bar_text(snapshot: Snapshot, total_requests: int | None = None, schedule_s: float | None = None) -> str:
    """The words beside the bar: sent (of the plan, with an ETA, when its size is known), rate, errors, p99."""
    if total_requests is None:
        sent = f"{snapshot.done:,} sent"
    else:
        sent = f"{snapshot.done:,}/{total_requests:,} sent  ETA {_clock(eta_s(snapshot, total_requests, schedule_s))}"
    return f"{sent}  {snapshot.rate_per_s:,.0f}/s  {snapshot.errors:,} errors  p99 {snapshot.p99_ms:,.1f} ms"


class ProgressDisplay:
    """A context manager whose ``update`` shows a snapshot.

    ``total_requests`` (the plan's size) sizes the bar in requests when known, else ``total_s`` (the
    schedule's length) sizes it in seconds; ``total_s`` also bounds the ETA from below.
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        total_s: float | None = None,
        total_requests: int | None = None,
        stream: IO[str] | None = None,
        plain_interval_s: float = _PLAIN_INTERVAL_S,
    ) -> None:
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._total_s = total_s
        self._total_requests = total_requests
        self._plain_interval_s = plain_interval_s
        self._rich = enabled and self._stream.isatty()
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._last_plain: float | None = None
        self._printed: Snapshot | None = None
        self.last: Snapshot | None = None

    def __enter__(self) -> ProgressDisplay:
        if self._rich:
            self._bar = Progress(
                TextColumn("replay"),
                BarColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[line]}"),
                console=Console(file=self._stream),
                transient=False,
            )
            self._bar.start()
            total = self._total_s if self._total_requests is None else self._total_requests
            self._task = self._bar.add_task("replay", total=total, line="starting")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._enabled and self.last is not None and self.last is not self._printed:
            print(_line(self.last), file=self._stream, flush=True)

    def update(self, snapshot: Snapshot) -> None:
        self.last = snapshot
        if not self._enabled:
            return
        if self._bar is not None and self._task is not None:
            line = bar_text(snapshot, self._total_requests, self._total_s)
            completed = snapshot.elapsed_s if self._total_requests is None else snapshot.done
            self._bar.update(self._task, completed=completed, line=line)
            return
        now = time.monotonic()
        if self._last_plain is None or now - self._last_plain >= self._plain_interval_s:
            self._last_plain = now
            self._printed = snapshot
            print(_line(snapshot), file=self._stream, flush=True)
