"""Forwarding settings and the request-side header policy for the primary path.

``ForwardSettings`` is the one frozen description of how requests reach the primary (where, with
which timeouts, pool, capture limit, forwarded headers and TLS checks); ``RequestRewriter`` turns a
client request head into the head sent upstream. This module must never do I/O and never change a
header other than the hop-by-hop ones and those the settings name (Host, Via, X-Forwarded-*).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from proxy import http1
from recorder.errors import ConfigError
from recorder.model import Header

__all__ = ["ForwardSettings", "PrimaryTarget", "RequestRewriter", "parse_primary", "upstream_ssl_context"]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


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


def parse_primary(url: str, field: str = "primary") -> PrimaryTarget:
    """Split an ``http(s)://host[:port][/prefix]`` URL or raise ``ConfigError`` naming ``field``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"not a valid URL: {url!r} ({exc})", field=field) from exc
    if parts.scheme not in _DEFAULT_PORTS:
        raise ConfigError(f"URL must start with http:// or https://, got {url!r}", field=field)
    if not parts.hostname:
        raise ConfigError(f"URL has no host: {url!r}", field=field)
    if parts.query or parts.fragment:
        raise ConfigError(f"URL must not have a query or fragment: {url!r}", field=field)
    if parts.username or parts.password:
        raise ConfigError(f"URL must not carry credentials: {url!r}", field=field)
    default_port = _DEFAULT_PORTS[parts.scheme]
    host = parts.hostname
    host_for_header = f"[{host}]" if ":" in host else host
    authority = host_for_header if port in (None, default_port) else f"{host_for_header}:{port}"
    return PrimaryTarget(
        scheme=parts.scheme,
        host=host,
        port=default_port if port is None else port,
        path_prefix=parts.path.rstrip("/").encode("ascii", "strict") if parts.path.isascii() else b"",
        authority=authority.encode("idna" if not authority.isascii() else "ascii"),
    )


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"must be > 0, got {value!r}", field=name)


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

    def __post_init__(self) -> None:
        parse_primary(self.primary)
        for name in ("connect_timeout_s", "first_byte_timeout_s", "total_timeout_s", "keepalive_timeout_s"):
            _positive(name, getattr(self, name))
        for name in ("pool_max_idle", "capture_limit_bytes", "max_pipelined", "max_buffered_body_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"must be an integer >= 0, got {value!r}", field=name)
        if self.max_pipelined < 1:
            raise ConfigError(f"must be >= 1, got {self.max_pipelined!r}", field="max_pipelined")
        if not isinstance(self.max_header_bytes, int) or self.max_header_bytes < 1024:
            raise ConfigError(f"must be an integer >= 1024, got {self.max_header_bytes!r}", field="max_header_bytes")
        if self.via is not None and (not self.via or not self.via.isascii() or any(c in self.via for c in "\r\n")):
            raise ConfigError(f"must be a non-empty ASCII token, got {self.via!r}", field="via")
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


class RequestRewriter:
    """Turns a client request head into the head sent to the primary (one join per request)."""

    __slots__ = ("_authority", "_forwarded_for", "_forwarded_host", "_forwarded_proto", "_host", "_prefix", "_via")

    def __init__(self, settings: ForwardSettings) -> None:
        target = settings.target
        self._prefix = target.path_prefix
        self._authority = target.authority
        self._host = None if settings.preserve_host else target.authority
        self._via = None if settings.via is None else b"1.1 " + settings.via.encode("ascii")
        self._forwarded_for = settings.x_forwarded_for
        self._forwarded_proto = settings.x_forwarded_proto
        self._forwarded_host = settings.x_forwarded_host

    @property
    def via(self) -> bytes | None:
        return self._via

    def head(
        self,
        method: bytes,
        target: bytes,
        headers: list[Header],
        client_ip: bytes,
        scheme: bytes,
        chunked: bool,
        upgrade: bool = False,
        exclude: frozenset[bytes] | None = None,
    ) -> bytes:
        """The upstream request head for one client request; ``chunked`` re-frames the body.

        ``exclude`` is for the rare second pass, when a ``Connection`` field listed more fields to
        drop: the first pass finds them, the second leaves them out.
        """
        kinds = _REQUEST_FIELD_KINDS_UPGRADE if upgrade else _REQUEST_FIELD_KINDS
        parts = [method, b" ", self._prefix + target if self._prefix else target, b" HTTP/1.1\r\n"]
        seen_proto = seen_fwd_host = False
        client_host: bytes | None = None
        xff_at = -1
        listed: list[bytes] | None = None
        # One pass over the fields builds the head; the rare Connection-listed names (found only
        # once the Connection field is seen) cost a second pass that skips them.
        for name, value in headers:
            lower = name.lower()
            if exclude is not None and lower in exclude:
                continue
            kind = kinds.get(lower)
            if kind is not None:
                if kind == _DROP:
                    continue
                if kind == _CONNECTION:
                    if exclude is None:
                        listed = _listed(value, listed, upgrade)
                    if not upgrade:
                        continue
                elif kind == _HOST:
                    client_host = value
                    if self._host is not None:
                        value = self._host
                elif kind == _FORWARDED_FOR:
                    # The client address goes after the last hop listed (the last field if repeated).
                    xff_at = len(parts) + 2
                elif kind == _FORWARDED_PROTO:
                    seen_proto = True
                elif kind == _FORWARDED_HOST:
                    seen_fwd_host = True
            parts += (name, b": ", value, b"\r\n")
        if listed:
            return self.head(method, target, headers, client_ip, scheme, chunked, upgrade, frozenset(listed))
        if client_host is None:
            # HTTP/1.0 clients may omit Host; HTTP/1.1 upstreams require one.
            parts += (b"Host: ", self._authority, b"\r\n")
        if self._forwarded_for:
            if xff_at >= 0:
                parts[xff_at] += b", " + client_ip
            else:
                parts += (b"X-Forwarded-For: ", client_ip, b"\r\n")
        if self._forwarded_proto and not seen_proto:
            parts += (b"X-Forwarded-Proto: ", scheme, b"\r\n")
        if self._forwarded_host and not seen_fwd_host and client_host is not None:
            parts += (b"X-Forwarded-Host: ", client_host, b"\r\n")
        if self._via is not None:
            parts += (b"Via: ", self._via, b"\r\n")
        parts.append(b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\n")
        return b"".join(parts)


_DROP: Final = 1
_CONNECTION: Final = 2
_HOST: Final = 3
_FORWARDED_FOR: Final = 4
_FORWARDED_PROTO: Final = 5
_FORWARDED_HOST: Final = 6
#: What the rewriter must do with a request field, by lower-cased name; absent means copy it as is.
_REQUEST_FIELD_KINDS: Final = {
    **{name: _DROP for name in http1.HOP_BY_HOP},
    b"connection": _CONNECTION,
    b"host": _HOST,
    b"x-forwarded-for": _FORWARDED_FOR,
    b"x-forwarded-proto": _FORWARDED_PROTO,
    b"x-forwarded-host": _FORWARDED_HOST,
}
#: For an Upgrade pass-through the fields that ask for the switch reach the primary (Connection is
#: still read for the names it lists).
_REQUEST_FIELD_KINDS_UPGRADE: Final = {name: kind for name, kind in _REQUEST_FIELD_KINDS.items() if name != b"upgrade"}


def _listed(value: bytes, listed: list[bytes] | None, upgrade: bool) -> list[bytes] | None:
    """Add the field names a Connection header lists beyond the standard hop-by-hop ones."""
    extra = [
        t
        for t in (part.strip().lower() for part in value.split(b","))
        if t and t not in http1.HOP_BY_HOP and t != b"close" and not (upgrade and t == b"upgrade")
    ]
    if not extra:
        return listed
    return extra if listed is None else listed + extra
