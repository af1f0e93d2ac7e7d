"""Where a replay's exchanges come from: tapes on disk, merged by time, re-readable for --loop.

Plain synchronous iteration over ``recorder.TapeReader`` (the runner opens it on a worker thread
and pulls the rest on the loop in short slices, the Locust worker under gevent). It must never
load a whole tape: readers stream.
"""

from __future__ import annotations

from collections.abc import Iterator

from shadowtap.recorder import TapeReader
from shadowtap.recorder.model import Exchange
from shadowtap.replayer.plan import merge_by_time

__all__ = ["TapeSource", "tape_source"]

#: One tape file read while planning on the event loop (see TapeSource).
_READ_CHUNK_BYTES = 256 * 1024


class TapeSource:
    """A fresh exchange stream over ``tapes`` merged by time, each time it is called.

    The segment lists are resolved at construction, so a missing tape is an error before anything
    is sent; ``problems`` counts what the readers reported (torn tails, ranges skipped by salvage).
    """

    def __init__(self, tapes: tuple[str, ...], salvage: bool = False) -> None:
        # The runner reads the plan on its event loop in short slices; a 256 KiB file read (tens of
        # microseconds from the page cache) keeps each read well inside a slice, where the reader's
        # default 4 MiB would hold the loop for about a millisecond.
        self.readers = [TapeReader(tape, salvage=salvage, chunk_bytes=_READ_CHUNK_BYTES) for tape in tapes]

    def __call__(self) -> Iterator[Exchange]:
        if len(self.readers) == 1:
            return iter(self.readers[0])
        return merge_by_time(self.readers)

    def problems(self) -> dict[str, int]:
        return {
            "torn_tails": sum(len(r.report.torn_tails) for r in self.readers),
            "skipped_ranges": sum(len(r.report.skipped_ranges) for r in self.readers),
        }


def tape_source(tapes: tuple[str, ...], salvage: bool = False) -> TapeSource:
    """The exchange source for ``tapes`` (see ``TapeSource``)."""
    return TapeSource(tapes, salvage)
