"""What every importer and exporter shares: the import/export reports and small value conversions.

It must never do I/O or know any one format: the format modules own their parsing and writing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, Protocol

from recorder.model import Exchange, Headers

__all__ = [
    "FORMAT_NAMES",
    "ExportReport",
    "Importer",
    "ImportReport",
    "TornTail",
    "http_version_from_wire",
    "replace_header",
    "text_to_wire",
]

#: The formats ``--from`` / ``--to`` accept.
FORMAT_NAMES: Final = ("har", "mitm", "gor")


@dataclass(frozen=True, slots=True)
class TornTail:
    """An incomplete last record, as a writer killed mid-record leaves it: reported, never fatal."""

    offset: int
    length_bytes: int
    reason: str


@dataclass(slots=True)
class ImportReport:
    """What one importer did with one input file. Filled in while the importer is iterated."""

    path: str
    format: str
    imported: int = 0
    records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    torn_tail: TornTail | None = None

    def skip(self, reason: str, count: int = 1) -> None:
        """Count an input record that did not become an exchange, by reason."""
        self.skipped[reason] = self.skipped.get(reason, 0) + count

    def note(self, fact: str, count: int = 1) -> None:
        """Count an imported exchange that lost or changed something on the way in, by fact."""
        self.notes[fact] = self.notes.get(fact, 0) + count

    def summary(self) -> str:
        """One human line: ``path (fmt): N exchanges from M records; skipped ...; torn tail ...``."""
        parts = [f"{self.path} ({self.format}): {self.imported} exchanges imported from {self.records} records"]
        if self.skipped:
            parts.append("skipped " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())))
        if self.notes:
            parts.append("notes: " + ", ".join(f"{n} {fact}" for fact, n in sorted(self.notes.items())))
        if self.torn_tail is not None:
            tail = self.torn_tail
            parts.append(f"torn tail at byte {tail.offset} ({tail.length_bytes} bytes): {tail.reason}")
        return "; ".join(parts)


@dataclass(slots=True)
class ExportReport:
    """What one exporter wrote, and what the target format could not hold."""

    path: str
    format: str
    exported: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count

    def summary(self) -> str:
        line = f"{self.path} ({self.format}): {self.exported} exchanges exported"
        if self.skipped:
            line += "; not representable: " + ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items()))
        return line


class Importer(Protocol):
    """An importer streams Exchanges from one file and fills ``report`` while it is iterated."""

    report: ImportReport

    def __iter__(self) -> Iterator[Exchange]: ...


def http_version_from_wire(text: str) -> str:
    """``HTTP/1.1`` -> ``1.1``, ``HTTP/2.0`` / ``h2`` / ``http/2.0`` -> ``2``: the model's spelling."""
    lowered = text.strip().lower()
    if lowered in ("h2", "http/2", "http/2.0", "2", "2.0"):
        return "2"
    if lowered in ("h3", "http/3", "http/3.0", "3", "3.0"):
        return "3"
    if lowered.startswith("http/"):
        return lowered[5:] or "1.1"
    return lowered or "1.1"


def replace_header(headers: Headers, name: bytes, value: bytes) -> Headers:
    """Set every ``name`` header (case-insensitive) to ``value``, keeping position and spelling."""
    wanted = name.lower()
    return tuple((k, value if k.lower() == wanted else v) for k, v in headers)


def text_to_wire(text: str) -> bytes:
    """``text`` as UTF-8 bytes that never fails: escaped bytes come back, other lone surrogates pass."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")
