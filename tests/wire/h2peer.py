"""A small HTTP/2 client and server for tests, on ``h2`` directly (asyncio streams, nothing of ours),
so the proxy's HTTP/2 side is checked against a peer it does not share code with.

``H2TestClient`` opens h2c (prior knowledge) or TLS (ALPN ``h2``), sends requests on streams of its
choice and collects each stream's response (head, body, trailers, or the reset code); ``send_raw``
writes bytes as they are, for malformed input. ``H2TestServer`` answers each request through a
handler that may reply, stream, send trailers or reset the stream, and records what each stream
carried (``H2TestServer.received``: header fields as decoded, body, trailers, how it ended); with
``strict=False`` it takes fields h2 would refuse (uppercase names, connection-specific fields), so a
test sees exactly what a peer sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

Header = tuple[bytes, bytes]


@dataclass
class H2Response:
    status: int = 0
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""
    trailers: list[Header] = field(default_factory=list)
    reset_code: int | None = None
    ended: bool = False

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def trailer(self, name: bytes) -> bytes | None:
        for key, value in self.trailers:
            if key == name:
                return value
        return None


class H2TestClient:
    """One HTTP/2 client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, auto_ack: bool = True) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.responses: dict[int, H2Response] = {}
        self._done: dict[int, asyncio.Future[H2Response]] = {}
        self.terminated: Any = None
        self.closed = asyncio.get_running_loop().create_future()
        #: Acknowledge response data as it arrives (False: the window stays shut until ``ack``).
        self.auto_ack = auto_ack
        self.unacked: dict[int, int] = {}
        self._window = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(
        cls, port: int, *, ssl_context: ssl.SSLContext | None = None, preface: bool = True, auto_ack: bool = True
    ) -> H2TestClient:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ssl_context, server_hostname="localhost" if ssl_context else None
        )
        client = cls(reader, writer, auto_ack=auto_ack)
        if preface:
            client.conn.initiate_connection()
            client.flush()
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def request(
        self,
        method: str,
        path: str,
        headers: list[Header] = (),  # type: ignore[assignment]
        body: bytes = b"",
        *,
        end: bool = True,
        authority: bytes = b"test.local",
    ) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        head = [(b":method", method.encode()), (b":scheme", b"http"), (b":authority", authority),
                (b":path", path.encode()), *headers]  # fmt: skip
        self.conn.send_headers(stream_id, head, end_stream=end and not body)
        self.responses[stream_id] = H2Response()
        self._done[stream_id] = asyncio.get_running_loop().create_future()
        if body:
            self.send_data(stream_id, body, end=end)
        self.flush()
        return stream_id

    def send_data(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """Send at once (the body must fit the windows and one frame; ``upload`` waits for them)."""
        self.conn.send_data(stream_id, data, end_stream=end)
        self.flush()

    async def upload(self, stream_id: int, data: bytes, *, end: bool = True) -> None:
        """Send a body of any size as the peer's windows open."""
        view = memoryview(data)
        while view:
            window = self.conn.local_flow_control_window(stream_id)
            if window <= 0:
                self._window.clear()
                await self._window.wait()
                continue
            size = min(len(view), window, self.conn.max_outbound_frame_size)
            self.conn.send_data(stream_id, bytes(view[:size]))
            view = view[size:]
            self.flush()
        if end:
            self.end(stream_id)

    def end(self, stream_id: int, trailers: list[Header] | None = None) -> None:
        if trailers:
            self.conn.send_headers(stream_id, trailers, end_stream=True)
        else:
            self.conn.end_stream(stream_id)
        self.flush()

    def reset(self, stream_id: int, code: int = 0x8) -> None:
        self.conn.reset_stream(stream_id, code)
        self.flush()

    def ack(self, stream_id: int) -> None:
        size = self.unacked.pop(stream_id, 0)
        if size:
            self.conn.acknowledge_received_data(size, stream_id)
            self.flush()

    async def response(self, stream_id: int, timeout_s: float = 10.0) -> H2Response:
        async with asyncio.timeout(timeout_s):
            return await self._done[stream_id]

    async def get(self, path: str, headers: list[Header] = (), timeout_s: float = 10.0) -> H2Response:  # type: ignore[assignment]
        return await self.response(self.request("GET", path, headers), timeout_s)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close_connection()
            self.flush()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task

    def _finish(self, stream_id: int) -> None:
        done = self._done.get(stream_id)
        if done is not None and not done.done():
            done.set_result(self.responses[stream_id])

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for event in events:
                    self._event(event)
                self.flush()
        except (ConnectionError, OSError):
            pass
        finally:
            for stream_id in list(self._done):
                self._finish(stream_id)
            self._window.set()
            if not self.closed.done():
                self.closed.set_result(None)

    def _event(self, event: Any) -> None:
        response = self.responses.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and response is not None:
            for name, value in event.headers:
                if name == b":status":
                    response.status = int(value)
                else:
                    response.headers.append((name, value))
        elif isinstance(event, h2.events.DataReceived) and response is not None:
            response.body += event.data
            if self.auto_ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                self.unacked[event.stream_id] = self.unacked.get(event.stream_id, 0) + event.flow_controlled_length
        elif isinstance(event, h2.events.TrailersReceived) and response is not None:
            response.trailers = list(event.headers)
        elif isinstance(event, h2.events.StreamEnded) and response is not None:
            response.ended = True
            self._finish(event.stream_id)
        elif isinstance(event, h2.events.StreamReset) and response is not None:
            response.reset_code = int(event.error_code)
            self._finish(event.stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = event
        if isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._window.set()


@dataclass
class ReceivedStream:
    """What one request stream carried to ``H2TestServer``, as it arrived."""

    headers: list[Header]
    body: bytearray = field(default_factory=bytearray)
    trailers: list[Header] = field(default_factory=list)
    ended: bool = False
    reset_code: int | None = None


#: A handler gets the request (headers incl. pseudo-headers, body, trailers) and a responder.
Handler = Callable[[list[Header], bytes, list[Header], "Responder"], Awaitable[None]]


class Responder:
    def __init__(self, server: _ServerConnection, stream_id: int) -> None:
        self._server = server
        self.stream_id = stream_id

    def head(self, status: int, headers: list[Header] = (), *, end: bool = False) -> None:  # type: ignore[assignment]
        self._server.conn.send_headers(self.stream_id, [(b":status", b"%d" % status), *headers], end_stream=end)
        self._server.flush()

    async def data(self, data: bytes, *, end: bool = False) -> None:
        """Send respecting the client's window (waits for it to open)."""
        conn = self._server.conn
        view = memoryview(data)
        while view:
            window = conn.local_flow_control_window(self.stream_id)
            if window <= 0:
                await self._server.window_opened()
                continue
            size = min(len(view), window, conn.max_outbound_frame_size)
            conn.send_data(self.stream_id, bytes(view[:size]))
            view = view[size:]
            self._server.flush()
        if end:
            conn.end_stream(self.stream_id)
            self._server.flush()

    def trailers(self, headers: list[Header]) -> None:
        self._server.conn.send_headers(self.stream_id, headers, end_stream=True)
        self._server.flush()

    def reset(self, code: int = 0x2) -> None:
        self._server.conn.reset_stream(self.stream_id, code)
        self._server.flush()

    def goaway(self, last_stream_id: int, code: int = 0) -> None:
        self._server.conn.close_connection(error_code=code, last_stream_id=last_stream_id)
        self._server.flush()


class _ServerConnection:
    def __init__(
        self,
        handler: Handler,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        received: list[ReceivedStream] | None = None,
        strict: bool = True,
        early: Callable[[list[Header]], bool] | None = None,
    ) -> None:
        self.handler = handler
        self.early = early
        self.reader = reader
        self.writer = writer
        self.received: list[ReceivedStream] = [] if received is None else received
        self._streams: dict[int, ReceivedStream] = {}
        # Sends what the handler says, malformed or not (tests of how a peer copes with that).
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=strict,
            normalize_inbound_headers=strict,
        )
        self.conn = h2.connection.H2Connection(config)
        self.requests: dict[int, tuple[list[Header], bytearray, list[Header]]] = {}
        self._window = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def window_opened(self) -> None:
        self._window.clear()
        await self._window.wait()

    async def run(self) -> None:
        self.conn.initiate_connection()
        self.flush()
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    self.flush()
                    break
                for event in events:
                    self._record(event)
                    if isinstance(event, h2.events.RequestReceived):
                        self.requests[event.stream_id] = (list(event.headers), bytearray(), [])
                        if self.early is not None and self.early(list(event.headers)):
                            # Answered at its head, before (and whatever) its body.
                            self._call(list(event.headers), b"", [], event.stream_id)
                    elif isinstance(event, h2.events.DataReceived):
                        self.requests[event.stream_id][1].extend(event.data)
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.TrailersReceived):
                        self.requests[event.stream_id][2].extend(event.headers)
                    elif isinstance(event, h2.events.StreamReset):
                        self.requests.pop(event.stream_id, None)
                    elif isinstance(event, h2.events.StreamEnded):
                        headers, body, trailers = self.requests.pop(event.stream_id, ([], bytearray(), []))
                        if headers and not (self.early is not None and self.early(headers)):
                            self._call(headers, bytes(body), trailers, event.stream_id)
                    elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                        self._window.set()
                self.flush()
        except (ConnectionError, OSError):
            pass
        finally:
            self._window.set()
            self.writer.close()

    def _call(self, headers: list[Header], body: bytes, trailers: list[Header], stream_id: int) -> None:
        task = asyncio.get_running_loop().create_task(self.handler(headers, body, trailers, Responder(self, stream_id)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _record(self, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            stream = ReceivedStream(list(event.headers))
            self._streams[event.stream_id] = stream
            self.received.append(stream)
            return
        stream = self._streams.get(getattr(event, "stream_id", 0) or 0)
        if stream is None:
            return
        if isinstance(event, h2.events.DataReceived):
            stream.body.extend(event.data)
        elif isinstance(event, h2.events.TrailersReceived):
            stream.trailers.extend(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            stream.ended = True
        elif isinstance(event, h2.events.StreamReset):
            stream.reset_code = int(event.error_code)


class H2TestServer:
    """An h2c server on 127.0.0.1 (port 0) calling ``handler`` for each complete request."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_concurrent_streams: int | None = None,
        strict: bool = True,
        max_header_list_size: int | None = None,
        early: Callable[[list[Header]], bool] | None = None,
    ) -> None:
        self.handler = handler
        #: Requests whose head this picks are answered at once, without waiting for their body.
        self.early = early
        self.max_concurrent_streams = max_concurrent_streams
        #: False: take fields h2 would refuse as malformed, to record them.
        self.strict = strict
        #: Advertised in SETTINGS and enforced by h2 (a larger head is a connection error).
        self.max_header_list_size = max_header_list_size
        self.server: asyncio.Server | None = None
        self.connections: list[_ServerConnection] = []
        #: Every request stream any connection received, in the order they opened.
        self.received: list[ReceivedStream] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> H2TestServer:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _ServerConnection(self.handler, reader, writer, self.received, self.strict, self.early)
        initial: dict[Any, int] = {}
        if self.max_concurrent_streams is not None:
            initial[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = self.max_concurrent_streams
        if self.max_header_list_size is not None:
            initial[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] = self.max_header_list_size
            # h2 takes initial values as already acknowledged: its decoder would not enforce them.
            conn.conn.decoder.max_header_list_size = self.max_header_list_size
        if initial:
            conn.conn.local_settings = h2.settings.Settings(client=False, initial_values=initial)
        self.connections.append(conn)
        await conn.run()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in self.connections:
                conn.writer.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
