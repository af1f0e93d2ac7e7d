"""mitmproxy flow files: read them into Exchanges and write Exchanges as flows, through ``mitmproxy.io``.

``mitmproxy.io.FlowReader`` does the reading, so every flow format version mitmproxy migrates is read;
``FlowWriter`` writes the current version. Bodies are ``raw_content`` (still content-encoded, chunked
framing removed) and headers are ``.fields`` (order, case and duplicates kept). This module must never
crash on a flow it does not model: WebSocket messages become a count in ``tags``, TCP/UDP/DNS flows are
skipped and counted, flows with errors keep the error. mitmproxy is imported lazily, in the functions
that need it, so importing ``shadowtap.recorder.formats`` stays cheap, and it is an extra
(``shadowtap[mitm]``): without it, reading or writing a flow file is one ``ConfigError`` saying so.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from shadowtap.recorder.errors import ConfigError, InputFormatError
from shadowtap.recorder.formats._common import (
    FAILURE_KINDS,
    GZIP_MAGIC,
    ExportReport,
    ImportReport,
    TornTail,
    grpc_messages,
    http_version_from_wire,
    text_to_wire,
    writing,
)
from shadowtap.recorder.model import PRIMARY, Exchange, Failure, FailureKind, Outcome, Request, Response, Timing
from shadowtap.recorder.private import open_private

if TYPE_CHECKING:
    from mitmproxy import http

__all__ = ["MitmReader", "exchange_from_flow", "flow_from_exchange", "write_mitm"]

_NS_PER_S: Final = 1_000_000_000
#: What a user without the extra is told, in one line.
MITM_EXTRA: Final = "mitmproxy flow files need mitmproxy: pip install 'shadowtap[mitm]'"


def require_mitmproxy() -> None:
    """Raise a ``ConfigError`` naming the extra when mitmproxy is not installed."""
    import importlib.util

    if importlib.util.find_spec("mitmproxy") is None:
        raise ConfigError(MITM_EXTRA)


#: The flow metadata key where shadowtap's export keeps a failure's kind, so it survives a round trip.
_FAILURE_KIND_KEY: Final = "shadowtap.failure_kind"
#: A tnetstring length prefix is at most 12 digits (mitmproxy's own limit).
_MAX_PREFIX_DIGITS: Final = 12


def _ns(seconds: float | None) -> int | None:
    # Flow timestamps are float seconds (about 0.25 us of precision today): whole microseconds are
    # all they hold, and rounding to them makes export -> import give back the same numbers.
    return None if seconds is None else round(seconds * 1_000_000) * 1_000


#: Words of the errors mitmproxy records when it cannot reach the server: its own messages, and the
#: OSError text of a failed connect ("[Errno 111] Connect call failed ('127.0.0.1', 8080)").
_CONNECT_ERROR_WORDS: Final = (
    "refused",
    "resolve",
    "unreachable",
    "connect to",
    "connect call failed",
    "no route",
    "name or service not known",
    "nodename nor servname",
    "no address associated",
)


def _failure_kind(message: str) -> str:
    lowered = message.lower()
    # Most mitmproxy messages start with "Connection", so the specific words decide, in this order.
    if "timeout" in lowered or "timed out" in lowered:
        return FailureKind.TIMEOUT
    if "reset" in lowered or "server disconnected" in lowered:
        return FailureKind.RESET
    if "killed" in lowered:
        return FailureKind.CANCELLED
    if "client disconnected" in lowered:
        # The client went away before the response: nothing says the server failed.
        return FailureKind.ABORTED
    if any(word in lowered for word in _CONNECT_ERROR_WORDS):
        return FailureKind.CONNECT_ERROR
    return FailureKind.OTHER


def _address(address: Any) -> str:
    if not address:
        return ""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def exchange_from_flow(flow: http.HTTPFlow, *, body_cap_bytes: int | None = None) -> Exchange:
    """One mitmproxy HTTP flow as an Exchange (``body_cap_bytes`` cuts bodies, setting truncated_from)."""
    req = flow.request
    start_s = req.timestamp_start
    started_ns = _ns(start_s) or 0
    authority = (
        req.authority
        or req.host_header
        or (req.host if req.port == (443 if req.scheme == "https" else 80) else f"{req.host}:{req.port}")
    )
    tags: dict[str, str] = {"source": "mitm"}
    request_body, request_cut = _cap(req.raw_content, body_cap_bytes, req.headers.get("content-length"))
    if req.raw_content is None:
        tags["mitm.request_body"] = "missing"
    request = Request(
        method=req.method,
        target=req.path or (authority if req.method == "CONNECT" else "/"),
        headers=tuple(req.headers.fields),
        body=request_body,
        scheme=req.scheme,
        authority=authority,
        http_version=http_version_from_wire(req.http_version),
        truncated_from=request_cut,
        trailers=() if req.trailers is None else tuple(req.trailers.fields),
        messages=grpc_messages(tuple(req.headers.fields), request_body, request_cut is not None),
    )
    primary: Outcome | None = None
    timings: dict[str, Timing] = {}
    resp = flow.response
    if resp is not None:
        response_body, response_cut = _cap(resp.raw_content, body_cap_bytes, resp.headers.get("content-length"))
        if resp.raw_content is None:
            tags["mitm.response_body"] = "missing"
        primary = Response(
            status=resp.status_code,
            reason=resp.reason,
            headers=tuple(resp.headers.fields),
            body=response_body,
            http_version=http_version_from_wire(resp.http_version),
            truncated_from=response_cut,
            trailers=() if resp.trailers is None else tuple(resp.trailers.fields),
            messages=grpc_messages(tuple(resp.headers.fields), response_body, response_cut is not None),
        )
        first_byte = _ns(resp.timestamp_start)
        done = _ns(resp.timestamp_end)
        sent = _ns(req.timestamp_end)
        timings[PRIMARY] = Timing(
            sent_ns=None if sent is None else sent - started_ns,
            first_byte_ns=None if first_byte is None else first_byte - started_ns,
            done_ns=None if done is None else done - started_ns,
        )
    if flow.error is not None:
        if primary is None:
            kind = flow.metadata.get(_FAILURE_KIND_KEY)
            if not (isinstance(kind, str) and kind in FAILURE_KINDS):
                kind = _failure_kind(flow.error.msg)
            primary = Failure(kind, flow.error.msg)
        else:
            tags["mitm.error"] = flow.error.msg
    if flow.websocket is not None:
        tags["mitm.websocket_messages"] = str(len(flow.websocket.messages))
    if flow.is_replay:
        tags["mitm.replay"] = flow.is_replay
    if flow.comment:
        tags["mitm.comment"] = flow.comment
    return Exchange(
        id=flow.id,
        started_at_ns=started_ns,
        started_mono_ns=started_ns,
        request=request,
        primary=primary,
        timings=timings,
        connection_id=flow.client_conn.id,
        client_addr=_address(flow.client_conn.peername),
        tags=tags,
    )


def _cap(body: bytes | None, cap_bytes: int | None, content_length: str | None) -> tuple[bytes, int | None]:
    if body is None:
        # mitmproxy streamed the body (stream_large_bodies) without keeping it: its size is only known
        # from Content-Length, and it stays unknown for a chunked body.
        declared = content_length.strip() if content_length else ""
        return b"", int(declared) if declared.isdigit() else None
    if cap_bytes is not None and len(body) > cap_bytes:
        return body[:cap_bytes], len(body)
    return body, None


class MitmReader:
    """Streams the Exchanges of one mitmproxy flow file; ``report`` is complete once iteration ends."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.report = ImportReport(self.path, "mitm")

    def __iter__(self) -> Iterator[Exchange]:
        require_mitmproxy()
        from mitmproxy import exceptions, http
        from mitmproxy.io import FlowReader

        try:
            stream = open(self.path, "rb")  # noqa: SIM115 - closed in finally; a generator holds it
        except OSError as exc:
            raise InputFormatError(f"cannot read: {exc.strerror or exc}", path=self.path) from exc
        try:
            try:
                first = stream.read(2)
                stream.seek(0)
                size = os.fstat(stream.fileno()).st_size
            except OSError as exc:
                raise InputFormatError(f"cannot read: {exc.strerror or exc}", path=self.path, offset=0) from exc
            if first[:1] in (b"{", b"\xef"):
                raise InputFormatError(
                    "this is JSON (a HAR file?), not a mitmproxy flow file", path=self.path, offset=0
                )
            if first == GZIP_MAGIC:
                raise InputFormatError("gzip-compressed flow files are not read: gunzip it first", path=self.path)
            flows = iter(FlowReader(stream).stream())
            while True:
                # FlowReader reads exactly one record per flow, so the position is the next record's start.
                offset = stream.tell()
                try:
                    flow = next(flows)
                except StopIteration:
                    break
                except OSError as exc:
                    raise InputFormatError(
                        f"cannot read: {exc.strerror or exc}", path=self.path, offset=offset
                    ) from exc
                except (exceptions.FlowReadException, AttributeError, KeyError, TypeError, ValueError) as exc:
                    # FlowReader wraps only some failures: a well-formed record holding something
                    # other than a flow state (a number, a list) surfaces as a plain Python error.
                    torn = _torn_length(stream, offset, size)
                    if torn is None:
                        raise InputFormatError(
                            f"not a valid mitmproxy flow: {exc}", path=self.path, offset=offset
                        ) from exc
                    self.report.torn_tail = TornTail(offset, torn, "last flow is cut short")
                    break
                self.report.records += 1
                if not isinstance(flow, http.HTTPFlow):
                    self.report.skip(f"{type(flow).__name__} flows (not HTTP)")
                    continue
                exchange = exchange_from_flow(flow)
                if "mitm.websocket_messages" in exchange.tags:
                    self.report.note("WebSocket flows (messages kept as a count in tags)")
                if isinstance(exchange.primary, Failure):
                    self.report.fail(exchange.primary.kind)
                if "mitm.request_body" in exchange.tags or "mitm.response_body" in exchange.tags:
                    self.report.note("bodies mitmproxy streamed without keeping (body empty, size from Content-Length)")
                self.report.imported += 1
                yield exchange
        finally:
            stream.close()


def _torn_length(stream: BinaryIO, offset: int, size: int) -> int | None:
    """Bytes from ``offset`` to the end if the record there runs past the end of the file, else None."""
    stream.seek(offset)
    prefix = stream.read(_MAX_PREFIX_DIGITS + 1)
    digits, colon, _ = prefix.partition(b":")
    if not colon or not digits.isdigit():
        # A prefix cut before its colon is torn only when it is the very end of the file.
        return size - offset if digits.isdigit() and offset + len(prefix) >= size else None
    record_end = offset + len(digits) + 1 + int(digits) + 1  # prefix, colon, payload, type tag
    return size - offset if record_end > size else None


def flow_from_exchange(exchange: Exchange) -> http.HTTPFlow:
    """An Exchange as a mitmproxy HTTP flow: the primary response (or error) only."""
    require_mitmproxy()
    from mitmproxy import connection, http
    from mitmproxy import flow as mflow

    req = exchange.request
    start_s = exchange.started_at_ns / _NS_PER_S
    timing = exchange.timings.get(PRIMARY)

    def at(offset_ns: int | None) -> float | None:
        return None if offset_ns is None else start_s + offset_ns / _NS_PER_S

    host, _, port_text = (
        req.authority.rpartition(":")
        if ":" in req.authority.lstrip("[").split("]")[-1]
        else (
            req.authority,
            "",
            "",
        )
    )
    port = int(port_text) if port_text.isdigit() else (443 if req.scheme == "https" else 80)
    host = host.strip("[]") or "localhost"
    client_host, _, client_port = exchange.client_addr.rpartition(":")
    client = connection.Client(
        peername=(client_host.strip("[]") or "127.0.0.1", int(client_port) if client_port.isdigit() else 0),
        sockname=("0.0.0.0", 0),
        timestamp_start=start_s,
    )
    if exchange.connection_id:
        client.id = exchange.connection_id
    flow = http.HTTPFlow(client, connection.Server(address=(host, port)))
    flow.id = exchange.id
    is_http1 = not req.http_version.startswith(("2", "3"))
    flow.request = http.Request(
        host=host,
        port=port,
        method=text_to_wire(req.method),
        scheme=text_to_wire(req.scheme),
        # HTTP/1 requests are origin-form (authority in Host); HTTP/2 carries it as :authority.
        authority=b"" if is_http1 else text_to_wire(req.authority),
        path=text_to_wire(req.target),
        http_version=_mitm_version(req.http_version),
        headers=req.headers,
        content=req.body,
        trailers=req.trailers or None,
        timestamp_start=start_s,
        timestamp_end=at(timing.sent_ns) if timing and timing.sent_ns is not None else start_s,
    )
    outcome = exchange.primary
    if isinstance(outcome, Response):
        flow.response = http.Response(
            http_version=_mitm_version(outcome.http_version),
            status_code=outcome.status,
            reason=outcome.reason.encode("latin-1", "replace"),
            headers=outcome.headers,
            content=outcome.body,
            trailers=outcome.trailers or None,
            timestamp_start=at(timing.first_byte_ns) or start_s if timing else start_s,
            timestamp_end=at(timing.done_ns) if timing else None,
        )
        error = exchange.tags.get("mitm.error")
        if error:
            flow.error = mflow.Error(error)
    elif isinstance(outcome, Failure):
        flow.error = mflow.Error(outcome.message or outcome.kind)
        flow.metadata[_FAILURE_KIND_KEY] = outcome.kind
    comment = exchange.tags.get("mitm.comment")
    if comment:
        flow.comment = comment
    return flow


def _mitm_version(version: str) -> bytes:
    if version.startswith("2"):
        return b"HTTP/2.0"
    if version.startswith("3"):
        return b"HTTP/3"
    return text_to_wire(f"HTTP/{version or '1.1'}")


def write_mitm(exchanges: Iterable[Exchange], path: str | Path) -> ExportReport:
    """Write ``exchanges`` as a mitmproxy flow file (``mitmproxy -r`` / ``mitmdump -r`` read it)."""
    require_mitmproxy()
    from mitmproxy.io import FlowWriter

    report = ExportReport(str(path), "mitm")
    with writing(path), open_private(path, "wb") as out:
        writer = FlowWriter(out)  # type: ignore[no-untyped-call]
        for exchange in exchanges:
            writer.add(flow_from_exchange(exchange))
            if exchange.shadows:
                report.skip("shadow responses (a flow holds one response)", len(exchange.shadows))
            report.exported += 1
    return report
