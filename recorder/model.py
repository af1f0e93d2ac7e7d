"""The Exchange model: the one contract between the proxy, tape, replayer and differ.

An exchange is one request and what each upstream answered: the primary, and each shadow (or the
replay target) by name. Everything is a frozen, slotted dataclass holding bytes as they were on the
wire: header order, case and duplicates are kept, bodies are never decoded here (the differ decodes
content-encodings, the tape does not).

This module also owns the msgpack mapping of the model (``exchange_to_wire`` / ``exchange_from_wire``),
specified in docs/tape-format.md. It must never do I/O, never import another shadowtap package, and
never change the meaning of an existing wire position: new fields are appended, and readers take a
shorter array as "the newer fields are at their defaults".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, TypeAlias, TypeVar, cast
from urllib.parse import parse_qsl

from recorder.errors import TapeFormatError

T = TypeVar("T")

__all__ = [
    "PRIMARY",
    "REPLAY",
    "Exchange",
    "Failure",
    "FailureKind",
    "Header",
    "Headers",
    "Outcome",
    "Request",
    "Response",
    "Timing",
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
class Request:
    """An HTTP request as the client sent it.

    ``target`` is the origin-form request target (path and query, ``/users/7?x=1``) exactly as sent.
    ``authority`` is the host[:port] the client addressed (Host header or absolute-form), ``scheme``
    how it reached us. ``truncated_from`` is the original body size when ``body`` was cut at a
    recording cap, ``None`` when ``body`` is complete.
    """

    method: str
    target: str
    headers: Headers = ()
    body: bytes = b""
    scheme: str = "http"
    authority: str = ""
    http_version: str = "1.1"
    truncated_from: int | None = None

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
    """An HTTP response as an upstream sent it (body still content-encoded)."""

    status: int
    reason: str = ""
    headers: Headers = ()
    body: bytes = b""
    http_version: str = "1.1"
    truncated_from: int | None = None

    def header(self, name: bytes, default: bytes | None = None) -> bytes | None:
        return header_value(self.headers, name, default)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an upstream gave no usable response (``kind`` is a ``FailureKind`` string)."""

    kind: str
    message: str = ""


Outcome: TypeAlias = Response | Failure


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
    free-form string metadata (``source``, ``correlation_id``, importer notes).

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


def request_record(
    method: str,
    target: str,
    headers: Headers,
    body: bytes,
    scheme: str,
    authority: str,
    http_version: str,
    truncated_from: int | None,
) -> list[Any]:
    """The array of a request record (docs/tape-format.md, "Request") from its fields."""
    return [method, target, headers, body, scheme, authority, http_version, truncated_from]


def request_to_wire(r: Request) -> list[Any]:
    return request_record(
        r.method, r.target, r.headers, r.body, r.scheme, r.authority, r.http_version, r.truncated_from
    )


def response_record(
    status: int, reason: str, headers: Headers, body: bytes, http_version: str, truncated_from: int | None
) -> list[Any]:
    """The array of a response outcome (docs/tape-format.md, "Outcome") from its fields."""
    return [_TAG_RESPONSE, status, reason, headers, body, http_version, truncated_from]


def failure_record(kind: str, message: str) -> list[Any]:
    """The array of a failure outcome (docs/tape-format.md, "Outcome") from its fields."""
    return [_TAG_FAILURE, kind, message]


def outcome_to_wire(o: Outcome) -> list[Any]:
    """The array of an outcome record: a response or a failure, behind its tag."""
    if isinstance(o, Response):
        return response_record(o.status, o.reason, o.headers, o.body, o.http_version, o.truncated_from)
    return failure_record(o.kind, o.message)


def timing_to_wire(t: Timing) -> list[Any]:
    return [t.sent_ns, t.first_byte_ns, t.done_ns]


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
) -> list[Any]:
    """An exchange record array from its parts, already in wire form (``request_to_wire``,
    ``outcome_to_wire``, ``timing_to_wire``): for writers that never build an ``Exchange`` (the
    proxy's record stage). ``exchange_from_wire`` of the packed record gives the same Exchange as
    building one from these values; the writer owns the lists from here on (redaction edits them)."""
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
    )


def _slot_builder(cls: type[T]) -> Callable[..., T]:
    """A positional constructor for ``cls`` that stores straight into its slots.

    A frozen dataclass's ``__init__`` sets every field through ``object.__setattr__``, several times
    the cost of a slot store, and the reader builds four such objects per exchange: that was most of
    the read cost. The builder skips ``__init__`` (no defaults, no ``__post_init__``), so it is only
    for values laid out by the wire format, with every field given.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    for name in names:
        namespace[f"_set_{name}"] = cls.__dict__[name].__set__
    body = "".join(f"    _set_{name}(obj, {name})\n" for name in names)
    exec(f"def build({', '.join(names)}):\n    obj = _new(_cls)\n{body}    return obj\n", namespace)
    return cast(Callable[..., T], namespace["build"])


_build_request = _slot_builder(Request)
_build_response = _slot_builder(Response)
_build_failure = _slot_builder(Failure)
_build_timing = _slot_builder(Timing)
_build_exchange = _slot_builder(Exchange)

#: Fast positional constructors for hot paths that have every field at hand (the proxy builds one
#: Response and one Timing per upstream exchange): they store straight into the slots, at a fraction
#: of the frozen ``__init__``'s cost. Every field must be given, in declaration order.
new_response: Callable[[int, str, Headers, bytes, str, int | None], Response] = _build_response
new_timing: Callable[[int | None, int | None, int | None], Timing] = _build_timing

# Trailing fields a writer may leave out (an older writer, or another language's), with the value
# they then have. Positions before these are required.
_REQUEST_REQUIRED, _REQUEST_DEFAULTS = 2, ((), b"", "http", "", "1.1", None)
_RESPONSE_REQUIRED, _RESPONSE_DEFAULTS = 2, ("", (), b"", "1.1", None)
_FAILURE_REQUIRED, _FAILURE_DEFAULTS = 2, ("",)
_TIMING_REQUIRED, _TIMING_DEFAULTS = 0, (None, None, None)
_EXCHANGE_REQUIRED, _EXCHANGE_DEFAULTS = 4, (None, None, None, "", "", "", None, None)


def _complete(a: Any, required: int, defaults: tuple[Any, ...], what: str) -> Any:
    n = len(a)
    full = required + len(defaults)
    if n == full:
        return a
    if n < required:
        raise ValueError(f"{what} record has {n} fields, needs at least {required}")
    if n > full:
        # A newer writer appended fields this version does not know; they are ignored.
        return a[:full]
    return tuple(a) + defaults[n - required :]


def _headers_from_wire(raw: Any) -> Headers:
    # msgpack unpacked with use_list=False already gives tuples of tuples; lists come from tests
    # or other writers and are normalised here.
    if type(raw) is tuple and all(type(h) is tuple for h in raw):
        return raw
    return tuple((bytes(k), bytes(v)) for k, v in raw)


def _request_from_wire(a: Any) -> Request:
    a = _complete(a, _REQUEST_REQUIRED, _REQUEST_DEFAULTS, "request")
    return _build_request(a[0], a[1], _headers_from_wire(a[2]), a[3], a[4], a[5], a[6], a[7])


def _outcome_from_wire(a: Any) -> Outcome:
    tag = a[0]
    if tag == _TAG_RESPONSE:
        a = _complete(a[1:], _RESPONSE_REQUIRED - 1, _RESPONSE_DEFAULTS, "response")
        return _build_response(a[0], a[1], _headers_from_wire(a[2]), a[3], a[4], a[5])
    if tag == _TAG_FAILURE:
        a = _complete(a[1:], _FAILURE_REQUIRED - 1, _FAILURE_DEFAULTS, "failure")
        return _build_failure(a[0], a[1])
    raise ValueError(f"unknown outcome tag {tag!r}")


def _str_map(raw: Any) -> dict[str, str]:
    return {} if raw is None else raw if type(raw) is dict else dict(raw)


def exchange_from_wire(a: Any) -> Exchange:
    """Rebuild an Exchange from its msgpack array; a malformed array raises ``TapeFormatError``.

    Trailing fields may be missing (they take their defaults) and unknown trailing fields are
    ignored, so records stay readable across additions. The tape reader adds file and offset to the
    error.
    """
    try:
        if type(a) is str or type(a) is bytes:
            raise TypeError(f"an exchange record is an array, not {type(a).__name__}")
        a = _complete(a, _EXCHANGE_REQUIRED, _EXCHANGE_DEFAULTS, "exchange")
        primary, shadows, timings = a[4], a[5], a[6]
        return _build_exchange(
            a[0],
            a[1],
            _request_from_wire(a[3]),
            None if primary is None else _outcome_from_wire(primary),
            {} if not shadows else {name: _outcome_from_wire(o) for name, o in shadows.items()},
            {}
            if not timings
            else {
                name: _build_timing(*_complete(t, _TIMING_REQUIRED, _TIMING_DEFAULTS, "timing"))
                for name, t in timings.items()
            },
            a[2],
            a[7],
            a[8],
            a[9],
            _str_map(a[10]),
            _str_map(a[11]),
        )
    except (IndexError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TapeFormatError(f"malformed exchange record: {exc}") from exc
