"""A blocking HTTP/2 client for the Locust workers: each planned request one stream, over ``h2`` on a
standard socket, which gevent's monkey-patching makes cooperative in a Locust process.

``BlockingH2Client.send`` takes what ``shadowtap.replayer.h2transport.H2Transport.send`` takes and
gives back the same ``SendResult``: the same request fields (``h2_request_fields``: pseudo-headers,
the plan's ``Host`` as the authority, ``te: trailers`` for gRPC, the recorded request trailers), the
same ``Response`` (``http_version`` ``"2"``, trailers, the gRPC message list timed from the call's
start) and the same ``Failure`` kinds for a refused connection, a timeout, a reset stream, GOAWAY or
a malformed answer, so the Locust results tape and stats read like the asyncio replayer's. h2c is
spoken by prior knowledge for ``h2c://`` and ``http://`` targets, TLS with ALPN ``h2`` for
``https://``. A recorded client stream's messages go at their recorded offsets (``message_offsets``),
the answer read meanwhile.

A connection carries one stream at a time (the calling greenlet reads its answer itself, so no
reader greenlet or stream table is needed) and goes back to an idle list after a clean end; up to
``max_connections`` are open at once, and a caller beyond that waits for one. A stream the target
refused unprocessed (REFUSED_STREAM, above a GOAWAY's last stream, or an idempotent request on a
reused idle connection the target had closed) is sent once more on a new connection. It never raises
for the target's failures.

It must never run asyncio code: it only shares pure helpers with the asyncio transport.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from typing import Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from yarl import URL

from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.model import Failure, FailureKind, Headers, Outcome, Request, Response, StreamMessage
from shadowtap.replayer.h2transport import DEFAULT_PORTS, h2_call, is_grpc
from shadowtap.replayer.sending import ClientSettings, SendResult
from shadowtap.wire.grpc import GrpcFramingError, MessageSplitter
from shadowtap.wire.http1 import IDEMPOTENT_METHOD_BYTES

__all__ = ["BlockingH2Client"]

Header = tuple[bytes, bytes]

_NS_PER_S: Final = 1_000_000_000
_READ_BYTES: Final = 65_536
#: Our receive window for the connection and each stream: what the target may send before we read.
_WINDOW_BYTES: Final = 1024 * 1024
#: A connection stops taking streams well before h2's stream-id space ends (2**31 - 1).
_MAX_STREAM_ID: Final = 2**30


class _Refused(Exception):
    """The target did not process the stream: it may go again, once, on a new connection."""


class _Connection:
    __slots__ = ("h2", "reusable", "sock", "used")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # The fields are the plan's, as the asyncio transport sends them (``h2_request_fields``):
        # not checked again here, so a recorded field h2 would refuse is sent as it was.
        config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config)
        # Set before the preface's SETTINGS (a change after it would wait for the peer's ACK).
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW_BYTES,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_WINDOW_BYTES)
        self.reusable = True
        self.used = False  # a stream went out on it (a reused idle one may have been closed by the target)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def close(self) -> None:
        self.reusable = False
        with contextlib.suppress(OSError):
            self.sock.close()


class _Answer:
    """What came back on one stream."""

    __slots__ = ("body", "ended", "failure", "first_byte_ns", "headers", "messages", "refused", "size", "splitter",
                 "status", "trailers")  # fmt: skip

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[Header] = []
        self.trailers: list[Header] = []
        self.body: list[bytes] = []
        self.size = 0
        self.messages: list[StreamMessage] = []
        self.splitter: MessageSplitter | None = None
        self.first_byte_ns: int | None = None
        self.ended = False
        self.failure: Failure | None = None
        self.refused = False

    def over(self) -> bool:
        """The stream ended, or failed."""
        return self.ended or self.failure is not None


class BlockingH2Client:
    """Sends planned requests as HTTP/2 streams (see the module docstring); safe to call from many
    greenlets at once. ``close`` closes the idle connections."""

    def __init__(self, base_url: str, settings: ClientSettings | None = None) -> None:
        url = URL(base_url)
        if url.scheme not in DEFAULT_PORTS or not url.host:
            raise ConfigError(f"not an h2c://, http:// or https:// URL: {base_url!r}", field="target")
        self._settings = s = settings or ClientSettings()
        self._host = url.host
        self._port = url.port or DEFAULT_PORTS[url.scheme]
        self._tls = url.scheme == "https"
        self._scheme = b"https" if self._tls else b"http"
        self._prefix = url.raw_path.rstrip("/").encode("latin-1")
        host = url.raw_host or url.host
        default_port = self._port == DEFAULT_PORTS[url.scheme] and url.scheme != "h2c"
        self._authority = (host if default_port else f"{host}:{self._port}").encode("latin-1")
        self._ssl = ssl.create_default_context() if self._tls else None
        if self._ssl is not None:
            self._ssl.set_alpn_protocols(["h2"])
        self._max_gap_ns = int(s.max_message_gap_s * _NS_PER_S)
        self._idle: list[_Connection] = []
        # A threading semaphore is gevent's under Locust's monkey-patching: waiting yields the hub.
        self._slots = threading.BoundedSemaphore(s.max_connections)
        self.connects = 0

    @property
    def address(self) -> str:
        return f"{self._host}:{self._port}"

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def send(
        self, method: str, target: str, headers: Headers, body: bytes, recorded: Request | None = None
    ) -> SendResult:
        grpc, fields, trailers, offsets = h2_call(
            method, target, headers, body, recorded, scheme=self._scheme, authority=self._authority,
            prefix=self._prefix, speed=self._settings.message_speed, max_gap_ns=self._max_gap_ns,
        )  # fmt: skip
        with self._slots:
            for fresh in (False, True):
                try:
                    return self._call(fields, body, trailers, offsets, grpc, fresh)
                except _Refused:
                    continue
        return SendResult(Failure(FailureKind.RESET, "target refused the stream twice"))

    def _connect(self, deadline_ns: int) -> _Connection:
        timeout_s = min(self._settings.connect_timeout_s, max(0.001, (deadline_ns - time.monotonic_ns()) / _NS_PER_S))
        sock = socket.create_connection((self._host, self._port), timeout=timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                tls = self._ssl.wrap_socket(sock, server_hostname=self._host)
                sock = tls
                if tls.selected_alpn_protocol() != "h2":
                    raise ssl.SSLError(f"the target did not agree to h2 by ALPN ({tls.selected_alpn_protocol()})")
            self.connects += 1
            return _Connection(sock)
        except BaseException:
            sock.close()
            raise

    def _call(
        self,
        fields: list[Header],
        body: bytes,
        trailers: list[Header] | None,
        offsets: list[tuple[int, int]] | None,
        grpc: bool,
        fresh: bool,
    ) -> SendResult:
        """One attempt; raises ``_Refused`` when the stream may go again."""
        s = self._settings
        started_ns = time.monotonic_ns()
        deadline_ns = started_ns + int(s.timeout_s * _NS_PER_S)
        connection = None if fresh or not self._idle else self._idle.pop()
        if connection is None:
            try:
                connection = self._connect(deadline_ns)
            except TimeoutError:
                return SendResult(Failure(FailureKind.TIMEOUT, f"connect to {self.address} timed out"))
            except OSError as exc:
                return SendResult(
                    Failure(FailureKind.CONNECT_ERROR, f"connect to {self.address}: {exc.strerror or exc}")
                )
        reused = connection.used
        connection.used = True
        answer = _Answer()
        try:
            outcome = self._exchange(connection, answer, fields, body, trailers, offsets, grpc, started_ns, deadline_ns)
        except TimeoutError:
            connection.close()
            return SendResult(Failure(FailureKind.TIMEOUT, f"no complete answer within {s.timeout_s:g} s"))
        except h2.exceptions.ProtocolError as exc:
            connection.close()
            return SendResult(Failure(FailureKind.BAD_RESPONSE, f"HTTP/2 protocol error: {exc}"))
        except OSError as exc:
            connection.close()
            if reused and answer.first_byte_ns is None and fields[0][1] in IDEMPOTENT_METHOD_BYTES:
                raise _Refused from exc  # an idle connection the target had closed meanwhile
            return SendResult(Failure(FailureKind.RESET, f"connection to {self.address} lost: {exc}"))
        except BaseException:
            connection.close()  # killed (the replay stopped): the target sees the connection go
            raise
        if answer.refused:
            if connection.reusable:
                self._idle.append(connection)
            else:
                connection.close()
            raise _Refused
        if connection.reusable and connection.h2.highest_outbound_stream_id < _MAX_STREAM_ID:
            self._idle.append(connection)
        else:
            connection.close()
        return SendResult(outcome, answer.first_byte_ns if isinstance(outcome, Response) else None)

    def _exchange(
        self,
        connection: _Connection,
        answer: _Answer,
        fields: list[Header],
        body: bytes,
        trailers: list[Header] | None,
        offsets: list[tuple[int, int]] | None,
        grpc: bool,
        started_ns: int,
        deadline_ns: int,
    ) -> Outcome:
        conn = connection.h2
        stream_id = conn.get_next_available_stream_id()
        # Frames wait in h2's buffer until the socket is read (``_read`` sends them first): a unary
        # call's HEADERS, DATA and end go in one write.
        conn.send_headers(stream_id, fields, end_stream=not body and not trailers)
        if body or trailers:
            pieces = [(len(body), 0)] if offsets is None else offsets
            start = 0
            for end, offset_ns in pieces:
                due_ns = started_ns + offset_ns
                # Never early; meanwhile the answer is read as it comes (a bidirectional call's
                # replies interleave with the requests), and one that ends the call ends the wait.
                while time.monotonic_ns() < due_ns and not answer.over():
                    try:
                        self._read(connection, answer, stream_id, grpc, started_ns, min(due_ns, deadline_ns))
                    except TimeoutError:
                        if time.monotonic_ns() >= deadline_ns:
                            raise
                if answer.over():
                    break
                self._send_data(connection, answer, stream_id, body[start:end], grpc, started_ns, deadline_ns)
                start = end
                if answer.over():
                    break  # the target answered (or failed) before the client had finished
            if not answer.over():
                if trailers:
                    conn.send_headers(stream_id, trailers, end_stream=True)
                else:
                    conn.end_stream(stream_id)
            elif answer.ended:
                # Our half is still open: end it as RFC 9113 8.1 says, without an error.
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    conn.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
                connection.flush()
        while not answer.over():
            self._read(connection, answer, stream_id, grpc, started_ns, deadline_ns)
        if answer.failure is not None:
            return answer.failure
        return Response(
            status=answer.status,
            reason="",
            headers=tuple(answer.headers),
            body=b"".join(answer.body),
            http_version="2",
            trailers=tuple(answer.trailers),
            messages=tuple(answer.messages),
        )

    def _send_data(
        self,
        connection: _Connection,
        answer: _Answer,
        stream_id: int,
        data: bytes,
        grpc: bool,
        started_ns: int,
        deadline_ns: int,
    ) -> None:
        conn = connection.h2
        view = memoryview(data)
        while view and not answer.over():
            window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            if window <= 0:
                self._read(connection, answer, stream_id, grpc, started_ns, deadline_ns)
                continue
            conn.send_data(stream_id, bytes(view[:window]))
            view = view[window:]

    def _read(
        self, connection: _Connection, answer: _Answer, stream_id: int, grpc: bool, started_ns: int, deadline_ns: int
    ) -> None:
        """Send what h2 holds, read once from the socket and apply what came for ``stream_id`` to
        ``answer``."""
        connection.flush()
        left_s = (deadline_ns - time.monotonic_ns()) / _NS_PER_S
        if left_s <= 0:
            raise TimeoutError
        connection.sock.settimeout(left_s)
        data = connection.sock.recv(_READ_BYTES)
        # Writes are bounded by the request's timeout, not by what was left of a wait.
        connection.sock.settimeout(self._settings.timeout_s)
        if not data:
            raise ConnectionResetError("closed by the target")
        conn = connection.h2
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                answer.first_byte_ns = time.monotonic_ns()
                for name, value in event.headers:
                    if name == b":status":
                        answer.status = int(value)
                    elif name[:1] != b":":
                        answer.headers.append((name, value))
                if grpc or is_grpc(tuple(answer.headers)):
                    answer.splitter = MessageSplitter(self._settings.max_body_bytes)
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                if answer.over():
                    continue  # after our reset (body too large): the connection is closed after this
                conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                self._on_data(connection, answer, stream_id, event.data, started_ns)
            elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == stream_id:
                answer.trailers = [(n, v) for n, v in event.headers if n[:1] != b":"]
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                answer.ended = answer.failure is None
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM and answer.first_byte_ns is None:
                    answer.refused = True
                    answer.failure = Failure(FailureKind.RESET, "refused")
                elif not answer.ended:
                    name = getattr(event.error_code, "name", event.error_code)
                    answer.failure = Failure(FailureKind.RESET, f"target reset the stream ({name})")
            elif isinstance(event, h2.events.ConnectionTerminated):
                connection.reusable = False
                if not answer.ended and answer.failure is None:
                    if event.last_stream_id is not None and event.last_stream_id < stream_id:
                        answer.refused = True
                        answer.failure = Failure(FailureKind.RESET, "refused")
                    elif event.error_code != h2.errors.ErrorCodes.NO_ERROR:
                        name = getattr(event.error_code, "name", event.error_code)
                        answer.failure = Failure(FailureKind.RESET, f"target sent GOAWAY ({name})")
        connection.flush()

    def _on_data(self, connection: _Connection, answer: _Answer, stream_id: int, data: bytes, started_ns: int) -> None:
        answer.size += len(data)
        limit = self._settings.max_body_bytes
        if answer.size > limit:
            connection.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            connection.reusable = False
            answer.failure = Failure(FailureKind.BODY_TOO_LARGE, f"response body over {limit} bytes")
            return
        answer.body.append(data)
        splitter = answer.splitter
        if splitter is not None:
            try:
                found = splitter.feed(data)
            except GrpcFramingError:
                answer.splitter = None
                return
            if found:
                at_ns = time.monotonic_ns() - started_ns
                answer.messages.extend(StreamMessage(int(m.compressed), len(m.data), at_ns) for m in found)
