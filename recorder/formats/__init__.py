"""Interop with other tools' capture formats: HAR 1.2, mitmproxy flow files and GoReplay ``.gor``.

Importers stream Exchanges out of a file and fill an ``ImportReport`` (what was imported, what was
skipped and why, a torn tail); exporters stream Exchanges into a file and return an ``ExportReport``.
This package must never load a whole input, and never import another shadowtap package.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.formats._common import FORMAT_NAMES, ExportReport, Importer, ImportReport, TornTail
from shadowtap.recorder.formats.detect import detect_format, sniff
from shadowtap.recorder.formats.gor import GorReader, write_gor
from shadowtap.recorder.formats.har import HarReader, write_har
from shadowtap.recorder.formats.mitm import (
    MitmReader,
    exchange_from_flow,
    flow_from_exchange,
    require_mitmproxy,
    write_mitm,
)
from shadowtap.recorder.model import Exchange

__all__ = [
    "FORMAT_NAMES",
    "ExportReport",
    "GorReader",
    "HarReader",
    "ImportReport",
    "Importer",
    "MitmReader",
    "TornTail",
    "detect_format",
    "exchange_from_flow",
    "export_exchanges",
    "flow_from_exchange",
    "open_importer",
    "sniff",
    "write_gor",
    "write_har",
    "write_mitm",
]


def open_importer(path: str | Path, fmt: str | None = None) -> Importer:
    """An importer for ``path`` in format ``fmt`` (guessed from the content when ``None``)."""
    chosen = detect_format(path) if fmt is None else fmt
    if chosen == "har":
        return HarReader(path)
    if chosen == "gor":
        return GorReader(path)
    if chosen == "mitm":
        require_mitmproxy()  # before any tape is created
        return MitmReader(path)
    raise ConfigError(f"unknown format {chosen!r}; use one of {', '.join(FORMAT_NAMES)}", field="from")


def export_exchanges(exchanges: Iterable[Exchange], path: str | Path, fmt: str, *, version: str = "") -> ExportReport:
    """Write ``exchanges`` to ``path`` in format ``fmt`` (``har``, ``mitm`` or ``gor``)."""
    if fmt == "har":
        return write_har(exchanges, path, creator_version=version)
    if fmt == "gor":
        return write_gor(exchanges, path)
    if fmt == "mitm":
        return write_mitm(exchanges, path)
    raise ConfigError(f"unknown format {fmt!r}; use one of {', '.join(FORMAT_NAMES)}", field="to")
