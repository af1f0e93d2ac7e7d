"""Forwarding settings for the primary path.

``ForwardSettings`` is the one frozen description of how requests reach the primary (where, with
which timeouts, pool, capture limit, forwarded headers and TLS checks); ``shadowtap.proxy.rewrite`` turns a
client request head into the head sent upstream by these settings. This module stays interpreted
(``shadowtap.proxy.native``): ``shadowtap.proxy.config`` and the config docs read its field types and comments.
"""

from __future__ import annotations

import ipaddress
import math
import re
import resource
import ssl
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from shadowtap.recorder.errors import ConfigError

__all__ = [
    "ForwardSettings",
    "PrimaryTarget",
    "check_host",
    "default_max_client_connections",
    "parse_primary",
    "upstream_ssl_context",
]

#: ``h2c`` is HTTP/2 over cleartext by prior knowledge (the primary only: ``shadowtap.proxy.h2server``).
_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "h2c": 80}


@dataclass(frozen=True, slots=True)
class PrimaryTarget:
    """The primary URL taken apart once: where to connect and what to put before each target."""

    scheme: str
    host: str
    port: int
    #: Path prefix (no trailing slash) put before every request target; ``b""`` for none.
    path_prefix: bytes
    #: ``host[:port]`` as a Host header value, for ``preserve_host=False``.
    authority: bytes

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


#: A host name as DNS carries it (LDH labels; ``_`` too, as container names have it), or an IPv4
#: address; a trailing dot is allowed. IPv6 literals are checked by ``ipaddress``.
_HOST_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?\Z")


def check_host(host: str, *, field: str, shown: str) -> None:
    """Raise ``ConfigError`` naming ``field`` unless ``host`` is an IP address or a host name.

    ``host`` is bare (no brackets); ``shown`` is the whole value, for the message.
    """
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"not an IPv6 address: {host!r} in {shown!r}", field=field) from None
        return
    try:
        ascii_host = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigError(f"not a valid host name: {host!r} in {shown!r}", field=field) from None
    if not _HOST_NAME_RE.match(ascii_host):
        raise ConfigError(f"not a valid host name: {host!r} in {shown!r}", field=field)


def parse_primary(url: str, field: str = "primary") -> PrimaryTarget:
    """Split an ``http(s)://host[:port][/prefix]`` URL or raise ``ConfigError`` naming ``field``.

    The one URL check for the primary and every shadow: ``shadowtap.proxy.config`` calls it too, so a URL it
    accepts is one the data path can use.
    """
    # urlsplit drops tabs and newlines without a word and keeps spaces; either would put a URL on the
    # wire that is not the one configured, or split a request line.
    for index, char in enumerate(url):
        if char <= " " or char == "\x7f":
            raise ConfigError(
                f"URL must not contain spaces or control characters ({char!r} at {index}): {url!r}", field=field
            )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"not a valid URL: {url!r} ({exc})", field=field) from exc
    if parts.scheme not in _DEFAULT_PORTS:
        raise ConfigError(f"URL must start with http://, https:// or h2c://, got {url!r}", field=field)
    if not parts.hostname:
        raise ConfigError(f"URL has no host: {url!r}", field=field)
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ConfigError(f"URL must not have a query or fragment: {url!r}", field=field)
    if "@" in parts.netloc:
        raise ConfigError(f"URL must not carry credentials: {url!r}", field=field)
    bracketed = parts.netloc.startswith("[")
    if bracketed != (":" in parts.hostname):
        raise ConfigError(f"only an IPv6 address goes in brackets, and it must: {url!r}", field=field)
    check_host(parts.hostname, field=field, shown=url)
    if port == 0:
        raise ConfigError(f"port must be within 1..65535: {url!r}", field=field)
    if not parts.path.isascii():
        raise ConfigError(f"URL path must be ASCII (percent-encode it): {url!r}", field=field)
    default_port = _DEFAULT_PORTS[parts.scheme]
    host = parts.hostname
    host_for_header = f"[{host}]" if ":" in host else host
    authority = host_for_header if port in (None, default_port) else f"{host_for_header}:{port}"
    return PrimaryTarget(
        scheme=parts.scheme,
        host=host,
        port=default_port if port is None else port,
        path_prefix=parts.path.rstrip("/").encode("ascii"),
        authority=authority.encode("idna" if not authority.isascii() else "ascii"),
    )


def _positive(name: str, value: float) -> None:
    if not value > 0 or not math.isfinite(value):
        raise ConfigError(f"must be a finite number > 0, got {value!r}", field=name)


def default_max_client_connections() -> int:
    """Half the file descriptors this process may open, less a reserve: each client connection may
    hold a primary connection too, and the admin API, the tape and the shadows need some."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(16, (soft - 256) // 2)


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    """How the data path reaches the primary. Every field is validated; errors name the field."""

    #: The primary's base URL: ``http://127.0.0.1:9000`` or ``https://api.internal/prefix``.
    primary: str
    #: TCP (and TLS) connect to the primary; on expiry the client gets 504.
    connect_timeout_s: float = 5.0
    #: From the request fully sent to the response head; on expiry the client gets 504.
    first_byte_timeout_s: float = 60.0
    #: Whole exchange, from forwarding start to the last body byte; long downloads need room.
    total_timeout_s: float = 300.0
    #: Idle keep-alive connections kept per process; more are closed on release.
    pool_max_idle: int = 256
    #: Request and response bodies kept for stages (mirror, tape) up to this size; beyond it the
    #: request body is streamed without a copy and the response copy is cut (``truncated_from``).
    capture_limit_bytes: int = 1024 * 1024
    #: Request line plus header fields; larger heads get 431 and the connection is closed.
    max_header_bytes: int = 64 * 1024
    #: Requests a client may pipeline ahead of the one being answered before we stop reading.
    max_pipelined: int = 16
    #: Request body bytes held while waiting for a primary connection before we stop reading.
    max_buffered_body_bytes: int = 256 * 1024
    #: An idle client connection is closed after this long without a request.
    keepalive_timeout_s: float = 75.0
    #: The whole request head must arrive within this long of its first byte, or the client gets
    #: 408 and the connection closes (nginx ``client_header_timeout``, 60 s).
    client_header_timeout_s: float = 60.0
    #: A request body that stalls this long between two reads gets 408 and the connection closes
    #: (nginx ``client_body_timeout``, 60 s).
    client_body_timeout_s: float = 60.0
    #: A client that reads none of its response for this long is disconnected (nginx
    #: ``send_timeout``, 60 s).
    send_timeout_s: float = 60.0
    #: After the response head, the primary may be silent this long between two reads before the
    #: exchange fails as a timeout (nginx ``proxy_read_timeout``, 60 s).
    primary_read_timeout_s: float = 60.0
    #: Open client connections per process; beyond it an idle or head-sending connection is closed to
    #: make room, or the new one is (both counted). 0: half the file-descriptor limit, less a reserve.
    max_client_connections: int = 0
    #: Request and response copies held for stages across all exchanges in flight; beyond it new
    #: copies are cut (marked truncated) rather than the primary path slowed.
    capture_budget_bytes: int = 256 * 1024 * 1024
    #: When a response is sent before its request body has fully arrived, the rest of the body is
    #: read and discarded for up to this long before closing, so the client can read the answer
    #: (nginx ``lingering_time``, 30 s) ...
    lingering_time_s: float = 30.0
    #: ... while it keeps sending at least every this many seconds (nginx ``lingering_timeout``, 5 s)
    lingering_timeout_s: float = 5.0
    #: ... and up to this many bytes.
    lingering_max_bytes: int = 64 * 1024 * 1024
    #: ``host:port`` targets a ``CONNECT`` may name: it goes to the primary (which must accept
    #: CONNECT: a forward proxy, a TCP gateway), and a 2xx answer makes the connection a tunnel,
    #: never mirrored. Any other CONNECT gets 405 (none is allowed by default).
    connect_targets: tuple[str, ...] = ()
    #: Keep the client's Host header (the usual sidecar case); False sends the primary's authority.
    preserve_host: bool = True
    #: ``Via: 1.1 <via>`` added to requests and responses when set (e.g. ``"shadowtap"``).
    via: str | None = None
    #: Append the client address to ``X-Forwarded-For``.
    x_forwarded_for: bool = True
    #: Add ``X-Forwarded-Proto`` (client-side scheme) when the client did not send one.
    x_forwarded_proto: bool = True
    #: Add ``X-Forwarded-Host`` (client's Host) when the client did not send one.
    x_forwarded_host: bool = True
    #: Verify an https primary's certificate and host name.
    tls_verify: bool = True
    #: PEM bundle to verify an https primary against instead of the system store.
    ca_file: str | None = None
    #: Speak HTTP/2 to an https primary (ALPN ``h2``), for HTTP/2 clients' streams and HTTP/1.1
    #: clients' requests alike; an ``h2c://`` primary always gets HTTP/2.
    primary_http2: bool = False
    #: HTTP/2 connections to the primary per process; streams are multiplexed over them.
    primary_http2_connections: int = 4

    def __post_init__(self) -> None:
        parse_primary(self.primary)
        for name in (
            "connect_timeout_s",
            "first_byte_timeout_s",
            "total_timeout_s",
            "keepalive_timeout_s",
            "client_header_timeout_s",
            "client_body_timeout_s",
            "send_timeout_s",
            "primary_read_timeout_s",
            "lingering_time_s",
            "lingering_timeout_s",
        ):
            _positive(name, getattr(self, name))
        for name in (
            "pool_max_idle",
            "capture_limit_bytes",
            "max_pipelined",
            "max_buffered_body_bytes",
            "max_client_connections",
            "capture_budget_bytes",
            "lingering_max_bytes",
            "primary_http2_connections",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"must be an integer >= 0, got {value!r}", field=name)
        if self.max_pipelined < 1:
            raise ConfigError(f"must be >= 1, got {self.max_pipelined!r}", field="max_pipelined")
        if not isinstance(self.max_header_bytes, int) or self.max_header_bytes < 1024:
            raise ConfigError(f"must be an integer >= 1024, got {self.max_header_bytes!r}", field="max_header_bytes")
        if self.via is not None and (not self.via or not self.via.isascii() or any(c in self.via for c in "\r\n")):
            raise ConfigError(f"must be a non-empty ASCII token, got {self.via!r}", field="via")
        for index, target in enumerate(self.connect_targets):
            host, sep, port = target.rpartition(":")
            if not isinstance(target, str) or not sep or not host or not port.isdigit() or not target.isascii():
                raise ConfigError(f"must be host:port, got {target!r}", field=f"connect_targets[{index}]")
        if self.ca_file is not None and not self.ca_file:
            raise ConfigError("must be a file path or unset", field="ca_file")

    @property
    def target(self) -> PrimaryTarget:
        return parse_primary(self.primary)


def upstream_ssl_context(settings: ForwardSettings) -> ssl.SSLContext | None:
    """The client TLS context for an https primary (verification on unless turned off), else None."""
    if not settings.target.tls:
        return None
    try:
        context = ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA file: {exc}", field="ca_file") from exc
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
