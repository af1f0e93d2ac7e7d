"""Guessing an input file's format (HAR, mitmproxy flows, GoReplay) from its first bytes.

It reads at most ``SNIFF_BYTES`` from the start of the file (of its content, for gzip) and never
parses further: a wrong guess is corrected by ``--from``, and the importer reports malformed input.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Final

from shadowtap.recorder.errors import InputFormatError
from shadowtap.recorder.formats._common import open_input

__all__ = ["SNIFF_BYTES", "detect_format", "sniff"]

SNIFF_BYTES: Final = 4096
_GOR_HEADER: Final = re.compile(rb"[123] [0-9A-Za-z_.:-]{1,128} \d+( -?\d+)?\r?\n")
_TNETSTRING: Final = re.compile(rb"\d{1,12}:")
_UTF8_BOM: Final = b"\xef\xbb\xbf"
_ZIP_MAGIC: Final = b"PK\x03\x04"


def sniff(head: bytes) -> str | None:
    """``"har"``, ``"gor"``, ``"mitm"`` for the first bytes of a file, or ``None`` when unsure."""
    text = head.removeprefix(_UTF8_BOM).lstrip(b" \t\r\n")
    if text.startswith(b"{"):
        return "har"
    if _GOR_HEADER.match(head):
        return "gor"
    if _TNETSTRING.match(head):
        return "mitm"
    return None


def detect_format(path: str | Path) -> str:
    """The format of the file at ``path``; ``InputFormatError`` when it cannot be told."""
    if Path(path).is_dir():
        raise InputFormatError("is a directory (a tape?), not a HAR, flow or .gor file", path=str(path))
    stream = open_input(path)
    try:
        head = stream.read(SNIFF_BYTES)
    except zlib.error as exc:
        raise InputFormatError(f"corrupt gzip data: {exc}", path=str(path), offset=0) from exc
    finally:
        stream.close()
    found = sniff(head)
    if found is None and head.startswith(_ZIP_MAGIC):
        raise InputFormatError(
            "is a zip archive (Playwright writes its HAR so when the name ends in .zip): "
            "unzip it and import the .har inside, with its body files beside it",
            path=str(path),
            offset=0,
        )
    if found is None:
        what = "the file is empty" if not head else "its start matches none of HAR, mitmproxy flows or GoReplay"
        raise InputFormatError(f"cannot tell the format ({what}); name it with --from", path=str(path), offset=0)
    return found
