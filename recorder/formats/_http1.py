"""Raw HTTP/1.x message bytes <-> the model's Request/Response, for the GoReplay format.

It parses one complete message that is already in memory (a GoReplay payload) and serialises one
back; it must never read files or sockets, and never decode a content-encoding: bodies stay as on
the wire except for the chunked transfer framing, which is removed (and re-added on the way out)
so every importer hands the differ the same kind of body.

The framing rules (which coding is chunked, the chunked coding itself, head serialisation) are
``shadowtap.wire.http1``'s, the ones the proxy and the replayer use. The head is split here rather
than by llhttp: a capture holds messages llhttp refuses and an importer must keep (cut bodies,
bare LF line ends, methods llhttp does not know), each with a note saying what was odd.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from shadowtap.recorder.formats._common import text_to_wire
from shadowtap.recorder.model import Headers, Request, Response, header_value, header_values
from shadowtap.wire import http1

__all__ = ["HttpParseError", "ParsedBody", "parse_request", "parse_response", "request_bytes", "response_bytes"]

_CRLF: Final = b"\r\n"


class HttpParseError(ValueError):
    """A payload is not an HTTP/1.x message; ``offset`` is relative to the payload start."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class ParsedBody(NamedTuple):
    """A body after framing: ``body``, the declared size when it was cut short, and notes."""

    body: bytes
    truncated_from: int | None
    note: str


def _split_head(payload: bytes) -> tuple[bytes, bytes, int]:
    end = payload.find(b"\r\n\r\n")
    if end >= 0:
        return payload[:end], payload[end + 4 :], end + 4
    end = payload.find(b"\n\n")
    if end >= 0:
        return payload[:end], payload[end + 2 :], end + 2
    raise HttpParseError("HTTP head has no blank line after the headers (cut or not HTTP)", len(payload))


class _Head(NamedTuple):
    """Headers, plus the two that decide body framing, found in the same pass."""

    headers: Headers
    transfer_encoding: bytes | None
    content_length: bytes | None


def _parse_headers(lines: list[bytes], first_offset: int) -> _Head:
    headers: list[tuple[bytes, bytes]] = []
    transfer_encoding: bytes | None = None
    content_length: bytes | None = None
    offset = first_offset
    for line in lines:
        first = line[:1]
        if (first == b" " or first == b"\t") and headers:
            # obs-fold (RFC 9112 5.2): a continuation joins the previous value with one space.
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip())
        else:
            name, colon, value = line.partition(b":")
            if not colon or not name or name[-1:] in (b" ", b"\t") or first in (b" ", b"\t"):
                raise HttpParseError(f"malformed header line {line[:60]!r}", offset)
            value = value.strip(b" \t")
            headers.append((name, value))
            # Only two names matter for framing; comparing lengths first skips most lower() calls.
            size = len(name)
            if size == 17 and name.lower() == b"transfer-encoding":
                transfer_encoding = value if transfer_encoding is None else transfer_encoding + b"," + value
            elif size == 14 and content_length is None and name.lower() == b"content-length":
                content_length = value
        offset += len(line) + 2
    return _Head(tuple(headers), transfer_encoding, content_length)


def _lines(head: bytes) -> list[bytes]:
    return [line.rstrip(b"\r") for line in head.split(b"\n")]


def _is_chunked(headers: Headers) -> bool:
    codings = header_values(headers, b"transfer-encoding")
    return http1.chunked_last(b",".join(codings)) if codings else False


def _frame_body(head: _Head, rest: bytes) -> ParsedBody:
    if http1.chunked_last(head.transfer_encoding):
        body, complete = http1.dechunk(rest)
        return ParsedBody(body, None, "" if complete else "chunked-incomplete")
    length = head.content_length
    if length is not None:
        try:
            declared = int(length.split(b",")[0].strip())
        except ValueError:
            return ParsedBody(rest, None, "bad-content-length")
        if len(rest) < declared:
            return ParsedBody(rest, declared, "cut")
        return ParsedBody(rest[:declared], None, "extra-bytes" if len(rest) > declared else "")
    return ParsedBody(rest, None, "")


def parse_request(payload: bytes) -> tuple[Request, str]:
    """A Request from one raw HTTP/1.x request, and a framing note (``""`` when clean)."""
    head, rest, _ = _split_head(payload)
    lines = _lines(head)
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/") or not parts[0].isalpha():
        raise HttpParseError(f"malformed request line {lines[0][:80]!r}", 0)
    try:
        method, target, version = (p.decode("ascii") for p in parts)
    except UnicodeDecodeError as exc:
        raise HttpParseError("request line is not ASCII", exc.start) from exc
    head_fields = _parse_headers(lines[1:], len(lines[0]) + 2)
    headers = head_fields.headers
    framed = _frame_body(head_fields, rest)
    scheme = "http"
    authority = (header_value(headers, b"host") or b"").decode("latin-1")
    if "://" in target:
        # absolute-form (a forward proxy's input): keep origin-form in ``target`` as the model wants.
        scheme, _, after = target.partition("://")
        authority, slash, path = after.partition("/")
        target = slash + path or "/"
    return (
        Request(
            method=method,
            target=target,
            headers=headers,
            body=framed.body,
            scheme=scheme,
            authority=authority,
            http_version=version[5:],
            truncated_from=framed.truncated_from,
        ),
        framed.note,
    )


def parse_response(payload: bytes, *, request_method: str = "GET") -> tuple[Response, str]:
    """A Response from one raw HTTP/1.x response, and a framing note (``""`` when clean)."""
    head, rest, _ = _split_head(payload)
    lines = _lines(head)
    version, _, after = lines[0].partition(b" ")
    status_text, _, reason = after.partition(b" ")
    if not version.startswith(b"HTTP/") or len(status_text) != 3 or not status_text.isdigit():
        raise HttpParseError(f"malformed status line {lines[0][:80]!r}", 0)
    head_fields = _parse_headers(lines[1:], len(lines[0]) + 2)
    headers = head_fields.headers
    status = int(status_text)
    no_body = request_method == "HEAD" or status in (204, 304) or 100 <= status < 200
    # A bodiless response may still declare a Content-Length: that is not a cut body.
    framed = ParsedBody(b"", None, "") if no_body and not rest else _frame_body(head_fields, rest)
    return (
        Response(
            status=status,
            reason=reason.decode("latin-1"),
            headers=headers,
            body=framed.body,
            http_version=version[5:].decode("ascii", "replace"),
            truncated_from=framed.truncated_from,
        ),
        framed.note,
    )


def _body_for_wire(headers: Headers, body: bytes, *, add_length: bool) -> tuple[Headers, bytes]:
    if _is_chunked(headers):
        framed = (b"".join(http1.chunk(body)) if body else b"") + http1.CHUNKED_END
        return headers, framed
    if add_length and body and header_value(headers, b"content-length") is None:
        return (*headers, (b"Content-Length", str(len(body)).encode("ascii"))), body
    return headers, body


def _wire_version(version: str) -> bytes:
    # GoReplay speaks HTTP/1.x only: an HTTP/2 or /3 exchange is written as the HTTP/1.1 equivalent.
    return b"HTTP/1.1" if version.startswith(("2", "3")) or not version else b"HTTP/" + text_to_wire(version)


def request_bytes(request: Request) -> bytes:
    """The request as HTTP/1.x bytes; chunked bodies are re-framed, a Host header added if absent."""
    headers = request.headers
    if header_value(headers, b"host") is None and request.authority:
        headers = (
            (b"Host", text_to_wire(request.authority)),
            *headers,
        )
    headers, body = _body_for_wire(headers, request.body, add_length=True)
    head = http1.request_head(
        text_to_wire(request.method), text_to_wire(request.target), headers, version=_wire_version(request.http_version)
    )
    return head + body


def response_bytes(response: Response) -> bytes:
    """The response as HTTP/1.x bytes; chunked bodies are re-framed."""
    headers, body = _body_for_wire(response.headers, response.body, add_length=True)
    line = b"%s %d %s\r\n" % (
        _wire_version(response.http_version),
        response.status,
        response.reason.encode("latin-1", "replace"),
    )
    parts = [line]
    http1.add_fields(parts, headers)
    parts += (_CRLF, body)
    return b"".join(parts)
