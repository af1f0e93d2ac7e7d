"""The request-side header policy for the primary path: the head sent upstream for each request.

``RequestRewriter`` turns a client request head into the head sent to the primary, by the
``ForwardSettings`` it was made with, and tells the mirror stage the forwarding fields
(X-Forwarded-*, Via) that head carried (``forwarding``), so that every copy carries the same. It must
never do I/O and never change a header other than the hop-by-hop ones and those the settings name
(Host, Via, X-Forwarded-*). Compiled with the rest of the data path (``shadowtap.proxy.native``); the settings
stay in ``shadowtap.proxy.forward``, which is not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from shadowtap.recorder.model import Header
from shadowtap.wire import http1
from shadowtap.wire.http1 import add_field, add_fields, add_value, end_head, field_line, field_prefix, request_line

if TYPE_CHECKING:
    from shadowtap.proxy.forward import ForwardSettings

__all__ = ["Forwarding", "RequestRewriter", "climbs_above_root", "no_forwarding"]

#: The pieces of the fields the primary's head adds (serialised once, by the wire layer).
_HOST_FIELD: Final = field_prefix(b"Host")
_FORWARDED_FOR_FIELD: Final = field_prefix(b"X-Forwarded-For")
_FORWARDED_PROTO_FIELD: Final = field_prefix(b"X-Forwarded-Proto")
_FORWARDED_HOST_FIELD: Final = field_prefix(b"X-Forwarded-Host")
_VIA_FIELD: Final = field_prefix(b"Via")
_CHUNKED: Final = field_line(b"Transfer-Encoding", b"chunked")

#: The forwarding fields a request's primary head carried, for its copies: the client's header
#: fields with the X-Forwarded-For value the primary got (the same tuple when the client sent none),
#: the fields added after them, and those rendered as head lines (so each copy appends one string).
Forwarding = tuple[tuple[Header, ...], tuple[Header, ...], bytes]


def no_forwarding(headers: tuple[Header, ...]) -> Forwarding:
    """No forwarding fields at all for a request with ``headers`` (no rewriter to say which)."""
    return headers, (), b""


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

    def host_sent(self, client_host: bytes | None) -> bytes:
        """The Host the primary gets for a request whose Host was ``client_host`` (None: none)."""
        if self._host is not None or client_host is None:
            return self._authority
        return client_host

    def forwarding(
        self, headers: tuple[Header, ...], client_ip: bytes, scheme: bytes, exclude: frozenset[bytes] | None = None
    ) -> Forwarding:
        """The forwarding fields ``head`` gives the primary for a (non-Upgrade) request, by the same
        rules, for the mirror stage to give every copy the same values: computed once per request,
        off the data path (the copies are sent from a later loop turn).

        ``head`` puts the client address after the last hop of the last X-Forwarded-For field, or
        adds the field; adds X-Forwarded-Proto and X-Forwarded-Host unless the client sent them
        (X-Forwarded-Host only when it sent a Host), then Via. Fields a Connection field lists are
        left out of all this, as there (``exclude``, found by a first pass).
        """
        xff_at = -1
        seen_proto = seen_fwd_host = False
        client_host: bytes | None = None
        listed: list[bytes] | None = None
        index = -1
        for name, value in headers:
            index += 1
            lower = name.lower()
            kind = _REQUEST_FIELD_KINDS.get(lower)
            if kind is None or kind == _DROP or (exclude is not None and lower in exclude):
                continue
            if kind == _CONNECTION:
                if exclude is None:
                    listed = _listed(value, listed, False)
            elif kind == _HOST:
                client_host = value
            elif kind == _FORWARDED_FOR:
                xff_at = index
            elif kind == _FORWARDED_PROTO:
                seen_proto = True
            elif kind == _FORWARDED_HOST:
                seen_fwd_host = True
        if listed:
            return self.forwarding(headers, client_ip, scheme, frozenset(listed))
        added: list[Header] = []
        if self._forwarded_for:
            if xff_at >= 0:
                name, value = headers[xff_at]
                headers = (*headers[:xff_at], (name, value + b", " + client_ip), *headers[xff_at + 1 :])
            else:
                added.append((b"X-Forwarded-For", client_ip))
        if self._forwarded_proto and not seen_proto:
            added.append((b"X-Forwarded-Proto", scheme))
        if self._forwarded_host and not seen_fwd_host and client_host is not None:
            added.append((b"X-Forwarded-Host", client_host))
        via = self._via
        if via is not None:
            added.append((b"Via", via))
        lines: list[bytes] = []
        add_fields(lines, added)
        return headers, tuple(added), b"".join(lines)

    def escapes_prefix(self, target: bytes) -> bool:
        """Whether ``target`` would leave the primary's path prefix once the primary resolves its dot
        segments (``/../admin`` under ``/api``). Always False without a prefix."""
        return bool(self._prefix) and climbs_above_root(target)

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
        # The asterisk-form (OPTIONS *) and the authority-form (CONNECT) name no path: no prefix.
        prefixed = self._prefix + target if self._prefix and target[:1] == b"/" else target
        parts = request_line(method, prefixed)
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
                    # The client address goes after the last hop listed (the last field if repeated):
                    # the value is the last piece but one of the field ``http1.field`` adds next.
                    xff_at = len(parts) + 2
                elif kind == _FORWARDED_PROTO:
                    seen_proto = True
                elif kind == _FORWARDED_HOST:
                    seen_fwd_host = True
            add_field(parts, name, value)
        if listed:
            return self.head(method, target, headers, client_ip, scheme, chunked, upgrade, frozenset(listed))
        if client_host is None:
            # HTTP/1.0 clients may omit Host; HTTP/1.1 upstreams require one.
            add_value(parts, _HOST_FIELD, self._authority)
        if self._forwarded_for:
            if xff_at >= 0:
                parts[xff_at] += b", " + client_ip
            else:
                add_value(parts, _FORWARDED_FOR_FIELD, client_ip)
        if self._forwarded_proto and not seen_proto:
            add_value(parts, _FORWARDED_PROTO_FIELD, scheme)
        if self._forwarded_host and not seen_fwd_host and client_host is not None:
            add_value(parts, _FORWARDED_HOST_FIELD, client_host)
        if self._via is not None:
            add_value(parts, _VIA_FIELD, self._via)
        if chunked:
            parts.append(_CHUNKED)
        return end_head(parts)


def climbs_above_root(target: bytes) -> bool:
    """Whether an origin-form target's path climbs above ``/`` through ``..`` segments, counting the
    spellings a server may decode first (``%2e``, ``%2f``, ``%5c``, backslash), as nginx refuses."""
    path = target.split(b"?", 1)[0]
    # find(), not ``in``: ``bytes in bytes`` formats and drops a TypeError first (its operand could
    # have been an integer), a thousand instructions or more on the data path.
    if path.find(b".") < 0 and path.find(b"%") < 0:
        return False
    path = path.lower().replace(b"\\", b"/")
    if path.find(b"%") >= 0:
        path = path.replace(b"%2e", b".").replace(b"%2f", b"/").replace(b"%5c", b"/")
    depth = 0
    for segment in path.split(b"/")[1:]:
        if segment == b"..":
            depth -= 1
            if depth < 0:
                return True
        elif segment and segment != b".":
            depth += 1
    return False


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
