"""What a gRPC response means to the differ: its status, its trailers, and its messages as field trees.

A gRPC answer is an HTTP 200 whose outcome is ``grpc-status`` (a trailer, or a header in a
trailers-only answer), with ``grpc-message`` beside it; its body is a run of length-prefixed
protobuf messages. Here the status pair becomes a comparable status (``OK->NOT_FOUND``), and the
body a tree (``shadowtap.differ.protobuf``): a unary call's one message (``body.price``), a
streaming call's array of messages (``body[*].price``). Bodies that are not valid gRPC framing or
protobuf become an ``invalid`` body carrying the reason, never an exception. This module must never
do I/O and never decide severity or noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from shadowtap.differ.normalize import Body, header_map
from shadowtap.differ.protobuf import MethodTypes, ProtobufDecodeError, ProtoSchema, decode_schemaless
from shadowtap.recorder.model import Headers, Request, Response, header_value
from shadowtap.wire.grpc import DEFAULT_MAX_MESSAGE_BYTES, GrpcFramingError, decompress_message, split_messages

__all__ = [
    "STATUS_FIELDS",
    "STATUS_NAMES",
    "grpc_body",
    "grpc_message",
    "grpc_status",
    "grpc_status_changes",
    "is_grpc",
    "lent_names",
    "metadata_maps",
    "request_body",
    "status_name",
    "trailer_map",
]

#: gRPC status codes by number (grpc/doc/statuscodes.md).
STATUS_NAMES: Final = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip
#: The fields compared as the status, so not again as trailers or headers.
STATUS_FIELDS: Final = frozenset({"grpc-status", "grpc-message"})
#: The status of a gRPC answer without ``grpc-status`` anywhere (a call cut short).
_MISSING_STATUS: Final = "missing"

# (path, kind, transition, volatile reason): a difference in the comparator's terms, built there.
Change = tuple[str, str, str, str | None]


def is_grpc(headers: Headers) -> bool:
    """Whether a message's ``content-type`` is gRPC's (``application/grpc``, ``application/grpc+proto``
    ...; gRPC-Web, framed differently, is not)."""
    raw = header_value(headers, b"content-type")
    if raw is None:
        return False
    media = raw.split(b";", 1)[0].strip().lower()
    return media == b"application/grpc" or media.startswith(b"application/grpc+")


def status_name(code: str) -> str:
    """``"5"`` -> ``"NOT_FOUND"``; an unknown code stays as it was sent."""
    return STATUS_NAMES[int(code)] if code.isdigit() and int(code) < len(STATUS_NAMES) else code


def grpc_message(raw: bytes) -> str:
    """A ``grpc-message`` as the text it stands for: percent-decoded, then UTF-8 (gRPC over HTTP/2:
    servers percent-encode what is not printable ASCII, and may encode more; ``caf%C3%A9`` and
    ``café`` are one message). Bytes that are not UTF-8 once decoded stay as they were sent."""
    text = raw.strip()
    decoded = unquote_to_bytes(text) if b"%" in text else text
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError:
        return text.decode("latin-1")


def grpc_status(response: Response) -> tuple[str, str]:
    """(status name, message) of a gRPC answer: from its trailers, else its headers (trailers-only);
    ``("missing", "")`` when it has neither (a call cut short). The message is percent-decoded
    (``grpc_message``)."""
    status, message = _raw_status(response)
    return status, grpc_message(message) if message else ""


def _raw_status(response: Response) -> tuple[str, bytes]:
    for fields in (response.trailers, response.headers):
        code = header_value(fields, b"grpc-status")
        if code is not None:
            return status_name(code.decode("latin-1").strip()), header_value(fields, b"grpc-message", b"") or b""
    return _MISSING_STATUS, b""


def grpc_status_changes(
    a: Response, b: Response, volatile: Callable[[str, str], str | None]
) -> tuple[list[Change], bool]:
    """The status differences of two gRPC answers, and whether the rest is moot: a change to or from
    OK is another kind of answer (as an HTTP status class change is), its fields would bury it.
    ``volatile`` explains a changed ``grpc-message`` (decoded, ``grpc_message``) as the comparator
    explains free text: a message that differs only by the ids or times it names is noise."""
    status_a, raw_a = _raw_status(a)
    status_b, raw_b = _raw_status(b)
    if status_a != status_b:
        return [("grpc-status", "status", f"{status_a}->{status_b}", None)], "OK" in (status_a, status_b)
    if raw_a != raw_b:  # the same bytes are the same message; other bytes may still be (encodings)
        message_a, message_b = grpc_message(raw_a), grpc_message(raw_b)
        if message_a != message_b:
            return [("grpc-message", "header", "changed", volatile(message_a, message_b))], False
    return [], False


def metadata_maps(a: Response, b: Response) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """The trailers of ``a`` and ``b`` by lower-case name (``trailer_map``), where an answer sent
    trailers-only (its status, and so its trailing metadata, in the headers) lends the other's
    trailer names from its headers: the same trailing metadata compared as trailers on both sides,
    whichever way each server framed its answer. ``split_headers`` takes them out of the headers."""
    ta, tb = trailer_map(a), trailer_map(b)
    if bool(a.trailers) == bool(b.trailers):
        return ta, tb
    if not a.trailers:
        return _lent(header_map(a.headers), tb), tb
    return ta, _lent(header_map(b.headers), ta)


def _lent(headers: dict[str, tuple[str, ...]], trailers: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    return {name: headers[name] for name in trailers if name in headers}


def lent_names(a: Response, b: Response) -> frozenset[str]:
    """The header names of a trailers-only answer compared as trailers (``metadata_maps``)."""
    if bool(a.trailers) == bool(b.trailers):
        return frozenset()
    full, only = (b, a) if not a.trailers else (a, b)
    trailers = trailer_map(full)
    return frozenset(name for name in header_map(only.headers) if name in trailers)


def trailer_map(response: Response) -> dict[str, tuple[str, ...]]:
    """The trailers by lower-case name, the status fields left out (compared as the status)."""
    return {k: v for k, v in header_map(response.trailers).items() if k not in STATUS_FIELDS}


def _tree(schema: ProtoSchema | None, types: MethodTypes | None, request: bool, data: bytes) -> dict[str, Any]:
    if schema is not None and types is not None:
        return schema.message_tree(types.request if request else types.response, data)
    return decode_schemaless(data)


def grpc_body(
    headers: Headers,
    body: bytes,
    truncated: bool,
    method: str,
    schema: ProtoSchema | None,
    request: bool = False,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Body:
    """A gRPC body (a response's, or with ``request`` a request's) as a ``json`` Body holding its
    tree, ``empty`` without messages, ``binary`` when cut at a recording cap, and ``invalid`` (with
    the reason as its value) when the framing, a compressed message or a protobuf does not decode.

    The tree is the one message of a unary call and the array of messages of a streaming one (as
    the schema says; without one, an array whenever there is more than one message).
    """
    if not body:
        return Body("empty", None, b"")
    if truncated:
        return Body("binary", None, body)
    types = None if schema is None else schema.method(method)
    try:
        messages = split_messages(body, max_message_bytes)
        encoding: str | None = None
        trees = []
        for message in messages:
            data = message.data
            if message.compressed:
                if encoding is None:
                    raw = header_value(headers, b"grpc-encoding", b"identity") or b"identity"
                    encoding = raw.decode("latin-1")
                data = decompress_message(data, encoding, max_message_bytes)
            trees.append(_tree(schema, types, request, data))
    except (GrpcFramingError, ProtobufDecodeError) as exc:
        return Body("invalid", f"invalid gRPC body: {exc}", body)
    if not trees:
        return Body("empty", None, body)
    streaming = types is not None and (types.client_streaming if request else types.server_streaming)
    if len(trees) == 1 and not streaming:
        return Body("json", trees[0], body)
    return Body("json", trees, body)


def request_body(request: Request, schema: ProtoSchema | None) -> Body:
    """A gRPC request's body as a tree (for reports)."""
    return grpc_body(
        request.headers, request.body, request.truncated_from is not None, request.path, schema, request=True
    )
