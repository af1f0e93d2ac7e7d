"""Writes a finished report file. The one place renderers touch the disk.

It must never leave a half-written report where the caller asked for one (a CI step reading it
would see garbage), and never let an ``OSError`` escape as a traceback: it becomes a ``ConfigError``
naming the path, because the path came from the user.
"""

from __future__ import annotations

import os
from pathlib import Path

from recorder.errors import ConfigError

__all__ = ["write_atomically"]


def write_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` via a sibling temporary file and a rename."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        # A lone surrogate (from a target decoded with surrogateescape) must not abort the report.
        temporary.write_text(text, encoding="utf-8", errors="replace")
        os.replace(temporary, target)
    except OSError as exc:
        raise ConfigError(f"cannot write report: {exc.strerror or exc}", path=str(target)) from exc
    finally:
        temporary.unlink(missing_ok=True)
