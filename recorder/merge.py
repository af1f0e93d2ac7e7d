"""Merging tapes (from many sidecars) into one, ordered by start time, streaming.

A k-way heap merge over one reader per input: memory holds one exchange per input, never a whole
tape. Inputs are each assumed to be in time order (as a recorder writes them); the merge is stable,
so exchanges with equal start times keep the order of the inputs as given. Inputs and the output may
be ``s3://bucket/prefix`` URLs (the output is then written to a local spool and each closed segment
uploaded: ``shadowtap.recorder.writer.tape_target``). It must never load a whole tape and never write
into one of its inputs.
"""

from __future__ import annotations

import heapq
import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.objectstore import ObjectUrl, is_object_url
from shadowtap.recorder.reader import TapeFilter, TapeReader, TapeReadReport
from shadowtap.recorder.writer import SyncTapeWriter, TapeOptions, tape_target

__all__ = ["MergeResult", "merge_tapes"]


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What a merge wrote, and what its readers met (``reports``: one per input, in order)."""

    exchanges: int
    inputs: int
    torn_tails: int
    skipped_ranges: int
    reports: tuple[TapeReadReport, ...] = field(default=(), compare=False)


def merge_tapes(
    out_directory: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    options: TapeOptions | None = None,
    *,
    filter: TapeFilter | None = None,
    salvage: bool = False,
    spool: str | os.PathLike[str] | None = None,
) -> MergeResult:
    """Write every exchange of ``inputs`` into the tape ``out_directory`` (a directory, or an
    ``s3://`` URL spooled in ``spool``) in start-time order."""
    if not inputs:
        raise ConfigError("at least one input tape is needed", field="inputs")
    directory, options = tape_target(out_directory, options, spool)
    out = directory.resolve()
    if is_object_url(out_directory):
        target = ObjectUrl.parse(str(out_directory))
        for path in inputs:
            if is_object_url(path):
                source = ObjectUrl.parse(str(path))
                same_bucket = source.bucket == target.bucket
                if same_bucket and (not source.prefix or f"{target.prefix}/".startswith(f"{source.prefix}/")):
                    raise ConfigError("the output tape is inside an input tape's prefix", field=str(path))
    readers = [TapeReader(path, filter=filter, salvage=salvage) for path in inputs]
    for reader in readers:
        for segment in reader.segments:
            if isinstance(segment, Path) and segment.resolve().parent == out:
                raise ConfigError("the output tape is also an input", field=str(segment))
    count = 0
    with SyncTapeWriter(out, options) as writer:
        for exchange in heapq.merge(*readers, key=operator.attrgetter("started_at_ns")):
            writer.write(exchange)
            count += 1
    return MergeResult(
        exchanges=count,
        inputs=len(readers),
        torn_tails=sum(len(r.report.torn_tails) for r in readers),
        skipped_ranges=sum(len(r.report.skipped_ranges) for r in readers),
        reports=tuple(r.report for r in readers),
    )
