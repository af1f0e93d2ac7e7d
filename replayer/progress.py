"""Live progress of a replay on stderr: a rich bar on a terminal, plain lines otherwise.

The runner calls ``update`` with a ``Progress`` snapshot a few times a second. This module must
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

__all__ = ["ProgressDisplay"]

_PLAIN_INTERVAL_S: Final = 5.0


def _line(s: Snapshot) -> str:
    return (
        f"{s.elapsed_s:7.1f}s  sent {s.done:>9,}  rate {s.rate_per_s:8.0f}/s  errors {s.errors:>7,}  "
        f"in flight {s.in_flight:>5}  held back {s.held_back:>7,}  p99 {s.p99_ms:8.1f} ms"
    )


class ProgressDisplay:
    """A context manager whose ``update`` shows a snapshot; ``total_s`` sizes the bar when known."""

    def __init__(
        self,
        *,
        enabled: bool = True,
        total_s: float | None = None,
        stream: IO[str] | None = None,
        plain_interval_s: float = _PLAIN_INTERVAL_S,
    ) -> None:
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._total_s = total_s
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
            self._task = self._bar.add_task("replay", total=self._total_s, line="starting")
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
            line = (
                f"{snapshot.done:,} sent  {snapshot.rate_per_s:,.0f}/s  {snapshot.errors:,} errors  "
                f"p99 {snapshot.p99_ms:,.1f} ms"
            )
            self._bar.update(self._task, completed=snapshot.elapsed_s, line=line)
            return
        now = time.monotonic()
        if self._last_plain is None or now - self._last_plain >= self._plain_interval_s:
            self._last_plain = now
            self._printed = snapshot
            print(_line(snapshot), file=self._stream, flush=True)
