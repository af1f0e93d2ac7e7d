"""Progress of a long read (`diff`, `import`, `export`) on stderr: a rich bar, only on a terminal.

How far a pass is comes from sizes on disk: the parts (tape segments, input files) already read
count whole, and the current one counts the exchanges read from it by their approximate size,
capped below the part's size (compressed parts are smaller than what they hold). It is an estimate,
and says so only by being a bar. This module must never write to stdout, never print anything when
stderr is not a terminal or the input is small, and never cost the read more than a counter per
exchange while it is off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import IO, Final

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from shadowtap.recorder import Exchange, Response

#: Inputs smaller than this are read before a bar would be worth drawing.
MIN_TOTAL_BYTES: Final = 8 * 1024 * 1024
#: The bar is redrawn every this many exchanges: often enough to move, rarely enough to cost nothing.
_UPDATE_EVERY: Final = 512
#: What a frame, a header block and the msgpack framing add to an exchange's bodies, roughly.
_OVERHEAD_BYTES: Final = 64


def approx_size(exchange: Exchange) -> int:
    """About how many bytes ``exchange`` took where it was read from (bodies and headers)."""
    request = exchange.request
    size = _OVERHEAD_BYTES + len(request.target) + len(request.body)
    size += sum(len(name) + len(value) for name, value in request.headers)
    for outcome in (exchange.primary, *exchange.shadows.values()):
        if isinstance(outcome, Response):
            size += len(outcome.body) + sum(len(name) + len(value) for name, value in outcome.headers)
    return size


def file_sizes(paths: Iterable[str | os.PathLike[str]]) -> list[int]:
    """Each file's size; 0 for one that cannot be looked at (its reader says why, better)."""
    sizes = []
    for path in paths:
        try:
            sizes.append(os.stat(path).st_size)
        except OSError:
            sizes.append(0)
    return sizes


class ReadProgress:
    """A context manager whose ``wrap`` passes exchanges through and moves the bar as they go.

    ``part_sizes`` are the bytes of each part in reading order; ``wrap`` is told which part the
    reader is in (``part_of``), so the estimate snaps to the truth at every part's end.
    """

    def __init__(
        self,
        label: str,
        part_sizes: Sequence[int],
        *,
        enabled: bool = True,
        stream: IO[str] | None = None,
        min_total_bytes: int = MIN_TOTAL_BYTES,
    ) -> None:
        self._label = label
        self._sizes = list(part_sizes)
        self.total_bytes = sum(self._sizes)
        self._stream = stream or sys.stderr
        self.shown = enabled and self.total_bytes >= min_total_bytes and self._stream.isatty()
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._part = -1
        self._part_bytes = 0

    def __enter__(self) -> ReadProgress:
        if self.shown:
            self._bar = Progress(
                TextColumn(self._label),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self._stream),
                transient=True,
                # stdout stays the command's own, wherever it goes (rich would send it to the bar's stream).
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self._label, total=self.total_bytes)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None and self._task is not None:
            if exc_type is None:
                self._bar.update(self._task, completed=self.total_bytes)
            self._bar.stop()

    def done_bytes(self) -> int:
        """The estimate: parts before the current one whole, the current one by what was read of it."""
        if self._part < 0:
            return 0
        before = sum(self._sizes[: self._part])
        current = self._sizes[self._part] if self._part < len(self._sizes) else 0
        return before + min(self._part_bytes, current * 99 // 100)

    def wrap(self, exchanges: Iterable[Exchange], part_of: Callable[[], int]) -> Iterator[Exchange]:
        """``exchanges`` unchanged; ``part_of()`` says which part (0-based) the last one came from."""
        if not self.shown:
            yield from exchanges
            return
        bar, task = self._bar, self._task
        assert bar is not None and task is not None
        for count, exchange in enumerate(exchanges, 1):
            part = part_of()
            if part != self._part:
                self._part, self._part_bytes = part, 0
            self._part_bytes += approx_size(exchange)
            if count % _UPDATE_EVERY == 0:
                bar.update(task, completed=self.done_bytes())
            yield exchange
