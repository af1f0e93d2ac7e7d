"""Whether an HTTP/2 request's or trailers' field list is malformed (RFC 9113 8.2 and 8.3), checked in
one compiled pass: the proxy's HTTP/2 server side checks what clients send with it instead of
``h2``'s inbound validation (a chain of Python generators, one per rule, over every field).

It checks what ``h2`` checked (empty, uppercase or whitespace-wrapped names, connection-specific
fields, ``te`` other than ``trailers``, pseudo-header fields duplicated, unknown, after a regular
field or in trailers, a request without ``:method``, ``:scheme`` and ``:path``, without
``:authority`` or ``host`` or with the two differing, an empty ``:path``) and what RFC 9113 8.2.1
adds: no CR, LF or NUL in a value, no such byte, space or colon in a name. Each function returns why
the list is malformed, or "" when it is not. It must stay free of policy (what a malformed stream
gets is the caller's choice).
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["request_problem", "trailers_problem"]

#: Fields about one HTTP/1 connection, malformed in HTTP/2 (RFC 9113 8.2.2).
CONNECTION_SPECIFIC: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_REQUEST_PSEUDO: Final = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol"))
#: Bytes that may not begin or end a field name or value (h2's rule: Python's ``string.whitespace``).
_WHITESPACE: Final = frozenset(b" \t\n\r\x0b\x0c")
#: Bytes never allowed in a field name (RFC 9113 8.2.1); a pseudo-header's leading colon is checked apart.
_NAME_FORBIDDEN: Final = (b"\x00", b"\r", b"\n", b" ", b":")


def _field_problem(name: bytes, value: bytes) -> str:
    """What is wrong with one field whatever its place, or ""."""
    if not name:
        return "an empty field name"
    if name != name.lower():
        return f"uppercase in the field name {name!r}"
    if name[0] in _WHITESPACE or name[-1] in _WHITESPACE:
        return f"whitespace around the field name {name!r}"
    rest = name[1:] if name[0] == 0x3A else name
    # ``find``, not ``in``: CPython's ``bytes in bytes`` formats (and drops) a TypeError each time.
    for forbidden in _NAME_FORBIDDEN:
        if rest.find(forbidden) >= 0:
            return f"a forbidden byte in the field name {name!r}"
    if value:
        if value[0] in _WHITESPACE or value[-1] in _WHITESPACE:
            return f"whitespace around the value of {name!r}"
        if value.find(b"\r") >= 0 or value.find(b"\n") >= 0 or value.find(b"\x00") >= 0:
            return f"a control character in the value of {name!r}"
    if name in CONNECTION_SPECIFIC:
        return f"the connection-specific field {name!r}"
    if name == b"te" and value.lower() != b"trailers":
        return f"te: {value!r} (only 'trailers' is allowed)"
    return ""


def request_problem(fields: list[Any]) -> str:
    """Why a request's fields (``(name, value)`` byte pairs, as decoded) are malformed, or ""."""
    seen: set[bytes] = set()
    regular = False
    method: bytes | None = None
    path: bytes | None = None
    authority: bytes | None = None
    host: bytes | None = None
    for field in fields:
        name: bytes = field[0]
        value: bytes = field[1]
        problem = _field_problem(name, value)
        if problem:
            return problem
        if name[0] == 0x3A:
            if regular:
                return f"the pseudo-header field {name!r} after a regular field"
            if name not in _REQUEST_PSEUDO:
                return f"the pseudo-header field {name!r} in a request"
            if name in seen:
                return f"the pseudo-header field {name!r} twice"
            seen.add(name)
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
        else:
            regular = True
            if name == b"host":
                host = value
    if method is None or path is None or b":scheme" not in seen:
        return "a request without :method, :scheme or :path"
    if b":protocol" in seen and method != b"CONNECT":
        return ":protocol in a request that is not CONNECT"
    if not path:
        return "an empty :path"
    if authority is None and host is None:
        return "a request without :authority or host"
    if authority is not None and host is not None and authority != host:
        return "a request whose :authority and host differ"
    return ""


def trailers_problem(fields: list[Any]) -> str:
    """Why trailers are malformed (a pseudo-header field among them, or a bad field), or ""."""
    for field in fields:
        name: bytes = field[0]
        value: bytes = field[1]
        problem = _field_problem(name, value)
        if problem:
            return problem
        if name[0] == 0x3A:
            return f"the pseudo-header field {name!r} in trailers"
    return ""
