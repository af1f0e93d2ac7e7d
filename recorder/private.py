"""Files that may hold recorded traffic, created owner-only (0600) from their first byte.

Tapes, exports (HAR, flows, .gor), diff reports and stores, replay reports and results all carry
request and response headers and bodies; redaction covers credentials, not the business data. Each
is created here with ``os.open`` and mode 0600, so no other user can open it at any moment, whatever
the umask. A file that already exists with a wider mode is narrowed through its descriptor before
anything is written to it. This module must never change the process umask (threads share it) and
never ``chmod`` a path after writing to it (the window this closes).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import IO, Any, Final, Literal

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "create_private",
    "narrow_existing",
    "open_private",
    "warn_if_shared_directory",
]

log = logging.getLogger(__name__)

PRIVATE_FILE_MODE: Final = 0o600
PRIVATE_DIR_MODE: Final = 0o700
_GROUP_OTHER: Final = 0o077


def _narrow(fd: int, path: str | os.PathLike[str]) -> None:
    """Make the regular file open as ``fd`` owner-only if it is not (a pipe or tty is left alone)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & _GROUP_OTHER:
        return
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except PermissionError:
        # Somebody else's file we may write to: we cannot narrow it, and refusing would lose the output.
        log.warning("%s is readable by others (mode %o) and is not ours to change", path, stat.S_IMODE(st.st_mode))


def open_private(
    path: str | os.PathLike[str],
    mode: Literal["w", "wb"] = "w",
    *,
    exclusive: bool = False,
    encoding: str | None = None,
    errors: str | None = None,
    buffering: int = -1,
) -> IO[Any]:
    """``open(path, mode)`` for writing: created 0600, or truncated and narrowed to 0600 if it exists.

    ``exclusive``: the file must not exist (a temporary file), as ``open(path, "x")``.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    try:
        _narrow(fd, path)
        if mode == "wb":
            return os.fdopen(fd, "wb", buffering=buffering)
        return os.fdopen(fd, "w", buffering=buffering, encoding=encoding or "utf-8", errors=errors)
    except BaseException:
        os.close(fd)
        raise


def create_private(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty and 0600 if it is missing, or narrow it if it exists (its contents kept).

    For files another library opens by name afterwards (SQLite): they find it private already.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        _narrow(fd, path)
    finally:
        os.close(fd)


def narrow_existing(path: str | os.PathLike[str]) -> None:
    """Narrow ``path`` to 0600 if it exists (never creating it, never following a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    except OSError:
        return  # a symlink, or not ours to open: nothing we can safely narrow
    try:
        _narrow(fd, path)
    finally:
        os.close(fd)


def warn_if_shared_directory(directory: str | os.PathLike[str], what: str = "tape directory") -> bool:
    """Log a warning (and return True) when ``directory`` lets others in: its files stay 0600, but
    their names, sizes and times show, and with write access others can delete or add segments."""
    try:
        mode = stat.S_IMODE(Path(directory).stat().st_mode)
    except OSError:
        return False
    if not mode & _GROUP_OTHER:
        return False
    log.warning(
        "%s %s is open to other users (mode %o): the files in it are 0600, but their names and sizes "
        "show and, with write access, others can remove them; chmod 700 it",
        what,
        directory,
        mode,
    )
    return True
