"""Turns a wire body into something a reviewer can read: decoded, classified, redacted and capped.

Example bodies are stored as they were on the wire (gzip, brotli, binary, huge). Every renderer shows
them through ``display_body`` so all reports agree on what a body "is". It must never raise on bad
input (a corrupt gzip body is shown as binary with a note), never decompress without a bound (bodies
are untrusted: a small bomb must not exhaust memory) and never do I/O.

gRPC bodies are shown as their protobuf messages' field trees: with the diff's schema (a descriptor
set or server reflection, given for one rendering with ``proto_schema``) the fields have their names,
as the differing paths have; without one they are numbered (``decode_schemaless``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from shadowtap.differ.grpc import grpc_body, grpc_status, is_grpc
from shadowtap.differ.normalize import BodyDecodeError, decode_codings
from shadowtap.differ.reports._common import MISSING, lookup_json, parse_body_path
from shadowtap.differ.reports.redact import redact_form, redact_header_value, redact_json, redact_multipart, redact_text
from shadowtap.recorder.model import Failure, Headers, Outcome, header_value, header_values

if TYPE_CHECKING:
    from shadowtap.differ.protobuf import ProtoSchema

__all__ = ["DECODE_LIMIT_BYTES", "DISPLAY_LIMIT_CHARS", "DisplayBody", "display_body", "proto_schema", "value_at"]

#: Decoded bodies beyond this are cut: a report shows examples, not archives, and a compression bomb
#: must stop here rather than in the OOM killer.
DECODE_LIMIT_BYTES: Final = 1 << 20
#: Characters of body text a report shows per example; keeps one HTML report loadable in a browser
#: even with hundreds of examples.
DISPLAY_LIMIT_CHARS: Final = 64 * 1024
#: JSON bodies up to this size are parsed (so examples are pretty-printed with paths highlighted);
#: larger ones are shown as capped text.
JSON_PARSE_LIMIT_CHARS: Final = 256 * 1024

BodyKind = Literal["empty", "json", "text", "binary"]


class _Schema:
    """A schema as a cache key: by identity (``ProtoSchema`` compares by value, so it is unhashable)."""

    __slots__ = ("schema",)

    def __init__(self, schema: ProtoSchema) -> None:
        self.schema = schema


#: The protobuf schema gRPC bodies are shown with while a report renders (``proto_schema``).
_SCHEMA: ContextVar[_Schema | None] = ContextVar("shadowtap_report_proto_schema", default=None)


@contextlib.contextmanager
def proto_schema(schema: ProtoSchema | None) -> Iterator[None]:
    """Show gRPC bodies decoded with ``schema`` (the one the diff used) while rendering inside;
    ``None``: schema-less, fields by number."""
    token = _SCHEMA.set(None if schema is None else _Schema(schema))
    try:
        yield
    finally:
        _SCHEMA.reset(token)


@dataclass(frozen=True, slots=True)
class DisplayBody:
    """A body ready to show.

    ``text`` is the redacted text (for ``json``: as sent, or re-serialised compactly when something
    was redacted; for ``binary``: a size/hash/hex summary);
    ``value`` the redacted parsed JSON (``json`` only); ``binary`` the decoded bytes, capped at
    ``DISPLAY_LIMIT_CHARS`` (``binary`` only). ``wire_bytes`` is the size as recorded,
    ``decoded_from`` the content-codings removed, ``omitted_chars`` how much ``text`` was cut,
    ``note`` anything the reviewer should know (decode failure, truncation at recording).
    """

    kind: BodyKind
    text: str
    value: Any
    binary: bytes
    wire_bytes: int
    sha256: str
    decoded_from: str | None
    omitted_chars: int
    redacted: bool
    note: str | None


def _decode(headers: Headers, body: bytes) -> tuple[bytes, str | None]:
    raw = header_value(headers, b"content-encoding")
    if raw is None:
        return body, None
    codings = [c.strip().lower() for c in raw.decode("latin-1").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings or not body:
        return body, None
    return decode_codings(body, codings, DECODE_LIMIT_BYTES), ", ".join(codings)


def _content_type(headers: Headers) -> str:
    raw = header_value(headers, b"content-type", b"") or b""
    return raw.decode("latin-1").split(";", 1)[0].strip().lower()


def _looks_like_json(content_type: str, data: bytes) -> bool:
    if content_type.endswith(("/json", "+json")):
        return True
    head = data.lstrip()[:1]
    return head in (b"{", b"[")


def _cap(text: str) -> tuple[str, int]:
    if len(text) <= DISPLAY_LIMIT_CHARS:
        return text, 0
    return text[:DISPLAY_LIMIT_CHARS], len(text) - DISPLAY_LIMIT_CHARS


def _is_texty(text: str) -> bool:
    # Control characters other than whitespace mean "binary that happens to be valid UTF-8".
    sample = text[:4096]
    bad = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\t\n\r\f")
    return bad <= len(sample) // 100


def display_body(
    headers: Headers, body: bytes, truncated_from: int | None = None, method: str = "", request: bool = False
) -> DisplayBody:
    """How ``body`` (with its message's ``headers``) is shown in every report. The result is shared: read only.

    ``method`` is the request's path and ``request`` says whose body it is: with a schema
    (``proto_schema``) a gRPC body is decoded as that method's request or response message."""
    schema = _SCHEMA.get()
    if schema is None or not is_grpc(headers):
        method, request = "", False  # one cache entry whatever the caller knew
    return _display_body(headers, body, truncated_from, method, request, schema)


# Rendering one example asks for the same body several times (the body itself, then each differing
# path's value), and signatures of one endpoint often sample the same exchange; a few recent bodies
# are enough to decode and parse each only once. Small, because an entry can hold a 64 K-char text.
@functools.lru_cache(maxsize=32)
def _display_body(
    headers: Headers, body: bytes, truncated_from: int | None, method: str, request: bool, keyed: _Schema | None
) -> DisplayBody:
    digest = hashlib.sha256(body).hexdigest()
    notes: list[str] = []
    if truncated_from is not None:
        notes.append(f"recorded body was cut at {len(body)} of {truncated_from} bytes")
    try:
        data, decoded_from = _decode(headers, body)
    except BodyDecodeError as exc:
        notes.append(str(exc))
        data, decoded_from = body, None
    note = "; ".join(notes) or None
    if not data:
        return DisplayBody("empty", "", None, b"", len(body), digest, decoded_from, 0, False, note)
    content_type = _content_type(headers)
    if is_grpc(headers) and truncated_from is None:
        # Protobuf messages shown as their field trees: named with the schema, else numbered.
        schema = None if keyed is None else keyed.schema
        tree = grpc_body(headers, data, False, method, schema, request=request)
        if tree.kind == "invalid" and schema is not None:
            # Not the schema's message (a method it does not know, another version): by number.
            tree = grpc_body(headers, data, False, "", None)
        if tree.kind == "json":
            value, redacted = redact_json(tree.value)
            shown_text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            return DisplayBody("json", shown_text, value, b"", len(body), digest, decoded_from, 0, redacted, note)
        if tree.kind == "invalid":
            notes.append(str(tree.value))
            note = "; ".join(notes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and _looks_like_json(content_type, data) and len(text) <= JSON_PARSE_LIMIT_CHARS:
        try:
            # The redaction walk (and later the HTML renderer) recurse per level: a document nested
            # near the interpreter's limit is shown as text rather than crashing the report.
            value, redacted = redact_json(json.loads(text), text)
        except (ValueError, RecursionError):
            pass  # invalid JSON is shown as text, as the engine compares it
        else:
            shown_text = json.dumps(value, ensure_ascii=False, separators=(",", ":")) if redacted else text
            return DisplayBody("json", shown_text, value, b"", len(body), digest, decoded_from, 0, redacted, note)
    if text is not None and _is_texty(text):
        # Cut first, then redact: the redaction regexes then never scan more than what is shown.
        shown, omitted = _cap(text)
        if content_type == "application/x-www-form-urlencoded":
            redacted_text = redact_form(shown)
        elif content_type == "multipart/form-data":
            redacted_text = redact_multipart(shown)
        else:
            redacted_text = redact_text(shown)
        return DisplayBody(
            "text", redacted_text, None, b"", len(body), digest, decoded_from, omitted, redacted_text != shown, note
        )
    preview = data[:64].hex(" ")
    summary = f"binary, {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}...\n{preview}"
    if len(data) > 64:
        summary += " ..."
    kept = data[:DISPLAY_LIMIT_CHARS]
    return DisplayBody(
        "binary", summary, None, kept, len(body), digest, decoded_from, len(data) - len(kept), False, note
    )


def _shorten(text: str, limit_chars: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit_chars else flat[: limit_chars - 3] + "..."


def value_at(outcome: Outcome | None, path: str, limit_chars: int = 80, method: str = "") -> str:
    """A short, redacted rendering of what ``outcome`` holds at ``path`` (for one-line snippets);
    ``method`` is the request's path (a gRPC answer is decoded by its method with a schema)."""
    if outcome is None:
        return "(no response)"
    if isinstance(outcome, Failure):
        return _shorten(f"failure {outcome.kind}: {outcome.message}".rstrip(": "), limit_chars)
    if path == "status":
        return str(outcome.status)
    if path.startswith("header."):
        name = path.removeprefix("header.").encode("latin-1", "replace")
        values = [redact_header_value(name, v).decode("latin-1") for v in header_values(outcome.headers, name)]
        return _shorten(", ".join(values), limit_chars) if values else "(absent)"
    if path in ("grpc-status", "grpc-message"):
        status, message = grpc_status(outcome)
        return _shorten(status if path == "grpc-status" else message or "(empty)", limit_chars)
    if path.startswith("trailer."):
        name = path.removeprefix("trailer.").encode("latin-1", "replace")
        values = [redact_header_value(name, v).decode("latin-1") for v in header_values(outcome.trailers, name)]
        return _shorten(", ".join(values), limit_chars) if values else "(absent)"
    tokens = parse_body_path(path)
    if tokens is None:
        return f"HTTP {outcome.status}"
    shown = display_body(outcome.headers, outcome.body, outcome.truncated_from, method)
    if shown.kind == "json" and tokens:
        found = lookup_json(shown.value, tokens)
        if found is MISSING:
            named = any(isinstance(t, str) and t != "*" and not t.isdigit() for t in tokens)
            if named and is_grpc(outcome.headers) and (_SCHEMA.get() is None or not method):
                # Reports read protobuf schema-less (fields by number): a path named by the diff's
                # schema cannot be looked up here, which is not the same as absent.
                return "(a field named by the schema: see the body, fields by number)"
            return "(absent)"
        try:
            return _shorten(json.dumps(found, ensure_ascii=False), limit_chars)
        except RecursionError:
            return "(nested too deep to show)"
    if shown.kind == "empty":
        return "(empty)"
    return _shorten(shown.text, limit_chars)
