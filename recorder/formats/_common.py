"""What every importer and exporter shares: the import/export reports and small value conversions.

It must never do I/O or know any one format: the format modules own their parsing and writing.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from shadowtap.recorder.errors import InputFormatError, ShadowtapError, TapeWriteError
from shadowtap.recorder.model import Exchange, FailureKind, Headers, StreamMessage, header_value
from shadowtap.wire.grpc import GrpcFramingError, split_messages

__all__ = [
    "FAILURE_KINDS",
    "FORMAT_NAMES",
    "ExportReport",
    "Importer",
    "ImportReport",
    "TornTail",
    "GZIP_MAGIC",
    "GunzipStream",
    "grpc_messages",
    "http_version_from_wire",
    "open_input",
    "replace_header",
    "text_to_wire",
    "writing",
]

#: Every ``FailureKind`` value: an exported failure carries its kind, and an import trusts only these.
FAILURE_KINDS: Final = frozenset(v for k, v in vars(FailureKind).items() if k.isupper() and isinstance(v, str))
#: The formats ``--from`` / ``--to`` accept.
FORMAT_NAMES: Final = ("har", "mitm", "gor")
#: GoReplay writes gzip when its output file name ends in ``.gz``; such inputs are read through it.
GZIP_MAGIC: Final = b"\x1f\x8b"
_GZIP_READ_BYTES: Final = 256 * 1024
#: At most this much comes out of one decompression step (see GunzipStream).
_GZIP_PIECE_BYTES: Final = 4 * 1024 * 1024


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
    #: Imported exchanges whose primary outcome is a failure (no response), by ``FailureKind``.
    failures: dict[str, int] = field(default_factory=dict)
    torn_tail: TornTail | None = None

    def skip(self, reason: str, count: int = 1) -> None:
        """Count an input record that did not become an exchange, by reason."""
        self.skipped[reason] = self.skipped.get(reason, 0) + count

    def note(self, fact: str, count: int = 1) -> None:
        """Count an imported exchange that lost or changed something on the way in, by fact."""
        self.notes[fact] = self.notes.get(fact, 0) + count

    def fail(self, kind: str) -> None:
        """Count an imported exchange whose primary outcome is a failure of ``kind``."""
        self.failures[kind] = self.failures.get(kind, 0) + 1

    def summary(self) -> str:
        """One human line: ``path (fmt): N exchanges from M records; failures ...; skipped ...; torn tail ...``."""
        parts = [f"{self.path} ({self.format}): {self.imported} exchanges imported from {self.records} records"]
        if self.failures:
            parts.append("failures: " + ", ".join(f"{n} {kind}" for kind, n in sorted(self.failures.items())))
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


def grpc_messages(headers: Headers, body: bytes, truncated: bool) -> tuple[StreamMessage, ...]:
    """The message list of a gRPC body (``content-type: application/grpc...``) an import holds whole:
    each message's flags and length, times unknown. Empty for anything else, a cut body, or a body
    that is not gRPC framing (it is kept as it was; the differ reports it)."""
    if truncated or not body:
        return ()
    content_type = (header_value(headers, b"content-type") or b"").split(b";", 1)[0].strip().lower()
    if content_type != b"application/grpc" and not content_type.startswith(b"application/grpc+"):
        return ()
    try:
        return tuple(StreamMessage(int(m.compressed), len(m.data)) for m in split_messages(body))
    except GrpcFramingError:
        return ()


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


class GunzipStream:
    """A gzip file decompressed as it is read. Unlike ``gzip.GzipFile``, a stream cut before its
    trailer (a killed writer) gives back everything that was decompressed and sets ``cut``.

    Memory is bounded: compressed input is read ``_GZIP_READ_BYTES`` at a time and each
    decompression step yields at most ``_GZIP_PIECE_BYTES``, so a small bomb cannot expand at once.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._inflate = zlib.decompressobj(wbits=31)
        self._input = b""  # compressed bytes not yet given to the decompressor
        self._buffer = b""  # decompressed bytes not yet returned
        self._raw_eof = False
        self.cut = False

    def _fill(self) -> bool:
        """Decompress one more piece into the buffer; False at the end of the data."""
        while True:
            if self._inflate.eof:
                # One member ended: another may follow (``cat a.gz b.gz``), or zero padding, or nothing.
                rest = self._inflate.unused_data or self._read_raw()
                if not rest.strip(b"\x00"):
                    return False
                self._inflate = zlib.decompressobj(wbits=31)
                self._input = rest
            if not self._input:
                self._input = self._read_raw()
                if not self._input:
                    self.cut = True
                    return False
            piece = self._inflate.decompress(self._input, _GZIP_PIECE_BYTES)
            self._input = self._inflate.unconsumed_tail
            if piece:
                self._buffer += piece
                return True

    def _read_raw(self) -> bytes:
        if self._raw_eof:
            return b""
        data = self._raw.read(_GZIP_READ_BYTES)
        self._raw_eof = not data
        return data

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` decompressed bytes (all when negative); ``b""`` at the end. May raise zlib.error."""
        while (size < 0 or len(self._buffer) < size) and self._fill():
            pass
        if size < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def close(self) -> None:
        self._raw.close()


def open_input(path: str | Path) -> BinaryIO | GunzipStream:
    """``path`` opened for streaming reads; a gzip file comes back as a ``GunzipStream``."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    except OSError as exc:
        raise InputFormatError(f"cannot read: {exc.strerror or exc}", path=str(path)) from exc
    try:
        magic = raw.peek(2)[:2]
    except OSError as exc:
        raw.close()
        raise InputFormatError(f"cannot read: {exc.strerror or exc}", path=str(path), offset=0) from exc
    return GunzipStream(raw) if magic == GZIP_MAGIC else raw


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Disk errors while an exporter writes ``path`` become one ``TapeWriteError`` naming the file."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, ShadowtapError):
            raise
        raise TapeWriteError(f"cannot write: {exc.strerror or exc}", path=str(path)) from exc
