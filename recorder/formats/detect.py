"""Guessing an input file's format (HAR, mitmproxy flows, GoReplay) from its first bytes.

It reads at most ``SNIFF_BYTES`` from the start of the file and never parses further: a wrong guess
is corrected by ``--from``, and the importer itself reports malformed input.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from recorder.errors import InputFormatError

__all__ = ["SNIFF_BYTES", "detect_format", "sniff"]

SNIFF_BYTES: Final = 4096
_GOR_HEADER: Final = re.compile(rb"[123] [0-9A-Za-z_.:-]{1,128} \d+( -?\d+)?\r?\n")
_TNETSTRING: Final = re.compile(rb"\d{1,12}:")
_UTF8_BOM: Final = b"\xef\xbb\xbf"


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
    try:
        with open(path, "rb") as stream:
            head = stream.read(SNIFF_BYTES)
    except IsADirectoryError as exc:
        raise InputFormatError("is a directory (a tape?), not a HAR, flow or .gor file", path=str(path)) from exc
    except OSError as exc:
        raise InputFormatError(f"cannot read: {exc.strerror or exc}", path=str(path)) from exc
    found = sniff(head)
    if found is None:
        what = "the file is empty" if not head else "its start matches none of HAR, mitmproxy flows or GoReplay"
        raise InputFormatError(f"cannot tell the format ({what}); name it with --from", path=str(path), offset=0)
    return found
