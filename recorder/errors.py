"""The shadowtap exception tree. Every error a user can cause or meet is one of these.

It must never grow a second root: callers catch ``ShadowtapError`` and know they have a message fit
for one clear line. Each error carries where it happened (file, byte offset, field, URL) so the line
names it. Errors from dependencies are translated at the boundary with ``raise ... from exc``.

    ShadowtapError
     ├── ConfigError(ValueError)          a setting, flag or config key has a bad value
     ├── InputFormatError(ValueError)     an input file (HAR, .gor, flow, config) is malformed
     │    └── TapeFormatError             a tape frame or header is corrupt
     │         └── TapeVersionError       a tape written by a newer (or unknown) format version
     ├── TapeWriteError(OSError)          the disk refused a tape write (ENOSPC, EIO, ...)
     └── UpstreamError(ConnectionError)   a primary, shadow or replay target failed
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InputFormatError",
    "ShadowtapError",
    "TapeFormatError",
    "TapeVersionError",
    "TapeWriteError",
    "UpstreamError",
]


class ShadowtapError(Exception):
    """Root of every shadowtap error.

    ``str(err)`` is the one line the CLI prints: the location first (``path:offset``, ``field``,
    ``url``), then the message.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        offset: int | None = None,
        field: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.offset = offset
        self.field = field
        self.url = url

    def __str__(self) -> str:
        where: list[str] = []
        if self.path is not None:
            where.append(self.path if self.offset is None else f"{self.path} at byte {self.offset}")
        elif self.offset is not None:
            where.append(f"at byte {self.offset}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        if self.url is not None:
            where.append(self.url)
        return f"{', '.join(where)}: {self.message}" if where else self.message


class ConfigError(ShadowtapError, ValueError):
    """A setting has a bad value; ``field`` names the key (``mirror.sample_percent``)."""


class InputFormatError(ShadowtapError, ValueError):
    """An input file is malformed; ``path`` and ``offset`` (or ``field``) say where."""


class TapeFormatError(InputFormatError):
    """A tape segment is corrupt at ``path`` / ``offset``."""


class TapeVersionError(TapeFormatError):
    """A tape segment was written by a format version this shadowtap cannot read."""


class TapeWriteError(ShadowtapError, OSError):
    """The disk refused a tape write. Counted by the writer, never raised into a request path."""


class UpstreamError(ShadowtapError, ConnectionError):
    """A primary, shadow or replay target could not be reached or answered garbage."""
