"""Decoding exchange records: a msgpack record array into the model's objects, every value checked.

The hot half of ``shadowtap.recorder.model``'s msgpack mapping (the layout and the error that names a
wrong field stay there; ``exchange_from_wire`` is re-exported from it), kept apart so that it can run
compiled (``shadowtap.wire.native``): every reader of a tape (``tape cat``, ``replay``, ``diff``)
decodes each exchange through it. It must never return an object whose values have the wrong types
and never do I/O; it imports the model and the model imports it (last, once its classes exist), so
nothing else may import this module first.

Decoding checks every value's type as it builds the objects (``type(x) is str``: exact types, so a
msgpack ``true`` is not a status and ``1.0`` is not a time) and raises a bare TypeError at the first
that is wrong; only then does ``exchange_from_wire`` walk the record again (the model's ``_locate``)
to name the field. One pass, no second walk of good records.

The objects are built by storing straight into their slots (``object.__new__``, then each field's
slot descriptor): a frozen dataclass's ``__init__`` sets every field through ``object.__setattr__``,
several times the cost, and there is no ``__post_init__`` to skip. So these builders are only for
values laid out by the wire format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any, Final

from shadowtap.recorder.model import (
    _DELTA_DEFAULTS,
    _DELTA_FIELDS,
    _DELTA_REQUIRED,
    _EXCHANGE_DEFAULTS,
    _EXCHANGE_FIELDS,
    _EXCHANGE_REQUIRED,
    _FAILURE_DEFAULTS,
    _FAILURE_REQUIRED,
    _INT64_MAX,
    _MESSAGE_DEFAULTS,
    _MESSAGE_FIELDS,
    _MESSAGE_REQUIRED,
    _REQUEST_DEFAULTS,
    _REQUEST_FIELDS,
    _REQUEST_REQUIRED,
    _RESPONSE_DEFAULTS,
    _RESPONSE_FIELDS,
    _RESPONSE_REQUIRED,
    _TAG_FAILURE,
    _TAG_RESPONSE,
    _TIMING_DEFAULTS,
    _TIMING_FIELDS,
    _TIMING_REQUIRED,
    Exchange,
    Failure,
    Headers,
    Outcome,
    Request,
    RequestDelta,
    Response,
    StreamMessage,
    Timing,
)

__all__ = ["build_response", "build_timing", "exchange_from_wire"]

_Set = Callable[[object, object], None]


def _slot_setters(cls: type) -> tuple[_Set, ...]:
    """Each field's slot store of the slotted dataclass ``cls``, in declaration order."""
    return tuple(cls.__dict__[f.name].__set__ for f in fields(cls))


_new: Final = object.__new__
_REQUEST: Final = _slot_setters(Request)
_RESPONSE: Final = _slot_setters(Response)
_MESSAGE: Final = _slot_setters(StreamMessage)
_FAILURE: Final = _slot_setters(Failure)
_TIMING: Final = _slot_setters(Timing)
_DELTA: Final = _slot_setters(RequestDelta)
_EXCHANGE: Final = _slot_setters(Exchange)


def _build_request(
    method: Any,
    target: Any,
    headers: Any,
    body: Any,
    scheme: Any,
    authority: Any,
    http_version: Any,
    truncated_from: Any,
    trailers: Any,
    messages: Any,
) -> Request:
    obj: Request = _new(Request)
    store = _REQUEST
    store[0](obj, method)
    store[1](obj, target)
    store[2](obj, headers)
    store[3](obj, body)
    store[4](obj, scheme)
    store[5](obj, authority)
    store[6](obj, http_version)
    store[7](obj, truncated_from)
    store[8](obj, trailers)
    store[9](obj, messages)
    return obj


def build_response(
    status: Any,
    reason: Any,
    headers: Any,
    body: Any,
    http_version: Any,
    truncated_from: Any,
    trailers: Any = (),
    messages: Any = (),
) -> Response:
    obj: Response = _new(Response)
    store = _RESPONSE
    store[0](obj, status)
    store[1](obj, reason)
    store[2](obj, headers)
    store[3](obj, body)
    store[4](obj, http_version)
    store[5](obj, truncated_from)
    store[6](obj, trailers)
    store[7](obj, messages)
    return obj


def _build_stream_message(flags: Any, length: Any, at_ns: Any) -> StreamMessage:
    obj: StreamMessage = _new(StreamMessage)
    store = _MESSAGE
    store[0](obj, flags)
    store[1](obj, length)
    store[2](obj, at_ns)
    return obj


def _build_failure(kind: Any, message: Any) -> Failure:
    obj: Failure = _new(Failure)
    store = _FAILURE
    store[0](obj, kind)
    store[1](obj, message)
    return obj


def build_timing(sent_ns: Any, first_byte_ns: Any, done_ns: Any) -> Timing:
    obj: Timing = _new(Timing)
    store = _TIMING
    store[0](obj, sent_ns)
    store[1](obj, first_byte_ns)
    store[2](obj, done_ns)
    return obj


def _build_delta(removed: Any, added: Any, replaced: Any, authority: Any, query: Any) -> RequestDelta:
    obj: RequestDelta = _new(RequestDelta)
    store = _DELTA
    store[0](obj, removed)
    store[1](obj, added)
    store[2](obj, replaced)
    store[3](obj, authority)
    store[4](obj, query)
    return obj


def _build_exchange(
    exchange_id: Any,
    started_at_ns: Any,
    request: Any,
    primary: Any,
    shadows: Any,
    timings: Any,
    started_mono_ns: Any,
    session: Any,
    connection_id: Any,
    client_addr: Any,
    decisions: Any,
    tags: Any,
    request_deltas: Any,
) -> Exchange:
    obj: Exchange = _new(Exchange)
    store = _EXCHANGE
    store[0](obj, exchange_id)
    store[1](obj, started_at_ns)
    store[2](obj, request)
    store[3](obj, primary)
    store[4](obj, shadows)
    store[5](obj, timings)
    store[6](obj, started_mono_ns)
    store[7](obj, session)
    store[8](obj, connection_id)
    store[9](obj, client_addr)
    store[10](obj, decisions)
    store[11](obj, tags)
    store[12](obj, request_deltas)
    return obj


def _complete(a: Any, required: int, defaults: tuple[Any, ...]) -> Any:
    """``a`` with its missing trailing fields at their defaults and unknown ones dropped."""
    if type(a) is not tuple and type(a) is not list:
        raise TypeError
    n = len(a)
    full = required + len(defaults)
    if n == full:
        return a
    if n < required:
        raise TypeError
    if n > full:
        # A newer writer appended fields this version does not know; they are ignored.
        return a[:full]
    return tuple(a) + defaults[n - required :]


def _headers_from_wire(raw: Any) -> Headers:
    if type(raw) is tuple:
        # As msgpack unpacks them with use_list=False: kept as they are once checked.
        for h in raw:
            if type(h) is not tuple:
                return _header_lists(raw)
            k, v = h
            if type(k) is not bytes or type(v) is not bytes:
                raise TypeError
        return raw
    return _header_lists(raw)


def _header_lists(raw: Any) -> Headers:
    # Lists come from tests, in-memory records and other writers: normalised to tuples.
    if type(raw) is not tuple and type(raw) is not list:
        raise TypeError
    out = []
    for h in raw:
        if type(h) is not tuple and type(h) is not list:
            raise TypeError
        k, v = h
        if type(k) is not bytes or type(v) is not bytes:
            raise TypeError
        out.append((k, v))
    return tuple(out)


def _request_from_wire(a: Any) -> Request:
    if type(a) is not tuple or len(a) != _REQUEST_FIELDS:
        a = _complete(a, _REQUEST_REQUIRED, _REQUEST_DEFAULTS)
    method, target, headers, body, scheme, authority, http_version, truncated_from, trailers, messages = a
    if (
        type(method) is not str
        or type(target) is not str
        or type(body) is not bytes
        or type(scheme) is not str
        or type(authority) is not str
        or type(http_version) is not str
        or (truncated_from is not None and type(truncated_from) is not int)
    ):
        raise TypeError
    return _build_request(
        method, target, _headers_from_wire(headers), body, scheme, authority, http_version, truncated_from,
        trailers if trailers == () else _headers_from_wire(trailers),
        messages if messages == () else _messages_from_wire(messages),
    )  # fmt: skip


def _messages_from_wire(raw: Any) -> tuple[StreamMessage, ...]:
    if type(raw) is not tuple and type(raw) is not list:
        raise TypeError
    out = []
    for m in raw:
        if type(m) is not tuple or len(m) != _MESSAGE_FIELDS:
            m = _complete(m, _MESSAGE_REQUIRED, _MESSAGE_DEFAULTS)
        flags, length, at_ns = m
        if type(flags) is not int or type(length) is not int or (at_ns is not None and type(at_ns) is not int):
            raise TypeError
        out.append(_build_stream_message(flags, length, at_ns))
    return tuple(out)


def _outcome_from_wire(a: Any) -> Outcome:
    if type(a) is not tuple and type(a) is not list or not a:
        raise TypeError
    tag = a[0]
    if type(tag) is not int:
        raise TypeError
    if tag == _TAG_RESPONSE:
        if len(a) == _RESPONSE_FIELDS:
            _tag, status, reason, headers, body, http_version, truncated_from, trailers, messages = a
        else:
            status, reason, headers, body, http_version, truncated_from, trailers, messages = _complete(
                a[1:], _RESPONSE_REQUIRED - 1, _RESPONSE_DEFAULTS
            )
        if (
            type(status) is not int
            or type(reason) is not str
            or type(body) is not bytes
            or type(http_version) is not str
            or (truncated_from is not None and type(truncated_from) is not int)
        ):
            raise TypeError
        return build_response(
            status, reason, _headers_from_wire(headers), body, http_version, truncated_from,
            trailers if trailers == () else _headers_from_wire(trailers),
            messages if messages == () else _messages_from_wire(messages),
        )  # fmt: skip
    if tag == _TAG_FAILURE:
        kind, message = _complete(a[1:], _FAILURE_REQUIRED - 1, _FAILURE_DEFAULTS)
        if type(kind) is not str or type(message) is not str:
            raise TypeError
        return _build_failure(kind, message)
    raise TypeError


def _timing_from_wire(a: Any) -> Timing:
    if type(a) is not tuple or len(a) != _TIMING_FIELDS:
        a = _complete(a, _TIMING_REQUIRED, _TIMING_DEFAULTS)
    sent_ns, first_byte_ns, done_ns = a
    if (
        (sent_ns is not None and type(sent_ns) is not int)
        or (first_byte_ns is not None and type(first_byte_ns) is not int)
        or (done_ns is not None and type(done_ns) is not int)
    ):
        raise TypeError
    return build_timing(sent_ns, first_byte_ns, done_ns)


def _names_lists(raw: Any) -> tuple[bytes, ...]:
    # Lists come from in-memory records and other writers: normalised to a tuple.
    if type(raw) is not list:
        raise TypeError
    for name in raw:
        if type(name) is not bytes:
            raise TypeError
    return tuple(raw)


def _query_lists(raw: Any) -> tuple[tuple[str, str | None], ...]:
    if type(raw) is not tuple and type(raw) is not list:
        raise TypeError
    out = []
    for pair in raw:
        if (type(pair) is not tuple and type(pair) is not list) or len(pair) != 2:
            raise TypeError
        name, value = pair
        if type(name) is not str or (value is not None and type(value) is not str):
            raise TypeError
        out.append((name, value))
    return tuple(out)


def _delta_from_wire(a: Any) -> RequestDelta:
    # Inline checks for what msgpack gives (tuples, mostly empty): one delta per shadow per exchange
    # read, so each call saved here is read rate on proxy tapes.
    if type(a) is not tuple or len(a) != _DELTA_FIELDS:
        a = _complete(a, _DELTA_REQUIRED, _DELTA_DEFAULTS)
    removed, added, replaced, authority, query = a
    if type(removed) is tuple:
        for name in removed:
            if type(name) is not bytes:
                raise TypeError
    else:
        removed = _names_lists(removed)
    if authority is not None:
        if (type(authority) is not tuple and type(authority) is not list) or len(authority) != 2:
            raise TypeError
        primary_host, copy_host = authority
        if type(primary_host) is not str or type(copy_host) is not str:
            raise TypeError
        if type(authority) is not tuple:
            authority = (primary_host, copy_host)
    if query != ():
        query = _query_lists(query)
    return _build_delta(
        removed,
        added if added == () else _headers_from_wire(added),
        replaced if replaced == () else _headers_from_wire(replaced),
        authority,
        query,
    )


def _str_map(raw: Any) -> dict[str, str]:
    if type(raw) is dict:
        for k, v in raw.items():
            if type(k) is not str or type(v) is not str:
                raise TypeError
        return raw
    if raw is None:
        return {}
    raise TypeError


def exchange_from_wire(a: Any) -> Exchange:
    """Rebuild an Exchange from its msgpack array; a malformed array raises ``TapeFormatError``.

    Every value must have the type docs/tape-format.md gives it; the error's ``field`` names the
    first that does not (``request.headers[2][1]``, ``shadows['v2'].status``). Trailing fields may
    be missing (they take their defaults) and unknown trailing fields are ignored, so records stay
    readable across additions. The tape reader adds file and offset to the error.
    """
    try:
        if type(a) is not tuple or len(a) != _EXCHANGE_FIELDS:
            a = _complete(a, _EXCHANGE_REQUIRED, _EXCHANGE_DEFAULTS)
        (
            exchange_id, started_at_ns, started_mono_ns, request, primary, shadows, timings, session,
            connection_id, client_addr, decisions, tags, deltas,
        ) = a  # fmt: skip
        if (
            type(exchange_id) is not str
            or type(started_at_ns) is not int
            or started_at_ns > _INT64_MAX
            or type(started_mono_ns) is not int
            or type(session) is not str
            or type(connection_id) is not str
            or type(client_addr) is not str
        ):
            raise TypeError
        shadow_outcomes: dict[str, Outcome] = {}
        if type(shadows) is dict:
            for name, outcome in shadows.items():
                if type(name) is not str:
                    raise TypeError
                shadow_outcomes[name] = _outcome_from_wire(outcome)
        elif shadows is not None:
            raise TypeError
        timing_map: dict[str, Timing] = {}
        if type(timings) is dict:
            for name, timing in timings.items():
                if type(name) is not str:
                    raise TypeError
                timing_map[name] = _timing_from_wire(timing)
        elif timings is not None:
            raise TypeError
        delta_map: dict[str, RequestDelta] = {}
        if deltas is not None:
            if type(deltas) is not dict:
                raise TypeError
            for name, delta in deltas.items():
                if type(name) is not str:
                    raise TypeError
                delta_map[name] = _delta_from_wire(delta)
        return _build_exchange(
            exchange_id,
            started_at_ns,
            _request_from_wire(request),
            None if primary is None else _outcome_from_wire(primary),
            shadow_outcomes,
            timing_map,
            started_mono_ns,
            session,
            connection_id,
            client_addr,
            _str_map(decisions),
            _str_map(tags),
            delta_map,
        )
    except (TypeError, ValueError):  # ValueError: an array of the wrong length, unpacked
        pass
    # Out of the except block, so the error does not chain the bare TypeError of the fast path.
    from shadowtap.recorder.model import _malformed  # the cold path: naming the field

    raise _malformed(a)
