"""HTTP/1.1 framing for the proxy hot path: hop-by-hop filtering and head / chunk serialisation.

Pure functions over bytes in the shape llhttp (httptools) hands them over: header names and values
as received, in order. They must never do I/O, decode a body, or reorder, re-case or merge headers:
what the client or the primary sent is what the other side gets, minus the hop-by-hop fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from recorder.model import Header

__all__ = [
    "CHUNKED_END",
    "HOP_BY_HOP",
    "ResponseFraming",
    "chunk",
    "connection_tokens",
    "end_to_end",
    "error_response",
    "request_head",
    "response_head",
    "scan_response",
]

#: RFC 9110 §7.6.1 hop-by-hop fields (plus the legacy Proxy-Connection and RFC 7230's Trailer): they
#: describe one connection, so a proxy consumes them and never forwards them.
HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
#: For an Upgrade pass-through the two fields that ask for the switch must reach the primary.
_HOP_BY_HOP_UPGRADE: Final = HOP_BY_HOP - {b"connection", b"upgrade"}

#: The Connection values nearly every response carries: they list no field, so need no parsing.
_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close"})

CHUNKED_END: Final = b"0\r\n\r\n"
_CRLF: Final = b"\r\n"
_SEP: Final = b": "


def connection_tokens(headers: Sequence[Header]) -> frozenset[bytes]:
    """The lower-cased field names listed in every ``Connection`` header (also hop-by-hop)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(_tokens(value))
    return frozenset(tokens)


def _tokens(value: bytes) -> list[bytes]:
    return [t for t in (part.strip().lower() for part in value.split(b",")) if t]


def end_to_end(headers: Sequence[Header], *, upgrade: bool = False) -> list[Header]:
    """``headers`` without the hop-by-hop fields and the names ``Connection`` lists, order kept.

    With ``upgrade`` the ``Connection`` and ``Upgrade`` fields are kept (Upgrade pass-through);
    names listed in ``Connection`` other than ``upgrade`` itself are still removed.
    """
    drop = _HOP_BY_HOP_UPGRADE if upgrade else HOP_BY_HOP
    kept: list[Header] = []
    listed: list[bytes] | None = None
    # One pass in the usual case; a second only when Connection names fields beyond the standard.
    for header in headers:
        lower = header[0].lower()
        if lower == b"connection":
            extra = [t for t in _tokens(header[1]) if t not in HOP_BY_HOP and t != b"close"]
            if extra:
                listed = extra if listed is None else listed + extra
        if lower not in drop:
            kept.append(header)
    if listed:
        return [h for h in kept if h[0].lower() not in listed]
    return kept


class ResponseFraming:
    """How the primary framed a response body (``Transfer-Encoding`` is re-framed, never forwarded)."""

    __slots__ = ("content_length", "transfer_encoding")

    def __init__(self, transfer_encoding: bytes | None, content_length: bytes | None) -> None:
        #: The Transfer-Encoding value(s), comma-joined, or ``None``; ``chunked`` when chunked.
        self.transfer_encoding = transfer_encoding
        self.content_length = content_length

    @property
    def until_close(self) -> bool:
        """No length and no chunking: the body ends when the primary closes the connection."""
        return self.transfer_encoding is None and self.content_length is None


def scan_response(headers: Sequence[Header]) -> tuple[list[Header], ResponseFraming]:
    """The end-to-end headers of a response and its body framing, in one pass over the fields."""
    kept: list[Header] = []
    transfer_encoding: bytes | None = None
    content_length: bytes | None = None
    listed: list[bytes] | None = None
    for header in headers:
        lower = header[0].lower()
        if lower in HOP_BY_HOP:
            if lower == b"transfer-encoding":
                value = header[1]
                transfer_encoding = value if transfer_encoding is None else transfer_encoding + b", " + value
            elif lower == b"connection" and header[1].lower() not in _PLAIN_CONNECTION:
                extra = [t for t in _tokens(header[1]) if t not in HOP_BY_HOP and t != b"close"]
                if extra:
                    listed = extra if listed is None else listed + extra
            continue
        if lower == b"content-length":
            content_length = header[1]
        kept.append(header)
    if listed:
        kept = [h for h in kept if h[0].lower() not in listed]
    return kept, ResponseFraming(transfer_encoding, content_length)


def _fields(parts: list[bytes], headers: Iterable[Header]) -> None:
    for name, value in headers:
        parts += (name, _SEP, value, _CRLF)


def request_head(method: bytes, target: bytes, headers: Iterable[Header], extra: Iterable[Header] = ()) -> bytes:
    """An HTTP/1.1 request head, fields in the given order, built with one join."""
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    _fields(parts, headers)
    _fields(parts, extra)
    parts.append(_CRLF)
    return b"".join(parts)


def response_head(status: int, reason: bytes, headers: Iterable[Header], extra: Iterable[Header] = ()) -> bytes:
    """An HTTP/1.1 status line and fields, in the given order, built with one join."""
    parts = [b"HTTP/1.1 %d " % status, reason, _CRLF]
    _fields(parts, headers)
    _fields(parts, extra)
    parts.append(_CRLF)
    return b"".join(parts)


def chunk(data: bytes) -> list[bytes]:
    """One chunk of a chunked body as buffers for ``transport.writelines`` (the data is not copied)."""
    return [b"%x\r\n" % len(data), data, _CRLF]


def error_response(status: int, reason: str, message: str, *, close: bool) -> bytes:
    """A short plain-text response that shadowtap itself sends (502, 504, 400, 431 ...)."""
    body = (message.rstrip("\n") + "\n").encode("utf-8", "replace")
    fields: list[Header] = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", b"%d" % len(body)),
        (b"X-Shadowtap-Error", b"1"),
    ]
    if close:
        fields.append((b"Connection", b"close"))
    return response_head(status, reason.encode("ascii"), fields) + body
