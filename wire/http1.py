"""HTTP/1.1 framing, sans-IO: the protocol's rules (hop-by-hop fields, method sets, body framing) and
head / chunk serialisation, in one place for the proxy, the mirror, the replayer and the importers.

Pure functions over bytes in the shape llhttp (httptools) hands them over: header names and values
as received, in order. They must never do I/O, decode a content-coding, or reorder, re-case or
merge headers: what one side sent is what the other side gets, minus the hop-by-hop fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, TypeAlias

__all__ = [
    "CHUNKED_END",
    "HOP_BY_HOP",
    "IDEMPOTENT_METHODS",
    "IDEMPOTENT_METHOD_BYTES",
    "REGENERATED",
    "SAFE_METHODS",
    "STATUS_LINES",
    "Header",
    "add_field",
    "add_fields",
    "add_value",
    "body_until_close",
    "chunk",
    "chunked_last",
    "connection_tokens",
    "dechunk",
    "end_head",
    "end_to_end",
    "field_line",
    "field_prefix",
    "request_head",
    "request_line",
    "response_fields",
    "response_head",
    "status_line",
]

#: One field as received: name and value bytes, case and order kept (``recorder.model.Header`` too).
Header: TypeAlias = tuple[bytes, bytes]

#: RFC 9110 section 9.2.1: the methods whose semantics are read-only. What a user of the set does with
#: them is its own policy (the proxy mirrors a narrower default; see ``shadowtap.proxy.rules``).
SAFE_METHODS: Final[frozenset[str]] = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: RFC 9110 section 9.2.2: the safe methods plus PUT and DELETE. Only these are ever sent twice (the
#: stale-connection retry, ``shadowtap.wire.client``).
IDEMPOTENT_METHODS: Final[frozenset[str]] = SAFE_METHODS | {"PUT", "DELETE"}
#: ``IDEMPOTENT_METHODS`` as the bytes llhttp hands over.
IDEMPOTENT_METHOD_BYTES: Final[frozenset[bytes]] = frozenset(m.encode("ascii") for m in IDEMPOTENT_METHODS)

#: RFC 9110 §7.6.1 hop-by-hop fields (plus the legacy Proxy-Connection and RFC 7230's Trailer): they
#: describe one connection, so a proxy consumes them and never forwards them.
HOP_BY_HOP: Final[frozenset[bytes]] = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
#: The fields a client sending a copy of a recorded or mirrored request sets for itself: the hop-by-hop
#: ones, the framing (Content-Length, recomputed), the routing (Host) and Expect (the body is sent at
#: once, so a 100 Continue would only be an extra response).
REGENERATED: Final[frozenset[bytes]] = HOP_BY_HOP | {b"content-length", b"host", b"expect"}
#: For an Upgrade pass-through the two fields that ask for the switch must reach the primary.
_HOP_BY_HOP_UPGRADE: Final = HOP_BY_HOP - {b"connection", b"upgrade"}

#: The Connection values nearly every response carries: they list no field, so need no parsing.
_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close"})

CHUNKED_END: Final = b"0\r\n\r\n"
_CRLF: Final = b"\r\n"
_SEP: Final = b": "
_HTTP11_END: Final = b" HTTP/1.1\r\n"


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


def response_fields(parts: list[bytes], headers: Sequence[Header]) -> tuple[bytes | None, bytes | None]:
    """Append a response's end-to-end fields to ``parts`` as ``name: value CRLF`` pieces, in order,
    and return its body framing: the Transfer-Encoding value(s), comma-joined, and the Content-Length
    (each ``None`` when absent). Transfer-Encoding is hop-by-hop: a relaying proxy re-frames the body.

    One pass over the fields in the usual case; a second only when ``Connection`` lists field names
    beyond the standard hop-by-hop ones (those fields are then left out too).
    """
    start = len(parts)
    transfer_encoding: bytes | None = None
    content_length: bytes | None = None
    listed: list[bytes] | None = None
    for name, value in headers:
        kind = _RESPONSE_FIELD_KINDS.get(name.lower())
        if kind is None:
            parts += (name, _SEP, value, _CRLF)
        elif kind == _CONTENT_LENGTH:
            content_length = value
            parts += (name, _SEP, value, _CRLF)
        elif kind == _TRANSFER_ENCODING:
            transfer_encoding = value if transfer_encoding is None else transfer_encoding + b", " + value
        elif kind == _CONNECTION and value.lower() not in _PLAIN_CONNECTION:
            extra = [t for t in _tokens(value) if t not in HOP_BY_HOP and t != b"close"]
            if extra:
                listed = extra if listed is None else listed + extra
    if listed:
        del parts[start:]
        add_fields(parts, [h for h in headers if h[0].lower() not in HOP_BY_HOP and h[0].lower() not in listed])
    return transfer_encoding, content_length


def body_until_close(headers: Sequence[Header]) -> bool:
    """Whether a response's body ends only when the connection closes: no length and no chunking."""
    return all(name.lower() not in (b"content-length", b"transfer-encoding") for name, _ in headers)


_CONTENT_LENGTH: Final = 1
_TRANSFER_ENCODING: Final = 2
_CONNECTION: Final = 3
_OTHER_HOP: Final = 4
#: What ``response_fields`` must do with a field, by lower-cased name; absent means copy it as is.
_RESPONSE_FIELD_KINDS: Final = {
    **{name: _OTHER_HOP for name in HOP_BY_HOP},
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"connection": _CONNECTION,
    b"content-length": _CONTENT_LENGTH,
}

#: ``HTTP/1.1 <code> `` for every status a response may carry, so relaying one formats nothing.
STATUS_LINES: Final = {code: b"HTTP/1.1 %d " % code for code in range(100, 1000)}


# A head is built as a list of byte pieces joined once: ``request_line`` or ``status_line`` starts
# it, ``add_field``, ``add_fields`` and ``add_value`` add to it (``field_line`` and ``field_prefix``
# make the constant pieces once), ``end_head`` closes and joins it. Every head the proxy, the
# replayer and the capture writers send is serialised by these functions, whatever policy chose its
# fields (``shadowtap.proxy.rewrite`` for the primary, ``shadowtap.proxy.mirror`` for a shadow).


def request_line(method: bytes, target: bytes, version: bytes = b"HTTP/1.1") -> list[bytes]:
    """The pieces of a request line: a new head for ``add_field`` and ``end_head``."""
    return [method, b" ", target, _HTTP11_END if version == b"HTTP/1.1" else b" " + version + _CRLF]


def status_line(status: int, reason: bytes) -> list[bytes]:
    """The pieces of an HTTP/1.1 status line: a new head for ``add_field`` and ``end_head``."""
    return [STATUS_LINES.get(status) or b"HTTP/1.1 %d " % status, reason, _CRLF]


def add_field(parts: list[bytes], name: bytes, value: bytes) -> None:
    """Append one ``name: value CRLF`` field to a head; the value is the last piece but one."""
    # Four appends cost less than a tuple built, concatenated and freed (compiled, per field).
    parts.append(name)
    parts.append(_SEP)
    parts.append(value)
    parts.append(_CRLF)


def add_fields(parts: list[bytes], headers: Iterable[Header]) -> None:
    """Append ``name: value CRLF`` pieces for each field to ``parts``."""
    for name, value in headers:
        parts.append(name)
        parts.append(_SEP)
        parts.append(value)
        parts.append(_CRLF)


def field_line(name: bytes, value: bytes) -> bytes:
    """One field as a single piece, for a field whose name and value never change (made once)."""
    return name + _SEP + value + _CRLF


def field_prefix(name: bytes) -> bytes:
    """``name: `` as one piece, for a field whose name never changes (made once; ``add_value``)."""
    return name + _SEP


def add_value(parts: list[bytes], prefix: bytes, value: bytes) -> None:
    """Append one field whose name came from ``field_prefix``; the value is the last piece but one."""
    parts.append(prefix)
    parts.append(value)
    parts.append(_CRLF)


def end_head(parts: list[bytes]) -> bytes:
    """Close a head with its empty line and join it into one buffer."""
    parts.append(_CRLF)
    return b"".join(parts)


def request_head(
    method: bytes,
    target: bytes,
    headers: Iterable[Header],
    extra: Iterable[Header] = (),
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """A request head, fields in the given order, built with one join."""
    parts = request_line(method, target, version)
    add_fields(parts, headers)
    add_fields(parts, extra)
    return end_head(parts)


def response_head(status: int, reason: bytes, headers: Iterable[Header], extra: Iterable[Header] = ()) -> bytes:
    """An HTTP/1.1 status line and fields, in the given order, built with one join."""
    parts = status_line(status, reason)
    add_fields(parts, headers)
    add_fields(parts, extra)
    return end_head(parts)


def chunk(data: bytes) -> list[bytes]:
    """One chunk of a chunked body as buffers for ``transport.writelines`` (the data is not copied)."""
    return [b"%x\r\n" % len(data), data, _CRLF]


def chunked_last(transfer_encoding: bytes | None) -> bool:
    """Whether a body with these Transfer-Encoding values (comma-joined) is chunked: chunked applies
    only as the last coding listed (RFC 9112 section 6.1)."""
    return transfer_encoding is not None and transfer_encoding.rsplit(b",", 1)[-1].strip().lower() == b"chunked"


def dechunk(data: bytes) -> tuple[bytes, bool]:
    """The body inside chunked framing held whole in memory (a capture), and whether the framing ended
    with its last chunk. Lenient as a capture needs: bare LF line ends, chunk extensions, a cut tail
    (what arrived is kept)."""
    out = bytearray()
    pos = 0
    while True:
        line_end = data.find(b"\n", pos)
        if line_end < 0:
            return bytes(out), False
        size_text = data[pos:line_end].rstrip(b"\r").split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return bytes(out), False
        pos = line_end + 1
        if size == 0:
            return bytes(out), True
        if pos + size > len(data):
            out += data[pos:]
            return bytes(out), False
        out += data[pos : pos + size]
        pos += size
        if data[pos : pos + 2] == _CRLF:
            pos += 2
        elif data[pos : pos + 1] == b"\n":
            pos += 1
