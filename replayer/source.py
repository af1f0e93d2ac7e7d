"""Where a replay's exchanges come from: tapes on disk, merged by time, re-readable for --loop.

Plain synchronous iteration over ``recorder.TapeReader`` (the runner calls it on a worker thread,
the Locust worker under gevent). It must never load a whole tape: readers stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from recorder import TapeReader
from recorder.model import Exchange
from replayer.plan import merge_by_time

__all__ = ["tape_source"]


def tape_source(tapes: tuple[str, ...], salvage: bool = False) -> Callable[[], Iterable[Exchange]]:
    """A fresh exchange stream over ``tapes`` merged by time, each time it is called."""
    # Resolve the segment lists now so a missing tape is an error before anything is sent.
    readers = [TapeReader(tape, salvage=salvage) for tape in tapes]

    def source() -> Iterator[Exchange]:
        if len(readers) == 1:
            return iter(readers[0])
        return merge_by_time(readers)

    return source
