"""HAR 1.2 files: stream them into Exchanges, and write Exchanges as HAR that DevTools and mitmproxy load.

Reading never loads the whole file: ``log.entries`` is walked one entry at a time with
``json.JSONDecoder.raw_decode`` over a sliding text buffer, so memory is bounded by the largest single
entry (``max_entry_bytes``) plus one read chunk. Errors name the file, the byte offset and a JSON
pointer such as ``log.entries[12].request.headers``. This module must never guess silently: anything
that cannot be carried over is counted in the report or recorded in the exchange's ``tags``.

HAR stores bodies decoded (``content.text`` is after the Content-Encoding was undone), while the model
keeps wire bytes. On import the body is the decoded content, so ``Content-Encoding`` is dropped,
``Content-Length`` (when present) is set to the decoded length, and tag ``har.decoded`` names the
coding that was undone. On export the wire body is decoded for ``content.text`` and the headers are
kept as they were on the wire, as browsers do.

Browsers write what HAR 1.2 does not say: a request that got no response (aborted, blocked, refused)
has status -1 (Playwright) or 0 (DevTools, Firefox) with the reason in ``_failureText`` or ``_error``;
it becomes a ``Failure`` whose kind is read from the browser's error name. Playwright's "attach" mode
keeps bodies in files beside the HAR (``_file``), which are read from that folder only.
"""

from __future__ import annotations

import base64
import codecs
import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Final
from urllib.parse import parse_qsl, quote_plus, urlsplit

from shadowtap.recorder.errors import InputFormatError
from shadowtap.recorder.formats._common import (
    FAILURE_KINDS,
    ExportReport,
    GunzipStream,
    ImportReport,
    grpc_messages,
    http_version_from_wire,
    open_input,
    replace_header,
    text_to_wire,
    writing,
)
from shadowtap.recorder.model import (
    Exchange,
    Failure,
    FailureKind,
    Headers,
    Outcome,
    Request,
    Response,
    Timing,
    header_value,
)
from shadowtap.recorder.private import open_private

__all__ = ["HarReader", "browser_failure_kind", "decode_content", "write_har"]

#: Text read per refill. Large enough to make syscalls rare, small next to the entry bound.
_CHUNK_BYTES: Final = 1 << 20
#: One entry (with its bodies, base64 included) may be at most this large; the buffer never grows past it.
DEFAULT_MAX_ENTRY_BYTES: Final = 256 << 20
_WHITESPACE: Final = " \t\r\n"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NS_PER_MS: Final = 1_000_000
_CONTENT_CODING_HEADERS: Final = frozenset({b"content-encoding"})
#: The statuses browsers write for "no response": -1 (Playwright) and 0 (DevTools, Firefox).
_NO_RESPONSE_STATUSES: Final = frozenset({-1, 0})
#: Responses that have no body whatever their headers say.
_BODILESS_STATUSES: Final = frozenset({204, 304})
_WEBSOCKET_SCHEMES: Final = {"ws": "http", "wss": "https"}
_HTTP_SCHEMES: Final = frozenset({"http", "https", *_WEBSOCKET_SCHEMES})
#: A URL's scheme; "host:8080/..." (a port, no scheme) does not match, and stays a malformed URL.
_URL_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(?!\d)")
#: Where shadowtap's HAR export keeps a failure's kind, so it survives a round trip.
_FAILURE_KIND_FIELD: Final = "_shadowtapFailureKind"
#: Trailer fields of a request or response (HTTP/2, gRPC's grpc-status): HAR 1.2 has no place for
#: them, so a custom field (HAR's leading underscore) beside ``headers``, in the same form.
_TRAILERS_FIELD: Final = "_trailers"
#: Browser error names (Chromium's net::ERR_*, Firefox's NS_*) by the failure they mean. Checked in
#: order; the first family with a matching word wins, so "CONNECTION_TIMED_OUT" is a timeout.
_BROWSER_ERROR_KINDS: Final = (
    (FailureKind.TIMEOUT, ("TIMED_OUT", "TIMEOUT")),
    (
        FailureKind.CONNECT_ERROR,
        (
            "REFUSED",
            "NAME_NOT_RESOLVED",
            "NAME_RESOLUTION_FAILED",
            "UNKNOWN_HOST",
            "UNREACHABLE",
            "CONNECTION_FAILED",
            "INTERNET_DISCONNECTED",
            "ADDRESS_INVALID",
            "ERR_CERT_",
            "ERR_SSL_",
        ),
    ),
    (FailureKind.RESET, ("RESET", "CONNECTION_CLOSED", "CONNECTION_ABORTED", "EMPTY_RESPONSE", "NET_INTERRUPT")),
    (
        FailureKind.BAD_RESPONSE,
        (
            "INVALID_HTTP_RESPONSE",
            "INVALID_CHUNKED_ENCODING",
            "INCOMPLETE_CHUNKED_ENCODING",
            "CONTENT_LENGTH_MISMATCH",
            "RESPONSE_HEADERS",
            "CONTENT_DECODING_FAILED",
        ),
    ),
    # The page (or an extension, a policy, Playwright's route.abort) stopped the request itself.
    (FailureKind.ABORTED, ("ABORTED", "BLOCKED", "ERR_FAILED", "NS_ERROR_ABORT")),
)


def browser_failure_kind(error: str) -> str:
    """The ``FailureKind`` of a browser's error name: ``net::ERR_ABORTED`` -> ``aborted``, ...

    No name at all (Firefox writes none; DevTools none for a request still pending) is ``aborted``:
    the browser recorded a request and no response, and nothing says the server failed.
    """
    name = error.strip().upper().removeprefix("NET::").split(".", 1)[0]
    if not name:
        return FailureKind.ABORTED
    for kind, words in _BROWSER_ERROR_KINDS:
        if any(word in name for word in words):
            return kind
    return FailureKind.OTHER


class _JsonStream:
    """An incremental JSON reader over a binary stream: single characters and whole values."""

    def __init__(self, stream: BinaryIO | GunzipStream, path: str, max_value_chars: int) -> None:
        self._stream = stream
        self._path = path
        self._max_value_chars = max_value_chars
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
        self._json = json.JSONDecoder()
        self._buf = ""
        self._pos = 0
        self._base_bytes = 0  # file offset of ``_buf[0]``
        # The last computed (char position, byte offset) pair in ``_buf``: offsets are asked for in
        # increasing order, so each costs only the text since the previous one.
        self._mark_pos = 0
        self._mark_bytes = 0
        self._read_bytes = 0
        self._eof = False

    def byte_offset(self, pos: int | None = None) -> int:
        at = self._pos if pos is None else pos
        if at < self._mark_pos:
            return self._base_bytes + len(self._buf[:at].encode("utf-8", "surrogatepass"))
        self._mark_bytes += len(self._buf[self._mark_pos : at].encode("utf-8", "surrogatepass"))
        self._mark_pos = at
        return self._base_bytes + self._mark_bytes

    def error(self, message: str, pointer: str | None, pos: int | None = None) -> InputFormatError:
        return InputFormatError(message, path=self._path, offset=self.byte_offset(pos), field=pointer or None)

    def _fill(self) -> bool:
        if self._eof:
            return False
        self._base_bytes = self.byte_offset(self._pos)
        self._mark_pos = self._mark_bytes = 0
        # Read at least as much as is buffered, so a huge value is re-scanned O(log n) times, not O(n).
        want = max(_CHUNK_BYTES, len(self._buf) - self._pos)
        try:
            data = self._stream.read(want)
        except zlib.error as exc:
            # Only a gzip input (a .har.gz) can fail here; the offset counts decompressed bytes.
            raise InputFormatError(f"corrupt gzip data: {exc}", path=self._path, offset=self._read_bytes) from exc
        except OSError as exc:
            raise InputFormatError(
                f"cannot read: {exc.strerror or exc}", path=self._path, offset=self._read_bytes
            ) from exc
        try:
            text = self._decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise InputFormatError(
                "HAR file is not UTF-8", path=self._path, offset=self._read_bytes + exc.start
            ) from exc
        self._read_bytes += len(data)
        self._buf = self._buf[self._pos :] + text
        self._pos = 0
        self._eof = not data
        return bool(data)

    def peek(self) -> str:
        """The next non-whitespace character without consuming it, ``""`` at the end of the file."""
        while True:
            buf = self._buf
            pos = self._pos
            while pos < len(buf) and buf[pos] in _WHITESPACE:
                pos += 1
            self._pos = pos
            if pos < len(buf):
                return buf[pos]
            if not self._fill():
                return ""

    def expect(self, chars: str, pointer: str) -> str:
        found = self.peek()
        if not found or found not in chars:
            shown = repr(found) if found else "end of file"
            wanted = " or ".join(repr(c) for c in chars)
            raise self.error(f"expected {wanted}, found {shown}", pointer)
        self._pos += 1
        return found

    def value(self, pointer: str) -> Any:
        """Decode the next whole JSON value, reading more of the file until it is complete."""
        self.peek()
        while True:
            try:
                obj, end = self._json.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                near_end = exc.pos >= len(self._buf) - 8 or exc.msg.startswith("Unterminated string")
                if near_end and not self._eof:
                    if len(self._buf) - self._pos > self._max_value_chars:
                        raise self.error(f"value larger than {self._max_value_chars} bytes", pointer) from exc
                    self._fill()
                    continue
                what = "file ends inside this value" if self._eof and near_end else f"invalid JSON: {exc.msg}"
                raise self.error(what, pointer, exc.pos) from exc
            # A number can look complete at the end of the buffer and still go on in the next chunk.
            if end == len(self._buf) and not self._eof and not isinstance(obj, (dict, list, str)):
                self._fill()
                continue
            if end - self._pos > self._max_value_chars:
                # The same answer whether or not the value happened to fit in one read.
                raise self.error(f"value larger than {self._max_value_chars} bytes", pointer)
            self._pos = end
            return obj

    def object_keys(self, pointer: str) -> Iterator[str]:
        """After ``{`` was consumed: each key (leaving the stream at its value) until ``}``."""
        if self.peek() == "}":
            self._pos += 1
            return
        while True:
            key = self.value(pointer)
            if not isinstance(key, str):
                raise self.error("object key is not a string", pointer)
            self.expect(":", pointer)
            yield key
            if self.expect(",}", pointer) == "}":
                return


def _ptr(base: str, key: str | int) -> str:
    return f"{base}[{key}]" if isinstance(key, int) else f"{base}.{key}" if base else key


class _Entry:
    """Typed access to one decoded entry, raising errors that carry the JSON pointer."""

    def __init__(self, reader: HarReader, offset: int) -> None:
        self.reader = reader
        self.offset = offset

    def fail(self, message: str, pointer: str) -> InputFormatError:
        return InputFormatError(message, path=self.reader.path, offset=self.offset, field=pointer)

    def get(
        self, obj: dict[str, Any], key: str, kind: type | tuple[type, ...], pointer: str, *, required: bool = True
    ) -> Any:
        if key not in obj or obj[key] is None:
            if required:
                raise self.fail(f"missing {key!r}", _ptr(pointer, key))
            return None
        value = obj[key]
        # bool is an int in Python, but never a valid HAR number.
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            raise self.fail(f"{key!r} must be {_kind_name(kind)}, not {type(value).__name__}", _ptr(pointer, key))
        return value

    def headers(self, message: dict[str, Any], pointer: str, key: str = "headers") -> Headers:
        raw = self.get(message, key, list, pointer)
        out: list[tuple[bytes, bytes]] = []
        for i, header in enumerate(raw):
            name = header.get("name") if type(header) is dict else None
            value = header.get("value") if type(header) is dict else None
            if type(name) is not str or type(value) is not str:
                # The slow path only runs to name the problem.
                where = _ptr(_ptr(pointer, key), i)
                if not isinstance(header, dict):
                    raise self.fail("header must be an object with 'name' and 'value'", where)
                name = self.get(header, "name", str, where)
                value = self.get(header, "value", str, where)
            if name.startswith(":"):
                # HTTP/2 pseudo-headers (Chrome) are not headers on the wire; the URL carries them.
                continue
            out.append((text_to_wire(name), text_to_wire(value)))
        return tuple(out)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in _as_tuple(kind)))


def _parse_started(text: str) -> int | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1_000


def _ms(timings: dict[str, Any], key: str) -> float:
    value = timings.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0.0


def _timing(timings: dict[str, Any]) -> Timing:
    # HAR phases are sequential: blocked, dns, connect (ssl is inside connect), send, wait, receive.
    before_send_ms = _ms(timings, "blocked") + _ms(timings, "dns") + _ms(timings, "connect")
    sent_ms = before_send_ms + _ms(timings, "send")
    first_byte_ms = sent_ms + _ms(timings, "wait")
    done_ms = first_byte_ms + _ms(timings, "receive")
    return Timing(
        sent_ns=round(before_send_ms * _NS_PER_MS),
        first_byte_ns=round(first_byte_ms * _NS_PER_MS),
        done_ns=round(done_ms * _NS_PER_MS),
    )


def _undo_content_coding(headers: Headers, body: bytes, tags: dict[str, str], side: str) -> Headers:
    coding = header_value(headers, b"content-encoding")
    if coding is None or coding.strip().lower() in (b"", b"identity"):
        return headers
    tags[f"har.decoded.{side}"] = coding.decode("latin-1")
    headers = tuple((k, v) for k, v in headers if k.lower() not in _CONTENT_CODING_HEADERS)
    if header_value(headers, b"content-length") is not None:
        headers = replace_header(headers, b"content-length", str(len(body)).encode("ascii"))
    return headers


class HarReader:
    """Streams the Exchanges of one HAR file; ``report`` is complete once iteration ends."""

    def __init__(self, path: str | Path, *, max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES) -> None:
        self.path = str(path)
        self.max_entry_bytes = max_entry_bytes
        self.report = ImportReport(self.path, "har")
        # Firefox writes the server's port as ``connection``; known once ``log.creator`` was read,
        # which Firefox (like every producer seen) writes before the entries.
        self._connection_is_port = False

    def __iter__(self) -> Iterator[Exchange]:
        stream = open_input(self.path)
        try:
            js = _JsonStream(stream, self.path, self.max_entry_bytes)
            for index, offset, entry in self._entries(js):
                self.report.records += 1
                exchange = self._exchange(entry, index, _Entry(self, offset))
                if exchange is not None:
                    self.report.imported += 1
                    if isinstance(exchange.primary, Failure):
                        self.report.fail(exchange.primary.kind)
                    yield exchange
        finally:
            stream.close()

    def _entries(self, js: _JsonStream) -> Iterator[tuple[int, int, Any]]:
        if js.peek() != "{":
            raise js.error("not a HAR file: it does not start with a JSON object", None)
        js.expect("{", "")
        saw_log = False
        for key in js.object_keys(""):
            if key != "log":
                js.value(key)
                continue
            saw_log = True
            js.expect("{", "log")
            saw_entries = False
            for log_key in js.object_keys("log"):
                if log_key == "creator":
                    creator = js.value("log.creator")
                    name = creator.get("name") if isinstance(creator, dict) else None
                    self._connection_is_port = isinstance(name, str) and name.strip().lower() == "firefox"
                    continue
                if log_key != "entries":
                    js.value(_ptr("log", log_key))
                    continue
                saw_entries = True
                js.expect("[", "log.entries")
                if js.peek() == "]":
                    js.expect("]", "log.entries")
                    continue
                index = 0
                while True:
                    pointer = f"log.entries[{index}]"
                    js.peek()
                    offset = js.byte_offset()
                    yield index, offset, js.value(pointer)
                    index += 1
                    if js.expect(",]", pointer) == "]":
                        break
            if not saw_entries:
                raise js.error("HAR log has no 'entries' array", "log.entries")
        if not saw_log:
            raise js.error("not a HAR file: no 'log' object", "log")
        if js.peek():
            raise js.error("unexpected data after the HAR object", None)

    def _exchange(self, entry: Any, index: int, e: _Entry) -> Exchange | None:
        pointer = f"log.entries[{index}]"
        if not isinstance(entry, dict):
            raise e.fail("entry must be an object", pointer)
        tags: dict[str, str] = {"source": "har"}
        raw_request = e.get(entry, "request", dict, pointer)
        scheme = _URL_SCHEME.match(raw_request.get("url") or "") if isinstance(raw_request.get("url"), str) else None
        if scheme is not None and scheme.group(1).lower() not in _HTTP_SCHEMES:
            # blob:, data:, chrome-extension:... (Playwright records blob: fetches): no HTTP request.
            self.report.skip(f"entries with a {scheme.group(1).lower()}: URL (not HTTP)")
            return None
        request = self._request(e, raw_request, _ptr(pointer, "request"), tags)
        started = e.get(entry, "startedDateTime", str, pointer)
        started_ns = _parse_started(started)
        if started_ns is None:
            raise e.fail(f"startedDateTime {started[:40]!r} is not an ISO 8601 date", _ptr(pointer, "startedDateTime"))
        websocket = request.scheme in _WEBSOCKET_SCHEMES or entry.get("_resourceType") == "websocket"
        if request.scheme in _WEBSOCKET_SCHEMES:
            # The entry is the HTTP upgrade; its URL has the WebSocket scheme the page used.
            request = replace(request, scheme=_WEBSOCKET_SCHEMES[request.scheme])
        raw_response = e.get(entry, "response", dict, pointer, required=False)
        primary: Outcome | None
        if raw_response is None:
            primary = Failure(FailureKind.OTHER, "no response in HAR entry")
        else:
            response_ptr = _ptr(pointer, "response")
            primary = self._response(e, raw_response, response_ptr, tags, request.method, websocket=websocket)
        if websocket:
            messages = self._websocket_messages(e, entry, raw_response, pointer)
            if messages is not None:
                tags["har.websocket_messages"] = str(messages)
            self.report.note("WebSocket entries (the upgrade kept, messages as a count in tags)")
        from_cache = entry.get("_fromCache")
        if isinstance(from_cache, str) and from_cache and isinstance(primary, Response):
            tags["har.from_cache"] = from_cache
            self.report.note("responses the browser served from its cache (tag har.from_cache)")
        timings_raw = e.get(entry, "timings", dict, pointer, required=False)
        timings = {"primary": _timing(timings_raw)} if timings_raw is not None and isinstance(primary, Response) else {}
        server_ip = entry.get("serverIPAddress")
        if isinstance(server_ip, str) and server_ip:
            tags["har.server_ip"] = server_ip
        connection = entry.get("connection")
        if self._connection_is_port and isinstance(connection, str) and connection:
            # Firefox's ``connection`` is the server's port: as a connection id it would chain every
            # request to one port into one replay session.
            tags["har.server_port"] = connection
            connection = None
            self.report.note("entries whose 'connection' is the server port (Firefox; tag har.server_port)")
        if "har.decoded.response" in tags or "har.decoded.request" in tags:
            self.report.note("bodies stored decoded by HAR (Content-Encoding dropped)")
        # Deterministic ids: importing the same file twice gives the same tape.
        identity = f"har:{index}:{started}:{request.method}:{request.scheme}://{request.authority}{request.target}"
        return Exchange(
            id=hashlib.sha1(text_to_wire(identity)).hexdigest()[:32],
            started_at_ns=started_ns,
            started_mono_ns=started_ns,
            request=request,
            primary=primary,
            timings=timings,
            connection_id=connection if isinstance(connection, str) else "",
            tags=tags,
        )

    def _request(self, e: _Entry, raw: dict[str, Any], pointer: str, tags: dict[str, str]) -> Request:
        method = e.get(raw, "method", str, pointer)
        url = e.get(raw, "url", str, pointer)
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise e.fail(f"bad url {url[:80]!r}: {exc}", _ptr(pointer, "url")) from exc
        if not parts.scheme or not parts.netloc:
            raise e.fail(f"url {url[:80]!r} is not absolute", _ptr(pointer, "url"))
        # An empty query ("/p?") is kept: the target is compared byte for byte downstream.
        has_query = bool(parts.query) or url.split("#", 1)[0].endswith("?")
        target = (parts.path or "/") + (f"?{parts.query}" if has_query else "")
        headers = e.headers(raw, pointer)
        body = b""
        truncated_from: int | None = None
        post = e.get(raw, "postData", dict, pointer, required=False)
        if post is not None:
            body = self._post_body(e, post, _ptr(pointer, "postData"), headers)
            headers = _undo_content_coding(headers, body, tags, "request") if body else headers
            declared = _size(raw.get("bodySize"))
            if not body and declared:
                # Playwright keeps no text for an octet-stream body, only how long it was.
                truncated_from = declared
                if "_file" not in post:
                    self.report.note("request bodies the HAR does not hold (body empty, truncated_from set)")
        version = raw.get("httpVersion")
        return Request(
            method=method,
            target=target,
            headers=headers,
            body=body,
            scheme=parts.scheme,
            authority=parts.netloc,
            http_version=http_version_from_wire(version) if isinstance(version, str) else "1.1",
            truncated_from=truncated_from,
            trailers=e.headers(raw, pointer, _TRAILERS_FIELD) if _TRAILERS_FIELD in raw else (),
            messages=grpc_messages(headers, body, truncated_from is not None),
        )

    def _post_body(self, e: _Entry, post: dict[str, Any], pointer: str, headers: Headers) -> bytes:
        attached = self._attached(e, post, pointer)
        if attached is not None:
            return attached
        text: str | None = e.get(post, "text", str, pointer, required=False)
        if text:
            if post.get("encoding") == "base64":
                return _b64(e, text, _ptr(pointer, "text"))
            return text_to_wire(text)
        # HAR 1.2 has ``text`` or ``params``; Firefox writes ``text: ""`` beside the params.
        params = e.get(post, "params", list, pointer, required=False) or []
        mime = post.get("mimeType") if isinstance(post.get("mimeType"), str) else ""
        if not mime:
            content_type = header_value(headers, b"content-type")
            mime = content_type.decode("latin-1") if content_type else ""
        fields: list[tuple[str, str, str | None, str | None]] = []
        for i, param in enumerate(params):
            where = _ptr(_ptr(pointer, "params"), i)
            if not isinstance(param, dict):
                raise e.fail("param must be an object", where)
            fields.append(
                (
                    e.get(param, "name", str, where),
                    e.get(param, "value", str, where, required=False) or "",
                    e.get(param, "fileName", str, where, required=False),
                    e.get(param, "contentType", str, where, required=False),
                )
            )
        if not fields:
            return b""
        if mime.lower().startswith("multipart/form-data"):
            boundary = mime.partition("boundary=")[2].split(";", 1)[0].strip().strip('"')
            if not boundary:
                raise e.fail("multipart params without a boundary in mimeType", _ptr(pointer, "mimeType"))
            return _multipart(fields, boundary)
        return "&".join(
            f"{quote_plus(name, errors='surrogatepass')}={quote_plus(value, errors='surrogatepass')}"
            for name, value, _, _ in fields
        ).encode("ascii")

    def _attached(self, e: _Entry, holder: dict[str, Any], pointer: str, *, body: bool = True) -> bytes | None:
        """The bytes of ``holder["_file"]`` (Playwright's "attach" mode), ``None`` when there is none.

        Only a plain file name in the HAR's own folder is read: a HAR cannot make the import read
        anything else. A named file that is missing is counted and read as ``None`` too, so the
        caller falls back to the sizes the HAR gives.
        """
        name = holder.get("_file")
        if name is None:
            return None
        where = _ptr(pointer, "_file")
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\x00" in name:
            raise e.fail(f"_file must name a file beside the HAR, not {str(name)[:80]!r}", where)
        path = Path(self.path).parent / name
        try:
            with path.open("rb") as attached:
                data = attached.read(self.max_entry_bytes + 1)
        except FileNotFoundError:
            self.report.note("bodies whose _file is missing (body empty, truncated_from set)")
            return None
        except OSError as exc:
            raise e.fail(f"cannot read _file {name!r}: {exc.strerror or exc}", where) from exc
        if len(data) > self.max_entry_bytes:
            raise e.fail(f"_file {name!r} is larger than {self.max_entry_bytes} bytes", where)
        if body:
            self.report.note("bodies read from the files beside the HAR (_file)")
        return data

    def _websocket_messages(
        self, e: _Entry, entry: dict[str, Any], raw_response: dict[str, Any] | None, pointer: str
    ) -> int | None:
        """How many messages a WebSocket entry lists: ``_webSocketMessages``, or JSON lines in ``_file``."""
        messages = entry.get("_webSocketMessages")
        if isinstance(messages, list):
            return len(messages)
        content = raw_response.get("content") if raw_response is not None else None
        if isinstance(content, dict) and isinstance(content.get("_file"), str):
            data = self._attached(e, content, _ptr(_ptr(pointer, "response"), "content"), body=False)
            return None if data is None else sum(1 for line in data.splitlines() if line.strip())
        return None

    def _response(
        self, e: _Entry, raw: dict[str, Any], pointer: str, tags: dict[str, str], method: str, *, websocket: bool
    ) -> Outcome:
        status = e.get(raw, "status", int, pointer)
        headers = e.headers(raw, pointer)
        # DevTools writes ``_error`` (null when fine), Playwright ``_failureText``.
        error = ""
        for key in ("_error", "_failureText"):
            value = raw.get(key)
            if isinstance(value, str) and value:
                error = value
                break
        if status in _NO_RESPONSE_STATUSES:
            kind = raw.get(_FAILURE_KIND_FIELD)
            if not (isinstance(kind, str) and kind in FAILURE_KINDS):
                kind = browser_failure_kind(error)
            return Failure(kind, error or f"no response (status {status})")
        if not 100 <= status <= 999:
            raise e.fail(f"status {status} is not an HTTP status", _ptr(pointer, "status"))
        if error:
            # The head came, then the transfer failed (or the page stopped reading): keep the answer.
            tags["har.error"] = error
            self.report.note("responses with a browser error after the head (tag har.error)")
        content = e.get(raw, "content", dict, pointer)
        content_ptr = _ptr(pointer, "content")
        bodiless = websocket or method == "HEAD" or status < 200 or status in _BODILESS_STATUSES
        # A WebSocket's ``_file`` holds its messages, not a body.
        attached = None if bodiless else self._attached(e, content, content_ptr)
        text = e.get(content, "text", str, content_ptr, required=False)
        truncated_from: int | None = None
        if attached is not None:
            body = attached
        elif text is None:
            body = b""
            # ``size`` is the decoded length, ``bodySize`` what came over the wire; -1 is "unknown".
            size = _size(content.get("size")) or _size(raw.get("bodySize"))
            if size and not bodiless:
                truncated_from = size
                if "_file" not in content:
                    self.report.note("responses whose HAR holds no content text (body empty, truncated_from set)")
            elif size is None and not bodiless:
                self.report.note("responses whose body the HAR does not hold and whose size it does not know")
        elif content.get("encoding") == "base64":
            body = _b64(e, text, _ptr(content_ptr, "text"))
        else:
            body = text_to_wire(text)
        if body:
            headers = _undo_content_coding(headers, body, tags, "response")
        version = raw.get("httpVersion")
        reason = raw.get("statusText")
        return Response(
            status=status,
            reason=reason if isinstance(reason, str) else "",
            headers=headers,
            body=body,
            http_version=http_version_from_wire(version) if isinstance(version, str) else "1.1",
            truncated_from=truncated_from,
            trailers=e.headers(raw, pointer, _TRAILERS_FIELD) if _TRAILERS_FIELD in raw else (),
            messages=grpc_messages(headers, body, truncated_from is not None),
        )


def _size(value: Any) -> int | None:
    """A HAR size: the number when it is one and not negative, ``None`` for -1 / missing / junk."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _b64(e: _Entry, text: str, pointer: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise e.fail(f"invalid base64: {exc}", pointer) from exc


def _multipart(fields: list[tuple[str, str, str | None, str | None]], boundary: str) -> bytes:
    out = bytearray()
    for name, value, file_name, content_type in fields:
        out += text_to_wire(f"--{boundary}\r\n")
        disposition = f'Content-Disposition: form-data; name="{name}"'
        if file_name is not None:
            disposition += f'; filename="{file_name}"'
        out += text_to_wire(disposition) + b"\r\n"
        if content_type:
            out += text_to_wire(f"Content-Type: {content_type}\r\n")
        out += b"\r\n" + text_to_wire(value) + b"\r\n"
    out += text_to_wire(f"--{boundary}--\r\n")
    return bytes(out)


# --- export ------------------------------------------------------------------------------------------


def decode_content(headers: Headers, body: bytes) -> tuple[bytes, bool]:
    """``body`` with its Content-Encoding undone, and whether that worked (unknown codings do not)."""
    coding = (header_value(headers, b"content-encoding") or b"").strip().lower()
    if coding in (b"", b"identity") or not body:
        return body, True
    try:
        if coding in (b"gzip", b"x-gzip"):
            return gzip.decompress(body), True
        if coding == b"deflate":
            try:
                return zlib.decompress(body), True
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS), True
        if coding == b"br":
            import brotli  # lazy: only HAR export of brotli bodies needs it

            return bytes(brotli.decompress(body)), True
        if coding == b"zstd":
            import zstandard  # lazy, as above

            return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(body)), True
    except Exception:  # noqa: BLE001 - any decoder failure means "keep the wire bytes"
        return body, False
    return body, False


def _text_or_base64(body: bytes) -> tuple[str, str | None]:
    try:
        return body.decode("utf-8"), None
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"


def _header_text(raw: bytes) -> str:
    # JSON text cannot hold arbitrary bytes: UTF-8 round-trips exactly, anything else is read as Latin-1.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _header_list(headers: Headers) -> list[dict[str, str]]:
    return [{"name": _header_text(k), "value": _header_text(v)} for k, v in headers]


def _har_version(version: str) -> str:
    return (
        "HTTP/2.0" if version.startswith("2") else "HTTP/3" if version.startswith("3") else f"HTTP/{version or '1.1'}"
    )


def _cookies(headers: Headers, name: bytes) -> list[dict[str, str]]:
    cookies: list[dict[str, str]] = []
    for key, value in headers:
        if key.lower() != name:
            continue
        text = value.decode("latin-1")
        pairs = text.split(";") if name == b"cookie" else [text.split(";", 1)[0]]
        for pair in pairs:
            cookie_name, eq, cookie_value = pair.strip().partition("=")
            if eq:
                cookies.append({"name": cookie_name, "value": cookie_value})
    return cookies


def _iso(ns: int) -> str:
    return (_EPOCH + timedelta(microseconds=ns // 1_000)).isoformat()


def _entry(exchange: Exchange, report: ExportReport) -> dict[str, Any]:
    request = exchange.request
    authority = request.authority or (request.header(b"host") or b"").decode("latin-1") or "localhost"
    url = f"{request.scheme or 'http'}://{authority}{request.target}"
    request_json: dict[str, Any] = {
        "method": request.method,
        "url": url,
        "httpVersion": _har_version(request.http_version),
        "cookies": _cookies(request.headers, b"cookie"),
        "headers": _header_list(request.headers),
        "queryString": [{"name": n, "value": v} for n, v in parse_qsl(request.query, keep_blank_values=True)],
        "headersSize": -1,
        "bodySize": len(request.body),
    }
    if request.body:
        text, encoding = _text_or_base64(request.body)
        content_type = request.header(b"content-type")
        post: dict[str, Any] = {"mimeType": content_type.decode("latin-1") if content_type else "", "text": text}
        if encoding:
            post["encoding"] = encoding  # not in HAR 1.2; read back by shadowtap, ignored by others
        if (content_type or b"").lower().startswith(b"application/x-www-form-urlencoded") and encoding is None:
            post["params"] = [{"name": n, "value": v} for n, v in parse_qsl(text, keep_blank_values=True)]
        request_json["postData"] = post
    if request.trailers:
        request_json[_TRAILERS_FIELD] = _header_list(request.trailers)
    timing = exchange.timings.get("primary")
    outcome = exchange.primary
    entry: dict[str, Any] = {"startedDateTime": _iso(exchange.started_at_ns)}
    if isinstance(outcome, Response):
        body, decoded = decode_content(outcome.headers, outcome.body)
        if not decoded:
            report.skip("response bodies with an undecodable Content-Encoding (exported as wire bytes)")
        text, encoding = _text_or_base64(body)
        content_type = outcome.header(b"content-type")
        content: dict[str, Any] = {
            "size": len(body),
            "compression": len(body) - len(outcome.body),
            "mimeType": content_type.decode("latin-1") if content_type else "",
            "text": text,
        }
        if encoding:
            content["encoding"] = encoding
        location = outcome.header(b"location")
        response_json: dict[str, Any] = {
            "status": outcome.status,
            "statusText": outcome.reason,
            "httpVersion": _har_version(outcome.http_version),
            "cookies": _cookies(outcome.headers, b"set-cookie"),
            "headers": _header_list(outcome.headers),
            "content": content,
            "redirectURL": location.decode("latin-1") if location else "",
            "headersSize": -1,
            "bodySize": len(outcome.body),
        }
        if outcome.trailers:
            response_json[_TRAILERS_FIELD] = _header_list(outcome.trailers)
    else:
        # Chrome's way of saying "no response": status 0 and the reason in ``_error``.
        response_json = {
            "status": 0,
            "statusText": "",
            "httpVersion": _har_version(request.http_version),
            "cookies": [],
            "headers": [],
            "content": {"size": 0, "mimeType": "x-unknown", "text": ""},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": -1,
            "_error": outcome.message or outcome.kind if isinstance(outcome, Failure) else "no response recorded",
        }
        if isinstance(outcome, Failure):
            response_json[_FAILURE_KIND_FIELD] = outcome.kind
    sent_ms = (timing.sent_ns or 0) / _NS_PER_MS if timing else 0.0
    first_byte_ms = (timing.first_byte_ns or 0) / _NS_PER_MS if timing else 0.0
    done_ms = (timing.done_ns or 0) / _NS_PER_MS if timing else 0.0
    wait_ms = max(0.0, first_byte_ms - sent_ms)
    receive_ms = max(0.0, done_ms - max(first_byte_ms, sent_ms))
    entry.update(
        {
            "time": sent_ms + wait_ms + receive_ms,
            "request": request_json,
            "response": response_json,
            "cache": {},
            "timings": {
                "blocked": -1,
                "dns": -1,
                "connect": sent_ms if sent_ms > 0 else -1,
                "ssl": -1,
                "send": 0,
                "wait": wait_ms,
                "receive": receive_ms,
            },
        }
    )
    server_ip = exchange.tags.get("har.server_ip")
    if server_ip:
        entry["serverIPAddress"] = server_ip
    if exchange.connection_id:
        entry["connection"] = exchange.connection_id
    if exchange.shadows:
        report.skip("shadow responses (HAR holds one response per entry)", len(exchange.shadows))
    return entry


def write_har(exchanges: Iterable[Exchange], path: str | Path, *, creator_version: str = "") -> ExportReport:
    """Write ``exchanges`` as one HAR 1.2 file, one entry at a time (memory stays flat)."""
    report = ExportReport(str(path), "har")
    with writing(path), open_private(path, "w", encoding="utf-8", buffering=_CHUNK_BYTES) as out:
        creator = json.dumps({"name": "shadowtap", "version": creator_version})
        out.write('{"log": {"version": "1.2", "creator": ' + creator + ', "pages": [], "entries": [\n')
        for exchange in exchanges:
            if report.exported:
                out.write(",\n")
            # ASCII-escaped: a lone surrogate from a strange input cannot break the UTF-8 file.
            out.write(json.dumps(_entry(exchange, report)))
            report.exported += 1
        out.write("\n]}}\n")
    return report
