"""What a replay transport is given and gives back: the client's settings and a send's result.

Shared by the HTTP/1 transports (``shadowtap.replayer.transport``) and the HTTP/2 one
(``shadowtap.replayer.h2transport``), which import it and not each other. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.model import Outcome

__all__ = ["ClientSettings", "SendResult"]


# Not frozen, though never changed: compiled (mypyc), a frozen dataclass is built field by field in
# Python, and one is built for every request (see ``plan.PlannedRequest``).
@dataclass(slots=True)
class SendResult:
    """What came back: the outcome, when its head arrived and when its last byte did (monotonic ns;
    None on failure, or where the transport does not know: the runner then takes the time it hears)."""

    outcome: Outcome
    first_byte_ns: int | None = None
    done_ns: int | None = None


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """The HTTP client's limits, chosen deliberately (aiohttp's silent default is 100 connections).

    ``max_connections`` bounds sockets to the target (a replay is one host); ``timeout_s`` bounds
    each request end to end, ``connect_timeout_s`` the connection set-up; ``keepalive_s`` how long an
    idle connection is kept for reuse.

    HTTP/2: ``http_version`` ``auto`` sends what was recorded over HTTP/2 (``"2"``) over HTTP/2 and
    the rest over HTTP/1.1 (an ``h2c://`` target: all over HTTP/2); ``"2"`` sends everything over
    HTTP/2, ``"1.1"`` everything over HTTP/1.1. ``h2_connections`` HTTP/2 connections carry all
    streams (each up to ``h2_streams_per_connection``, or fewer if the target says so). A recorded
    client or bidirectional gRPC stream sends its messages at their recorded offsets divided by
    ``message_speed`` (0: all at once), each gap cut to ``max_message_gap_s``.
    """

    max_connections: int = 256
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    keepalive_s: float = 30.0
    #: A response body larger than this is a ``body-too-large`` failure (bounds memory per request).
    max_body_bytes: int = 64 * 1024 * 1024
    #: ``auto``: the raw HTTP/1.1 client for http://, aiohttp for https://; or force one.
    client: str = "auto"
    http_version: str = "auto"
    h2_connections: int = 4
    h2_streams_per_connection: int = 100
    message_speed: float = 1.0
    max_message_gap_s: float = 10.0

    def __reduce__(self) -> tuple[type[ClientSettings], tuple[Any, ...]]:
        # Pickled by its constructor (a --workers process gets it): compiled, a frozen dataclass
        # cannot be restored field by field.
        return ClientSettings, tuple(getattr(self, f.name) for f in fields(self))

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ConfigError(f"must be >= 1, got {self.max_connections}", field="connections")
        if self.max_body_bytes < 1:
            raise ConfigError(f"must be >= 1, got {self.max_body_bytes}", field="max-body-bytes")
        if self.client not in ("auto", "raw", "aiohttp"):
            raise ConfigError(f"must be auto, raw or aiohttp, not {self.client!r}", field="client")
        if self.http_version not in ("auto", "1.1", "2"):
            raise ConfigError(f"must be auto, 1.1 or 2, not {self.http_version!r}", field="http-version")
        if self.h2_connections < 1:
            raise ConfigError(f"must be >= 1, got {self.h2_connections}", field="h2-connections")
        if self.h2_streams_per_connection < 1:
            raise ConfigError(f"must be >= 1, got {self.h2_streams_per_connection}", field="h2-streams")
        if self.message_speed < 0:
            raise ConfigError(f"must be >= 0, got {self.message_speed}", field="speed")
        if self.max_message_gap_s < 0:
            raise ConfigError(f"must be >= 0, got {self.max_message_gap_s}", field="max-gap")
        for name in ("timeout_s", "connect_timeout_s", "keepalive_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"must be > 0, got {getattr(self, name)}", field=name.replace("_s", ""))
