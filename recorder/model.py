"""The Exchange model: the one contract between the proxy, tape, replayer and differ.

An exchange is one request and what each upstream answered: the primary, and each shadow (or the
replay target) by name. Everything is a frozen, slotted dataclass holding bytes as they were on the
wire: header order, case and duplicates are kept, bodies are never decoded here (the differ decodes
content-encodings, the tape does not).

This module also owns the msgpack mapping of the model (``exchange_to_wire`` / ``exchange_from_wire``),
specified in docs/tape-format.md. Decoding checks the type of every value, so an Exchange read from a
tape always holds what its annotations say; a record of the wrong shape is a ``TapeFormatError``
whose ``field`` names the value (``request.headers[2][1]``). It must never do I/O, never import
another shadowtap package, and never change the meaning of an existing wire position: new fields are
appended, and readers take a shorter array as "the newer fields are at their defaults".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeAlias, cast
from urllib.parse import parse_qsl

from shadowtap.recorder.errors import TapeFormatError

__all__ = [
    "PRIMARY",
    "REPLAY",
    "UNRECORDED",
    "Exchange",
    "Failure",
    "FailureKind",
    "Header",
    "Headers",
    "Outcome",
    "Request",
    "RequestDelta",
    "Response",
    "StreamMessage",
    "Timing",
    "delta_to_wire",
    "exchange_from_wire",
    "exchange_record",
    "exchange_to_wire",
    "failure_record",
    "header_value",
    "header_values",
    "new_response",
    "new_timing",
    "outcome_to_wire",
    "request_record",
    "request_to_wire",
    "response_record",
    "stream_message_to_wire",
    "timing_to_wire",
]

#: Name of the response that the client got (proxy) or that was recorded (replay results).
PRIMARY: Final = "primary"
#: Name of the replayed response in a replay results tape.
REPLAY: Final = "replay"

Header: TypeAlias = tuple[bytes, bytes]
Headers: TypeAlias = tuple[Header, ...]


class FailureKind:
    """The reasons an upstream exchange can fail or a mirror can be dropped. Strings on the wire."""

    CONNECT_ERROR: Final = "connect-error"
    TIMEOUT: Final = "timeout"
    RESET: Final = "reset"
    BAD_RESPONSE: Final = "bad-response"
    BODY_TOO_LARGE: Final = "body-too-large"
    QUEUE_FULL: Final = "queue-full"
    BREAKER_OPEN: Final = "breaker-open"
    SAMPLED_OUT: Final = "sampled-out"
    METHOD_NOT_ALLOWED: Final = "method-not-allowed"
    RATE_LIMITED: Final = "rate-limited"
    DISABLED: Final = "disabled"
    CANCELLED: Final = "cancelled"
    #: A response that failed after its head (reset, short body, bad chunk, timeout): never an answer.
    INCOMPLETE: Final = "incomplete"
    #: The client gave up or was stopped before any response (a browser's aborted or blocked request in a HAR).
    ABORTED: Final = "aborted"
    OTHER: Final = "other"


def header_values(headers: Headers, name: bytes) -> list[bytes]:
    """All values of header ``name`` (case-insensitive), in wire order."""
    wanted = name.lower()
    return [value for key, value in headers if key.lower() == wanted]


def header_value(headers: Headers, name: bytes, default: bytes | None = None) -> bytes | None:
    """The first value of header ``name`` (case-insensitive), or ``default``."""
    wanted = name.lower()
    for key, value in headers:
        if key.lower() == wanted:
            return value
    return default


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """One gRPC message of a request or response body: its framing and when it passed.

    The message's bytes are not repeated here: they are in the body, which holds the call's
    length-prefixed messages as on the wire (``shadowtap.wire.grpc.split_messages`` splits it).
    ``flags`` is the message's flag byte (bit 0: compressed with the call's ``grpc-encoding``),
    ``length`` its length without the 5-byte prefix (kept even when the body was cut at a recording
    cap), ``at_ns`` when its last byte passed, in ns relative to the exchange's ``started_mono_ns``
    (``None`` when unknown, as in imports).
    """

    flags: int
    length: int
    at_ns: int | None = None

    @property
    def compressed(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request as the client sent it.

    ``target`` is the origin-form request target (path and query, ``/users/7?x=1``) exactly as sent.
    ``authority`` is the host[:port] the client addressed (Host header or absolute-form), ``scheme``
    how it reached us. ``http_version`` is ``"1.0"``, ``"1.1"`` or ``"2"``. ``truncated_from`` is the
    original body size when ``body`` was cut at a recording cap, ``None`` when ``body`` is complete.
    ``trailers`` are the trailer fields after the body (HTTP/2, or chunked HTTP/1.1), in order;
    ``messages`` the gRPC messages of the body with their timing (empty for anything but gRPC).
    """

    method: str
    target: str
    headers: Headers = ()
    body: bytes = b""
    scheme: str = "http"
    authority: str = ""
    http_version: str = "1.1"
    truncated_from: int | None = None
    trailers: Headers = ()
    messages: tuple[StreamMessage, ...] = ()

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        parts = self.target.split("?", 1)
        return parts[1] if len(parts) == 2 else ""

    def query_params(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query, keep_blank_values=True)

    def header(self, name: bytes, default: bytes | None = None) -> bytes | None:
        return header_value(self.headers, name, default)


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP response as an upstream sent it (body still content-encoded).

    ``trailers`` and ``messages`` as in ``Request``: a gRPC response's ``grpc-status`` and
    ``grpc-message`` are in its trailers (or in its headers, for a trailers-only response).
    """

    status: int
    reason: str = ""
    headers: Headers = ()
    body: bytes = b""
    http_version: str = "1.1"
    truncated_from: int | None = None
    trailers: Headers = ()
    messages: tuple[StreamMessage, ...] = ()

    def header(self, name: bytes, default: bytes | None = None) -> bytes | None:
        return header_value(self.headers, name, default)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an upstream gave no usable response (``kind`` is a ``FailureKind`` string)."""

    kind: str
    message: str = ""


Outcome: TypeAlias = Response | Failure

#: A header or query value in a ``RequestDelta`` that the tape does not hold (a shadow's own
#: credential, a secret): it stands for "some value".
UNRECORDED: Final = "redacted:credential"


@dataclass(frozen=True, slots=True)
class RequestDelta:
    """What the proxy changed in one shadow's copy of a request, against the request the primary got.

    ``removed``: names of the header fields the primary got and the copy did not (stripped
    credentials, ``Expect``), in request order; their values are the request's. ``added``: fields
    only the copy got (the marker, the correlation id, a shadow's own credentials). ``replaced``:
    fields both got, with the value the copy got. ``authority``: the Host the primary got and the
    Host the copy got, when they differ. ``query``: the query parameters the copy got with another
    value (a secret hashed or swapped) or without (``None``), by name. A value of ``UNRECORDED``
    was not recorded (a shadow's own credential): it stands for any value; a hash
    (``redacted:hmac:...``) is the one the tape gives the client's value. Forwarding headers
    (``X-Forwarded-*``, ``Via``) are the same for the primary and every copy, so never appear here.
    """

    removed: tuple[bytes, ...] = ()
    added: Headers = ()
    replaced: Headers = ()
    authority: tuple[str, str] | None = None
    query: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True, slots=True)
class Timing:
    """When one upstream exchange ran, in ns relative to the exchange's ``started_mono_ns``.

    ``sent_ns``: request start sent; ``first_byte_ns``: response head received; ``done_ns``: response
    body complete. ``None`` where unknown (an import without timings, a failure before the head).
    """

    sent_ns: int | None = None
    first_byte_ns: int | None = None
    done_ns: int | None = None

    @property
    def duration_ns(self) -> int | None:
        if self.sent_ns is None or self.done_ns is None:
            return None
        return self.done_ns - self.sent_ns


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request with the primary's outcome and each shadow's (or the replay's), by name.

    ``started_at_ns`` is wall-clock ns since the epoch, ``started_mono_ns`` the monotonic clock of
    the recording host at the same instant (for exact intervals within one recorder). ``session`` is
    the session key when known, ``connection_id`` the client connection. ``decisions`` holds, per
    shadow name, ``"mirrored"`` or the ``FailureKind`` reason it was not mirrored. ``tags`` carries
    free-form string metadata (``source``, ``correlation_id``, importer notes). ``request_deltas``
    holds, per shadow whose copy was sent, what the proxy changed in that copy's request
    (``RequestDelta``); a tape written before deltas were recorded has none.

    The mappings must be treated as read-only.
    """

    id: str
    started_at_ns: int
    request: Request
    primary: Outcome | None = None
    shadows: Mapping[str, Outcome] = field(default_factory=dict)
    timings: Mapping[str, Timing] = field(default_factory=dict)
    started_mono_ns: int = 0
    session: str = ""
    connection_id: str = ""
    client_addr: str = ""
    decisions: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    request_deltas: Mapping[str, RequestDelta] = field(default_factory=dict)

    def outcome(self, name: str) -> Outcome | None:
        """The outcome named ``name``: ``"primary"`` or a shadow / replay name."""
        if name == PRIMARY:
            return self.primary
        return self.shadows.get(name)

    def response(self, name: str) -> Response | None:
        """The response named ``name``, or ``None`` when absent or a failure."""
        outcome = self.outcome(name)
        return outcome if isinstance(outcome, Response) else None


# --- msgpack mapping -------------------------------------------------------------------------------
# Positional arrays: compact and fast to decode. The layout is the specification in
# docs/tape-format.md; append, never reorder. Outcomes carry a leading tag.

_TAG_RESPONSE: Final = 0
_TAG_FAILURE: Final = 1


def stream_message_to_wire(m: StreamMessage) -> list[Any]:
    """The array of a gRPC message entry (docs/tape-format.md, "StreamMessage")."""
    return [m.flags, m.length, m.at_ns]


def request_record(
    method: str,
    target: str,
    headers: Headers,
    body: bytes,
    scheme: str,
    authority: str,
    http_version: str,
    truncated_from: int | None,
    trailers: Headers = (),
    messages: list[list[Any]] | tuple[()] = (),
) -> list[Any]:
    """The array of a request record (docs/tape-format.md, "Request") from its fields;
    ``messages`` already in wire form (``stream_message_to_wire``)."""
    return [method, target, headers, body, scheme, authority, http_version, truncated_from, trailers, messages]


def request_to_wire(r: Request) -> list[Any]:
    return request_record(
        r.method, r.target, r.headers, r.body, r.scheme, r.authority, r.http_version, r.truncated_from,
        r.trailers, [stream_message_to_wire(m) for m in r.messages] if r.messages else (),
    )  # fmt: skip


def response_record(
    status: int,
    reason: str,
    headers: Headers,
    body: bytes,
    http_version: str,
    truncated_from: int | None,
    trailers: Headers = (),
    messages: list[list[Any]] | tuple[()] = (),
) -> list[Any]:
    """The array of a response outcome (docs/tape-format.md, "Outcome") from its fields;
    ``messages`` already in wire form (``stream_message_to_wire``)."""
    return [_TAG_RESPONSE, status, reason, headers, body, http_version, truncated_from, trailers, messages]


def failure_record(kind: str, message: str) -> list[Any]:
    """The array of a failure outcome (docs/tape-format.md, "Outcome") from its fields."""
    return [_TAG_FAILURE, kind, message]


def outcome_to_wire(o: Outcome) -> list[Any]:
    """The array of an outcome record: a response or a failure, behind its tag."""
    if isinstance(o, Response):
        return response_record(
            o.status, o.reason, o.headers, o.body, o.http_version, o.truncated_from,
            o.trailers, [stream_message_to_wire(m) for m in o.messages] if o.messages else (),
        )  # fmt: skip
    return failure_record(o.kind, o.message)


def timing_to_wire(t: Timing) -> list[Any]:
    return [t.sent_ns, t.first_byte_ns, t.done_ns]


def delta_to_wire(d: RequestDelta) -> list[Any]:
    """The array of a request delta (docs/tape-format.md, "RequestDelta")."""
    return [
        list(d.removed),
        d.added,
        d.replaced,
        None if d.authority is None else list(d.authority),
        [list(pair) for pair in d.query],
    ]


def exchange_record(
    exchange_id: str,
    started_at_ns: int,
    started_mono_ns: int,
    request: list[Any],
    primary: list[Any] | None,
    shadows: dict[str, list[Any]],
    timings: dict[str, list[Any]],
    session: str,
    connection_id: str,
    client_addr: str,
    decisions: dict[str, str],
    tags: dict[str, str],
    request_deltas: dict[str, list[Any]] | None = None,
) -> list[Any]:
    """An exchange record array from its parts, already in wire form (``request_to_wire``,
    ``outcome_to_wire``, ``timing_to_wire``, ``delta_to_wire``; ``request_deltas`` None when there
    are none): for writers that never build an ``Exchange`` (the proxy's record stage).
    ``exchange_from_wire`` of the packed record gives the same Exchange as building one from these
    values; the writer owns the lists from here on (redaction edits them)."""
    return [
        exchange_id,
        started_at_ns,
        started_mono_ns,
        request,
        primary,
        shadows,
        timings,
        session,
        connection_id,
        client_addr,
        decisions,
        tags,
        request_deltas,
    ]


def exchange_to_wire(ex: Exchange) -> list[Any]:
    """The msgpack-ready array for ``ex`` (see docs/tape-format.md, "Exchange record")."""
    return exchange_record(
        ex.id,
        ex.started_at_ns,
        ex.started_mono_ns,
        request_to_wire(ex.request),
        None if ex.primary is None else outcome_to_wire(ex.primary),
        {name: outcome_to_wire(o) for name, o in ex.shadows.items()},
        {name: timing_to_wire(t) for name, t in ex.timings.items()},
        ex.session,
        ex.connection_id,
        ex.client_addr,
        dict(ex.decisions),
        dict(ex.tags),
        {name: delta_to_wire(d) for name, d in ex.request_deltas.items()} if ex.request_deltas else None,
    )


# Trailing fields a writer may leave out (an older writer, or another language's), with the value
# they then have. Positions before these are required.
_REQUEST_REQUIRED, _REQUEST_DEFAULTS = 2, ((), b"", "http", "", "1.1", None, (), ())
_RESPONSE_REQUIRED, _RESPONSE_DEFAULTS = 2, ("", (), b"", "1.1", None, (), ())
_MESSAGE_REQUIRED, _MESSAGE_DEFAULTS = 2, (None,)
_FAILURE_REQUIRED, _FAILURE_DEFAULTS = 2, ("",)
_TIMING_REQUIRED, _TIMING_DEFAULTS = 0, (None, None, None)
_EXCHANGE_REQUIRED, _EXCHANGE_DEFAULTS = 4, (None, None, None, "", "", "", None, None, None)
_DELTA_REQUIRED, _DELTA_DEFAULTS = 3, (None, ())
_REQUEST_FIELDS: Final = _REQUEST_REQUIRED + len(_REQUEST_DEFAULTS)
_RESPONSE_FIELDS: Final = _RESPONSE_REQUIRED + len(_RESPONSE_DEFAULTS)
_FAILURE_FIELDS: Final = _FAILURE_REQUIRED + len(_FAILURE_DEFAULTS)
_TIMING_FIELDS: Final = _TIMING_REQUIRED + len(_TIMING_DEFAULTS)
_DELTA_FIELDS: Final = _DELTA_REQUIRED + len(_DELTA_DEFAULTS)
_MESSAGE_FIELDS: Final = _MESSAGE_REQUIRED + len(_MESSAGE_DEFAULTS)
_EXCHANGE_FIELDS: Final = _EXCHANGE_REQUIRED + len(_EXCHANGE_DEFAULTS)
# msgpack ints reach 2**64 - 1; a start time beyond a signed 64-bit int fits no SQLite store (the
# differ's) nor any clock: refused too, the one value a type check alone would let through.
_INT64_MAX: Final = 2**63 - 1

# --- naming what is wrong ------------------------------------------------------------------------
# Only runs once the fast decoder has refused a record: it walks the record by the layout in
# docs/tape-format.md and names the first value that does not fit, as a dotted path.


class _Misfit(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _msgpack_type(value: Any) -> str:
    """What a decoded value was in the record, in msgpack's words."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an int"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a str"
    if isinstance(value, bytes | bytearray | memoryview):
        return "a bin"
    if isinstance(value, tuple | list):
        return f"an array of {len(value)}"
    if isinstance(value, dict):
        return "a map"
    return type(value).__name__  # an ext type


#: A trailing field the record leaves out (it takes its default, so it fits).
_ABSENT: Final = object()
_LEAF_NAMES: Final = {str: "a str", bytes: "a bin", int: "an int"}


def _want(ok: bool, field: str, expected: str, value: Any) -> None:
    if not ok:
        raise _Misfit(field, f"expected {expected}, found {_msgpack_type(value)}")


def _array(value: Any, field: str, what: str, required: int, known: int) -> list[Any]:
    """``value`` as a list of ``known`` fields (missing trailing ones as ``_ABSENT``)."""
    _want(type(value) is tuple or type(value) is list, field, f"an array ({what} record)", value)
    if len(value) < required:
        raise _Misfit(field, f"{what} record has {len(value)} fields, needs at least {required}")
    return [*value[:known], *(_ABSENT,) * (known - len(value))]


def _leaf(value: Any, field: str, kind: type, optional: bool = False) -> None:
    if value is _ABSENT or (optional and value is None):
        return
    _want(type(value) is kind, field, _LEAF_NAMES[kind] + (" or nil" if optional else ""), value)


def _locate_headers(value: Any, field: str) -> None:
    if value is _ABSENT:
        return
    _want(type(value) is tuple or type(value) is list, field, "an array of [name, value] headers", value)
    for i, header in enumerate(value):
        at = f"{field}[{i}]"
        _want(type(header) is tuple or type(header) is list, at, "a [name, value] array", header)
        if len(header) != 2:
            raise _Misfit(at, f"expected a [name, value] array, found an array of {len(header)}")
        _leaf(header[0], f"{at}[0]", bytes)
        _leaf(header[1], f"{at}[1]", bytes)


def _locate_messages(value: Any, field: str) -> None:
    if value is _ABSENT:
        return
    _want(type(value) is tuple or type(value) is list, field, "an array of [flags, length, at_ns] messages", value)
    for i, message in enumerate(value):
        at = f"{field}[{i}]"
        flags, length, at_ns = _array(message, at, "message", _MESSAGE_REQUIRED, _MESSAGE_FIELDS)
        _leaf(flags, f"{at}.flags", int)
        _leaf(length, f"{at}.length", int)
        _leaf(at_ns, f"{at}.at_ns", int, optional=True)


def _locate_outcome(value: Any, field: str) -> None:
    _want(type(value) is tuple or type(value) is list, field, "an array (outcome record)", value)
    if not value:
        raise _Misfit(field, "outcome record has 0 fields, needs at least 2")
    tag = value[0]
    _want(type(tag) is int, f"{field}.tag", "an int", tag)
    if tag == _TAG_RESPONSE:
        parts = _array(value, field, "response", _RESPONSE_REQUIRED, _RESPONSE_FIELDS)
        status, reason, headers, body, version, truncated, trailers, messages = parts[1:]
        _leaf(status, f"{field}.status", int)
        _leaf(reason, f"{field}.reason", str)
        _locate_headers(headers, f"{field}.headers")
        _leaf(body, f"{field}.body", bytes)
        _leaf(version, f"{field}.http_version", str)
        _leaf(truncated, f"{field}.truncated_from", int, optional=True)
        _locate_headers(trailers, f"{field}.trailers")
        _locate_messages(messages, f"{field}.messages")
    elif tag == _TAG_FAILURE:
        kind, message = _array(value, field, "failure", _FAILURE_REQUIRED, _FAILURE_FIELDS)[1:]
        _leaf(kind, f"{field}.kind", str)
        _leaf(message, f"{field}.message", str)
    else:
        raise _Misfit(f"{field}.tag", f"unknown outcome tag {tag} (0 is a response, 1 a failure)")


def _locate_map(value: Any, field: str, what: str) -> dict[Any, Any]:
    if value is _ABSENT or value is None:
        return {}
    _want(type(value) is dict, field, f"a map of {what}, or nil", value)
    for key in value:
        _want(type(key) is str, f"{field}[{key!r}]", "a str key", key)
    return cast(dict[Any, Any], value)


def _locate_timing(value: Any, field: str) -> None:
    values = _array(value, field, "timing", _TIMING_REQUIRED, _TIMING_FIELDS)
    for name, ns in zip(("sent_ns", "first_byte_ns", "done_ns"), values, strict=True):
        _leaf(ns, f"{field}.{name}", int, optional=True)


def _locate(a: Any) -> None:
    """Raise ``_Misfit`` naming the first value of record ``a`` that does not fit its layout."""
    record = _array(a, "record", "exchange", _EXCHANGE_REQUIRED, _EXCHANGE_FIELDS)
    exchange_id, started_at_ns, started_mono_ns, request, primary, shadows, timings = record[:7]
    session, connection_id, client_addr, decisions, tags, deltas = record[7:]
    _leaf(exchange_id, "id", str)
    _leaf(started_at_ns, "started_at_ns", int)
    if started_at_ns is not _ABSENT and started_at_ns > _INT64_MAX:
        raise _Misfit("started_at_ns", f"expected a signed 64-bit int, found {started_at_ns}")
    _leaf(started_mono_ns, "started_mono_ns", int)
    method, target, headers, body, scheme, authority, version, truncated, trailers, messages = _array(
        request, "request", "request", _REQUEST_REQUIRED, _REQUEST_FIELDS
    )
    _leaf(method, "request.method", str)
    _leaf(target, "request.target", str)
    _locate_headers(headers, "request.headers")
    _leaf(body, "request.body", bytes)
    _leaf(scheme, "request.scheme", str)
    _leaf(authority, "request.authority", str)
    _leaf(version, "request.http_version", str)
    _leaf(truncated, "request.truncated_from", int, optional=True)
    _locate_headers(trailers, "request.trailers")
    _locate_messages(messages, "request.messages")
    if primary is not _ABSENT and primary is not None:
        _locate_outcome(primary, "primary")
    for name, outcome in _locate_map(shadows, "shadows", "outcomes").items():
        _locate_outcome(outcome, f"shadows[{name!r}]")
    for name, timing in _locate_map(timings, "timings", "timings").items():
        _locate_timing(timing, f"timings[{name!r}]")
    _leaf(session, "session", str)
    _leaf(connection_id, "connection_id", str)
    _leaf(client_addr, "client_addr", str)
    for field_name, strings in (("decisions", decisions), ("tags", tags)):
        for key, text in _locate_map(strings, field_name, "str to str").items():
            _leaf(text, f"{field_name}[{key!r}]", str)
    for name, delta in _locate_map(deltas, "request_deltas", "request deltas").items():
        _locate_delta(delta, f"request_deltas[{name!r}]")


def _locate_delta(value: Any, field: str) -> None:
    removed, added, replaced, authority, query = _array(value, field, "request delta", _DELTA_REQUIRED, _DELTA_FIELDS)
    _want(type(removed) is tuple or type(removed) is list, f"{field}.removed", "an array of header names", removed)
    for i, name in enumerate(removed):
        _leaf(name, f"{field}.removed[{i}]", bytes)
    _locate_headers(added, f"{field}.added")
    _locate_headers(replaced, f"{field}.replaced")
    if authority is not _ABSENT and authority is not None:
        at = f"{field}.authority"
        _want(type(authority) is tuple or type(authority) is list, at, "a [primary, copy] array, or nil", authority)
        if len(authority) != 2:
            raise _Misfit(at, f"expected a [primary, copy] array, found an array of {len(authority)}")
        _leaf(authority[0], f"{at}[0]", str)
        _leaf(authority[1], f"{at}[1]", str)
    if query is not _ABSENT:
        _want(type(query) is tuple or type(query) is list, f"{field}.query", "an array of [name, value]", query)
        for i, pair in enumerate(query):
            at = f"{field}.query[{i}]"
            _want(type(pair) is tuple or type(pair) is list, at, "a [name, value] array", pair)
            if len(pair) != 2:
                raise _Misfit(at, f"expected a [name, value] array, found an array of {len(pair)}")
            _leaf(pair[0], f"{at}[0]", str)
            _leaf(pair[1], f"{at}[1]", str, optional=True)


def _malformed(a: Any) -> TapeFormatError:
    """The error for a record the fast decoder refused, naming the field that is wrong."""
    try:
        _locate(a)
    except _Misfit as misfit:
        return TapeFormatError(f"malformed exchange record: {misfit.message}", field=misfit.field)
    # The walk and the decoder disagree: still an error, without a field (a bug to report).
    return TapeFormatError("malformed exchange record")


# The decoder (the hot half of the mapping) runs compiled when the build matches; it imports the
# classes and layout above, so it is imported last.
from shadowtap.recorder._decode import build_response, build_timing, exchange_from_wire  # noqa: E402


class _NewResponse(Protocol):
    """``new_response``'s signature: ``Response``'s fields in order, trailers and messages optional."""

    def __call__(
        self,
        status: int,
        reason: str,
        headers: Headers,
        body: bytes,
        http_version: str,
        truncated_from: int | None,
        trailers: Headers = (),
        messages: tuple[StreamMessage, ...] = (),
    ) -> Response: ...


#: Fast positional constructors for hot paths that have every field at hand (the proxy builds one
#: Response and one Timing per upstream exchange, the replayer one Response a request): they store
#: straight into the slots, at a fraction of the frozen ``__init__``'s cost (the decoder's builders,
#: compiled with it). Every field must be given, in declaration order (but a response's trailers and
#: messages, empty when left out); nothing is checked, and there is no ``__post_init__``.
new_response = cast("_NewResponse", build_response)
new_timing = cast("Callable[[int | None, int | None, int | None], Timing]", build_timing)
