"""Writes a finished report file. The one place renderers touch the disk.

It must never leave a half-written report where the caller asked for one (a CI step reading it
would see garbage), never let an ``OSError`` escape as a traceback: it becomes a ``ConfigError``
naming the path, because the path came from the user; and never let another user read it (reports
quote recorded bodies): the file is created 0600.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.private import open_private

__all__ = ["write_atomically"]


def write_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` via a sibling temporary file and a rename."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # A lone surrogate (from a target decoded with surrogateescape) must not abort the report.
        # Created 0600 and renamed into place, so the report is never readable by others.
        with open_private(temporary, "w", exclusive=True, encoding="utf-8", errors="replace") as out:
            out.write(text)
        os.replace(temporary, target)
    except OSError as exc:
        raise ConfigError(f"cannot write report: {exc.strerror or exc}", path=str(target)) from exc
    finally:
        temporary.unlink(missing_ok=True)
