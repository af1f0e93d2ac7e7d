"""What a reader reports of one tape segment (``SegmentReport``, its torn tail and skipped ranges) and
what a segment is: kept apart from ``shadowtap.recorder.reader`` so that its compiled frame loop
(``shadowtap.recorder._segment``) and the reader share them without importing each other.
``shadowtap.recorder.reader`` exports them; import them from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shadowtap.recorder._frames import FLAG_ZSTD
from shadowtap.recorder.objectstore import ObjectSegment

__all__ = ["Segment", "SegmentReport", "SkippedRange", "TornTail"]

#: A segment: a file, or an object in object storage.
Segment = Path | ObjectSegment


@dataclass(frozen=True, slots=True)
class TornTail:
    """An incomplete last frame (a crash mid-write): ``length`` bytes from ``offset`` were ignored."""

    offset: int
    length: int
    reason: str


@dataclass(frozen=True, slots=True)
class SkippedRange:
    """Bytes a salvaging reader skipped over: ``length`` bytes from ``offset``."""

    offset: int
    length: int
    reason: str


@dataclass(slots=True)
class SegmentReport:
    path: str
    version: int = 0
    flags: int = 0
    frames: int = 0
    exchanges: int = 0
    bytes: int = 0
    torn_tail: TornTail | None = None
    skipped: list[SkippedRange] = field(default_factory=list)

    @property
    def compression(self) -> str:
        """What the writer declared in the header: ``"zstd"`` or ``"none"``."""
        return "zstd" if self.flags & FLAG_ZSTD else "none"
