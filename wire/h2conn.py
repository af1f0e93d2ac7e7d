"""A sans-IO HTTP/2 connection (RFC 9113), both roles, compiled with the data path: bytes in, events
out, frames out as bytes appended to one buffer (``data_to_send``). The proxy's client-facing side
(``shadowtap.proxy.h2server``) and the wire layer's client (``shadowtap.wire.h2``) run on it.

It keeps ``h2``'s API where the callers use it (``receive_data`` returning events with h2's names and
attributes, ``send_headers``, ``send_data``, ``end_stream``, ``reset_stream``, ``close_connection``,
``acknowledge_received_data`` with h2's window-update rule, ``local_flow_control_window``...) and its
exception roles, but no frame objects, flag sets or trace log: a frame is parsed in place from the
receive buffer and written as its 9-octet header and payload. ``h2`` stays the reference:
``tests/wire/test_h2conn.py`` runs this connection against h2's on the other side.

What it does (RFC 9113): framing of every frame type (unknown types ignored), padding, PRIORITY in
HEADERS (ignored, but checked), SETTINGS_MAX_FRAME_SIZE both ways, a header block in CONTINUATION
frames bounded in frames and bytes, the client preface; stream states (5.1) with the right error
kind (a stream error is RST_STREAM and a ``StreamReset`` event; a connection error is GOAWAY and a
``ProtocolError`` raised from ``receive_data``), frames on streams we reset ignored (their DATA still
credits the connection window), stream id rules, MAX_CONCURRENT_STREAMS both ways, GOAWAY both ways;
flow control both ways (connection and stream windows, SETTINGS_INITIAL_WINDOW_SIZE applied to open
streams, overflow as FLOW_CONTROL_ERROR); HPACK through ``shadowtap.wire.hpack``.

What it leaves to its users: header field validation (``shadowtap.wire.h2fields``, the client's own
checks) and content-length (checked per stream by whoever reads the DATA). Server push is never
enabled (a PUSH_PROMISE is a protocol error). It must stay free of I/O and policy.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

import hpack.exceptions

from shadowtap.wire.hpack import Decoder, Encoder

__all__ = [
    "CANCEL",
    "COMPRESSION_ERROR",
    "ENHANCE_YOUR_CALM",
    "FLOW_CONTROL_ERROR",
    "FRAME_SIZE_ERROR",
    "NO_ERROR",
    "PREFACE",
    "PROTOCOL_ERROR",
    "REFUSED_STREAM",
    "STREAM_CLOSED",
    "ConnectionTerminated",
    "DataReceived",
    "FlowControlError",
    "FrameTooLargeError",
    "H2Connection",
    "InformationalResponseReceived",
    "NoSuchStreamError",
    "PingAckReceived",
    "PingReceived",
    "ProtocolError",
    "RemoteSettingsChanged",
    "RequestReceived",
    "ResponseReceived",
    "SettingsAcknowledged",
    "StreamClosedError",
    "StreamEnded",
    "StreamReset",
    "TooManyStreamsError",
    "TrailersReceived",
    "WindowUpdated",
]

#: The client connection preface (RFC 9113 3.4).
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Error codes (RFC 9113 7).
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
SETTINGS_TIMEOUT: Final = 0x4
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

# Frame types (RFC 9113 6).
_DATA: Final = 0x0
_HEADERS: Final = 0x1
_PRIORITY: Final = 0x2
_RST_STREAM: Final = 0x3
_SETTINGS: Final = 0x4
_PUSH_PROMISE: Final = 0x5
_PING: Final = 0x6
_GOAWAY: Final = 0x7
_WINDOW_UPDATE: Final = 0x8
_CONTINUATION: Final = 0x9

# Flags.
_END_STREAM: Final = 0x1
_ACK: Final = 0x1
_END_HEADERS: Final = 0x4
_PADDED: Final = 0x8
_PRIORITY_FLAG: Final = 0x20

# Settings (RFC 9113 6.5.2).
HEADER_TABLE_SIZE: Final = 0x1
ENABLE_PUSH: Final = 0x2
MAX_CONCURRENT_STREAMS: Final = 0x3
INITIAL_WINDOW_SIZE: Final = 0x4
MAX_FRAME_SIZE: Final = 0x5
MAX_HEADER_LIST_SIZE: Final = 0x6

_DEFAULT_WINDOW: Final = 65535
_DEFAULT_MAX_FRAME: Final = 16384
_LARGEST_FRAME: Final = (1 << 24) - 1
_LARGEST_WINDOW: Final = (1 << 31) - 1
#: What the peer's MAX_CONCURRENT_STREAMS is taken to be until its SETTINGS say (h2's assumption).
_ASSUMED_MAX_STREAMS: Final = 100
#: CONTINUATION frames one header block may take (h2's bound): more is a flood.
_MAX_CONTINUATIONS: Final = 64
#: Closed streams remembered (how they closed decides what a late frame on them is).
_MAX_CLOSED: Final = 1 << 16

# How a remembered stream closed.
_CLOSED_BY_RESET_SENT: Final = 1
_CLOSED_BY_RESET_RECEIVED: Final = 2
_CLOSED_BY_END: Final = 3


# --- exceptions --------------------------------------------------------------------------------------------


class ProtocolError(Exception):
    """The peer (or the caller) broke the protocol. Raised from ``receive_data``, it is a connection
    error: GOAWAY with ``error_code`` is queued and the connection takes no more input."""

    # The code is set per instance: a compiled exception class keeps no class attribute defaults.
    def __init__(self, message: str = "", error_code: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.error_code = error_code


class FrameTooLargeError(ProtocolError):
    def __init__(self, message: str = "") -> None:
        super().__init__(message, FRAME_SIZE_ERROR)


class TooManyStreamsError(ProtocolError):
    """A new stream past MAX_CONCURRENT_STREAMS (ours from the peer: ENHANCE_YOUR_CALM)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message, ENHANCE_YOUR_CALM)


class FlowControlError(ProtocolError):
    def __init__(self, message: str = "") -> None:
        super().__init__(message, FLOW_CONTROL_ERROR)


class NoSuchStreamError(ProtocolError):
    """The stream is unknown (idle) or gone."""


class StreamClosedError(NoSuchStreamError):
    """The stream is closed (or our half of it is) for what was asked."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message, STREAM_CLOSED)


# --- events ----------------------------------------------------------------------------------------------


class Event:
    """What a received frame meant (h2's event names and attributes)."""


class RequestReceived(Event):
    def __init__(self, stream_id: int, headers: list[Any], stream_ended: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        #: The HEADERS frame ended the stream (a ``StreamEnded`` follows).
        self.stream_ended = stream_ended


class ResponseReceived(Event):
    def __init__(self, stream_id: int, headers: list[Any], stream_ended: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.stream_ended = stream_ended


class InformationalResponseReceived(Event):
    def __init__(self, stream_id: int, headers: list[Any]) -> None:
        self.stream_id = stream_id
        self.headers = headers


class TrailersReceived(Event):
    def __init__(self, stream_id: int, headers: list[Any]) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.stream_ended = True


class DataReceived(Event):
    def __init__(self, stream_id: int, data: bytes, flow_controlled_length: int, stream_ended: bool) -> None:
        self.stream_id = stream_id
        self.data = data
        #: The frame's whole payload (padding included): what ``acknowledge_received_data`` must credit.
        self.flow_controlled_length = flow_controlled_length
        self.stream_ended = stream_ended


class StreamEnded(Event):
    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class StreamReset(Event):
    def __init__(self, stream_id: int, error_code: int, remote_reset: bool) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        #: The peer reset it (False: we did, for a stream error in what it sent).
        self.remote_reset = remote_reset


class WindowUpdated(Event):
    def __init__(self, stream_id: int, delta: int) -> None:
        self.stream_id = stream_id
        self.delta = delta


class RemoteSettingsChanged(Event):
    def __init__(self, changed_settings: dict[int, int]) -> None:
        #: Setting code -> new value, for each setting the frame carried.
        self.changed_settings = changed_settings


class SettingsAcknowledged(Event):
    pass


class PingReceived(Event):
    def __init__(self, ping_data: bytes) -> None:
        self.ping_data = ping_data


class PingAckReceived(Event):
    def __init__(self, ping_data: bytes) -> None:
        self.ping_data = ping_data


class ConnectionTerminated(Event):
    def __init__(self, error_code: int, last_stream_id: int, additional_data: bytes) -> None:
        self.error_code = error_code
        self.last_stream_id = last_stream_id
        self.additional_data = additional_data


# --- streams and windows ---------------------------------------------------------------------------------


class _Stream:
    """An open or half-closed stream."""

    def __init__(self, stream_id: int, inbound: bool, send_window: int, receive_window: int) -> None:
        self.stream_id = stream_id
        #: The peer opened it.
        self.inbound = inbound
        #: What we may send (the peer's window for this stream).
        self.send_window = send_window
        #: h2's receive-window manager: the window the peer sees, its largest, and bytes the
        #: application processed since the last WINDOW_UPDATE.
        self.receive_window = receive_window
        self.receive_window_max = receive_window
        self.processed = 0
        #: We sent END_STREAM (half-closed local).
        self.local_closed = False
        #: The peer sent END_STREAM (half-closed remote).
        self.remote_closed = False
        #: The peer's first (non-informational) header block arrived: the next one is trailers.
        self.head_received = False


def _window_increment(current: int, largest: int, processed: int) -> int:
    """h2's rule (``WindowManager._maybe_update_window``): how much to reopen a receive window after
    ``processed`` bytes were handed on, 0 to wait for more (fewer, larger WINDOW_UPDATE frames)."""
    if not processed:
        return 0
    if current == 0 and processed > min(1024, largest // 4):
        return min(processed, largest - current)
    if processed >= largest // 2:
        return min(processed, largest - current)
    return 0


def _frame_header(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    # Two integers that fit a machine word each (one of 72 bits would be a Python long).
    return ((length << 8) | kind).to_bytes(4, "big") + ((flags << 32) | stream_id).to_bytes(5, "big")


# --- the connection ------------------------------------------------------------------------------------


class H2Connection:
    """One HTTP/2 connection's state, either role. Not thread-safe; nothing here blocks or waits."""

    def __init__(
        self,
        client_side: bool,
        *,
        max_concurrent_streams: int = 100,
        initial_window_size: int = _DEFAULT_WINDOW,
        max_header_list_size: int = 1 << 16,
        max_frame_size: int = _DEFAULT_MAX_FRAME,
    ) -> None:
        self.client_side = client_side
        # Our settings (advertised by ``initiate_connection``, in force from the start: a peer that
        # has not read them yet uses the defaults, which never exceed them here).
        self.local_max_concurrent_streams = max_concurrent_streams
        self.local_initial_window_size = initial_window_size
        self.local_max_header_list_size = max_header_list_size
        self.local_max_frame_size = max_frame_size
        # The peer's settings, at their defaults until its SETTINGS arrive.
        self.remote_max_concurrent_streams = _ASSUMED_MAX_STREAMS
        self.remote_initial_window_size = _DEFAULT_WINDOW
        #: The peer's SETTINGS_MAX_HEADER_LIST_SIZE, -1 while it set none.
        self.remote_max_header_list_size = -1
        self.max_outbound_frame_size = _DEFAULT_MAX_FRAME
        self.encoder = Encoder()
        self.decoder = Decoder(max_header_list_size)
        self.streams: dict[int, _Stream] = {}
        #: Closed streams remembered (how each closed), and their ids oldest first.
        self._closed: dict[int, int] = {}
        self._closed_order: deque[int] = deque()
        self._out = bytearray()
        self._in = b""
        #: The client preface still expected (server role), and whether the peer's first frame (its
        #: SETTINGS) is still to come.
        self._preface_pending = not client_side
        self._first_frame = True
        self.highest_inbound_stream_id = 0
        self.highest_outbound_stream_id = 0
        self._open_inbound = 0
        self._open_outbound = 0
        # The connection's windows: what we may send, and h2's receive-window manager.
        self.outbound_flow_control_window = _DEFAULT_WINDOW
        self._receive_window = _DEFAULT_WINDOW
        self._receive_window_max = _DEFAULT_WINDOW
        self._processed = 0
        #: A header block in CONTINUATION frames: its stream (0: none), frame kind, flags, bytes, frames.
        self._block_stream = 0
        self._block_flags = 0
        self._block_self_dependent = False
        self._block = bytearray()
        self._block_frames = 0
        #: We sent GOAWAY (new streams above ``_goaway_last`` are refused), the peer did, or a
        #: connection error ended it (nothing more is read or sent).
        self._goaway_sent = False
        self._goaway_last = 0
        self.goaway_received = False
        self._failed = False
        self._settings_unacked = 0

    # --- the peer's side ---------------------------------------------------------------------------------

    def initiate_connection(self) -> None:
        """Queue the preface (client role) and our SETTINGS."""
        if self.client_side:
            self._out += PREFACE
        payload = bytearray()
        if self.client_side:
            payload += _setting(ENABLE_PUSH, 0)
        else:
            payload += _setting(MAX_CONCURRENT_STREAMS, self.local_max_concurrent_streams)
        if self.local_initial_window_size != _DEFAULT_WINDOW:
            payload += _setting(INITIAL_WINDOW_SIZE, self.local_initial_window_size)
        if self.local_max_frame_size != _DEFAULT_MAX_FRAME:
            payload += _setting(MAX_FRAME_SIZE, self.local_max_frame_size)
        payload += _setting(MAX_HEADER_LIST_SIZE, self.local_max_header_list_size)
        self._out += _frame_header(len(payload), _SETTINGS, 0, 0)
        self._out += payload
        self._settings_unacked += 1

    def receive_data(self, data: bytes) -> list[Event]:
        """Read ``data``; return what it meant. Raises ``ProtocolError`` on a connection error (its
        GOAWAY queued first)."""
        if self._failed:
            raise ProtocolError("the connection has ended with an error")
        events: list[Event] = []
        try:
            self._receive(data, events)
        except ProtocolError as exc:
            self._fail(exc.error_code, str(exc))
            raise
        # Names of their own: compiled, one name is one type in the whole function.
        except hpack.exceptions.OversizedHeaderListError as oversized:
            self._fail(ENHANCE_YOUR_CALM, str(oversized))
            raise ProtocolError(f"a header list over the limit: {oversized}", ENHANCE_YOUR_CALM) from None
        except hpack.exceptions.HPACKError as undecodable:
            self._fail(COMPRESSION_ERROR, str(undecodable))
            raise ProtocolError(f"a header block that does not decode: {undecodable}", COMPRESSION_ERROR) from None
        return events

    def _fail(self, code: int, message: str) -> None:
        self._failed = True
        self._goaway(self.highest_inbound_stream_id, code, message.encode("utf-8", "replace")[:256])

    def _receive(self, data: bytes, events: list[Event]) -> None:
        buf = self._in + data if self._in else data
        at = 0
        if self._preface_pending:
            size = min(len(buf), 24)
            if buf[:size] != PREFACE[:size]:
                raise ProtocolError("Invalid HTTP/2 preamble (not an HTTP/2 client preface)")
            if size < 24:
                self._in = buf
                return
            self._preface_pending = False
            at = 24
        end = len(buf)
        limit = self.local_max_frame_size
        while end - at >= 9:
            length = (buf[at] << 16) | (buf[at + 1] << 8) | buf[at + 2]
            kind = buf[at + 3]
            flags = buf[at + 4]
            stream_id = ((buf[at + 5] & 0x7F) << 24) | (buf[at + 6] << 16) | (buf[at + 7] << 8) | buf[at + 8]
            if length > limit:
                raise FrameTooLargeError(f"a frame of {length} bytes is over SETTINGS_MAX_FRAME_SIZE {limit}")
            if end - at - 9 < length:
                break
            payload = buf[at + 9 : at + 9 + length]
            at += 9 + length
            self._frame(kind, flags, stream_id, payload, events)
        self._in = buf[at:] if at < end else b""

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if self._first_frame:
            if kind != _SETTINGS or flags & _ACK:
                raise ProtocolError("the peer's first frame is not SETTINGS")
            self._first_frame = False
        if self._block_stream:
            if kind != _CONTINUATION or stream_id != self._block_stream:
                raise ProtocolError("a header block interrupted before its END_HEADERS (expected CONTINUATION)")
            self._continuation(flags, payload, events)
            return
        if kind == _DATA:
            self._data(flags, stream_id, payload, events)
        elif kind == _HEADERS:
            self._headers(flags, stream_id, payload, events)
        elif kind == _WINDOW_UPDATE:
            self._window_update(stream_id, payload, events)
        elif kind == _RST_STREAM:
            self._rst_stream(stream_id, payload, events)
        elif kind == _SETTINGS:
            self._settings(flags, stream_id, payload, events)
        elif kind == _PING:
            if stream_id:
                raise ProtocolError("PING on a stream")
            if len(payload) != 8:
                raise FrameTooLargeError(f"PING of {len(payload)} bytes (8 expected)")
            if flags & _ACK:
                events.append(PingAckReceived(payload))
            else:
                self._out += _frame_header(8, _PING, _ACK, 0)
                self._out += payload
                events.append(PingReceived(payload))
        elif kind == _GOAWAY:
            self._goaway_frame(stream_id, payload, events)
        elif kind == _PRIORITY:
            if not stream_id:
                raise ProtocolError("PRIORITY on stream 0")
            if len(payload) != 5:
                self._stream_error(stream_id, FRAME_SIZE_ERROR, events)
            elif _dependency(payload, 0) == stream_id:
                self._stream_error(stream_id, PROTOCOL_ERROR, events)
        elif kind == _PUSH_PROMISE:
            raise ProtocolError("PUSH_PROMISE received (server push is disabled)")
        elif kind == _CONTINUATION:
            raise ProtocolError("CONTINUATION without a header block to continue")
        # Unknown frame types are ignored (RFC 9113 4.1, 5.5).

    # --- frames ------------------------------------------------------------------------------------------

    def _unpad(self, flags: int, payload: bytes) -> bytes:
        if not flags & _PADDED:
            return payload
        if not payload:
            raise FrameTooLargeError("a PADDED frame too short for its pad length")
        pad = payload[0]
        if pad >= len(payload):
            raise ProtocolError(f"padding of {pad} bytes in a frame of {len(payload)}")
        return payload[1 : len(payload) - pad]

    def _data(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolError("DATA on stream 0")
        size = len(payload)
        data = self._unpad(flags, payload)
        self._receive_window -= size
        if self._receive_window < 0:
            raise FlowControlError("DATA beyond the connection's flow-control window")
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            closed_by = self._closed_how(stream_id) if stream is None else _CLOSED_BY_END
            # Nothing will read it: its bytes go back to the connection's window at once.
            self._credit_connection(size)
            if closed_by != _CLOSED_BY_RESET_SENT:
                self._stream_error(stream_id, STREAM_CLOSED, events)
            return
        stream.receive_window -= size
        if stream.receive_window < 0:
            self._credit_connection(size)
            self._stream_error(stream_id, FLOW_CONTROL_ERROR, events)
            return
        ended = bool(flags & _END_STREAM)
        events.append(DataReceived(stream_id, data, size, ended))
        if ended:
            self._remote_end(stream, events)

    def _closed_how(self, stream_id: int) -> int:
        """How a stream not open closed; a connection error when it is idle (never opened)."""
        how = self._closed.get(stream_id, 0)
        if how:
            return how
        inbound = (stream_id & 1) == (0 if self.client_side else 1)
        highest = self.highest_inbound_stream_id if inbound else self.highest_outbound_stream_id
        if stream_id > highest:
            raise ProtocolError(f"a frame on idle stream {stream_id}")
        # Implicitly closed (a higher id was opened) or forgotten: closed.
        return _CLOSED_BY_END

    def _headers(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolError("HEADERS on stream 0")
        block = self._unpad(flags, payload)
        self_dependent = False
        if flags & _PRIORITY_FLAG:
            if len(block) < 5:
                raise FrameTooLargeError("HEADERS too short for its priority fields")
            self_dependent = _dependency(block, 0) == stream_id
            block = block[5:]
        if not flags & _END_HEADERS:
            self._block_stream = stream_id
            self._block_flags = flags
            self._block_self_dependent = self_dependent
            self._block = bytearray(block)
            self._block_frames = 0
            return
        self._header_block(flags, stream_id, block, self_dependent, events)

    def _continuation(self, flags: int, payload: bytes, events: list[Event]) -> None:
        self._block_frames += 1
        self._block += payload
        if self._block_frames > _MAX_CONTINUATIONS:
            message = f"a header block in over {_MAX_CONTINUATIONS} CONTINUATION frames"
            raise ProtocolError(message, ENHANCE_YOUR_CALM)
        if len(self._block) > 2 * self.local_max_header_list_size + 65536:
            message = f"a header block of {len(self._block)} bytes in CONTINUATION frames"
            raise ProtocolError(message, ENHANCE_YOUR_CALM)
        if flags & _END_HEADERS:
            stream_id = self._block_stream
            block = bytes(self._block)
            self._block_stream = 0
            self._block = bytearray()
            self._header_block(self._block_flags, stream_id, block, self._block_self_dependent, events)

    def _header_block(
        self, flags: int, stream_id: int, block: bytes, self_dependent: bool, events: list[Event]
    ) -> None:
        """A whole header block (HEADERS and its CONTINUATION frames) for ``stream_id``. It is
        decoded whatever becomes of it: the HPACK state must follow every block."""
        ended = bool(flags & _END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is None:
            how = self._closed.get(stream_id, 0)
            if how:
                self.decoder.decode(block)
                if how != _CLOSED_BY_RESET_SENT:
                    self._stream_error(stream_id, STREAM_CLOSED, events)
                return
            if self.client_side or stream_id & 1 == 0:
                # Not a stream the peer may open (no pushes): one of ours implicitly closed, or idle.
                ours = (stream_id & 1) == (1 if self.client_side else 0)
                if ours and stream_id <= self.highest_outbound_stream_id:
                    self.decoder.decode(block)
                    self._stream_error(stream_id, STREAM_CLOSED, events)
                    return
                raise ProtocolError(f"HEADERS on stream {stream_id}, which the peer cannot open")
            if stream_id <= self.highest_inbound_stream_id:
                raise ProtocolError(f"a new stream {stream_id} not above stream {self.highest_inbound_stream_id}")
            headers = self.decoder.decode(block)
            self.highest_inbound_stream_id = stream_id
            if self._goaway_sent and stream_id > self._goaway_last:
                self._reset(stream_id, REFUSED_STREAM)
                return
            if self_dependent:
                self._reset(stream_id, PROTOCOL_ERROR)
                return
            if self._open_inbound + 1 > self.local_max_concurrent_streams:
                raise TooManyStreamsError(
                    f"a stream past MAX_CONCURRENT_STREAMS ({self.local_max_concurrent_streams} open)"
                )
            stream = _Stream(stream_id, True, self.remote_initial_window_size, self.local_initial_window_size)
            self.streams[stream_id] = stream
            self._open_inbound += 1
            stream.head_received = True
            events.append(RequestReceived(stream_id, headers, ended))
            if ended:
                self._remote_end(stream, events)
            return
        headers = self.decoder.decode(block)
        if stream.remote_closed or self_dependent:
            self._stream_error(stream_id, PROTOCOL_ERROR if self_dependent else STREAM_CLOSED, events)
            return
        if stream.head_received:
            if not ended:
                # Trailers without END_STREAM are malformed (RFC 9113 8.1): an error of that stream.
                self._stream_error(stream_id, PROTOCOL_ERROR, events)
                return
            events.append(TrailersReceived(stream_id, headers))
        elif self.client_side:
            status = b""
            for field in headers:
                if field[0] == b":status":
                    status = field[1]
                    break
            if len(status) == 3 and status[:1] == b"1":
                if ended:
                    self._stream_error(stream_id, PROTOCOL_ERROR, events)
                    return
                events.append(InformationalResponseReceived(stream_id, headers))
                return
            stream.head_received = True
            events.append(ResponseReceived(stream_id, headers, ended))
        else:
            # A server's own stream carries no request (pushes are never opened).
            self._stream_error(stream_id, PROTOCOL_ERROR, events)
            return
        if ended:
            self._remote_end(stream, events)

    def _window_update(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            raise FrameTooLargeError(f"WINDOW_UPDATE of {len(payload)} bytes (4 expected)")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise ProtocolError("a WINDOW_UPDATE of 0 for the connection")
            window = self.outbound_flow_control_window + increment
            if window > _LARGEST_WINDOW:
                raise FlowControlError("the connection's flow-control window over 2^31-1")
            self.outbound_flow_control_window = window
            events.append(WindowUpdated(0, increment))
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            self._closed_how(stream_id)  # idle: a connection error; closed: ignored
            return
        if not increment:
            self._stream_error(stream_id, PROTOCOL_ERROR, events)
            return
        window = stream.send_window + increment
        if window > _LARGEST_WINDOW:
            self._stream_error(stream_id, FLOW_CONTROL_ERROR, events)
            return
        stream.send_window = window
        events.append(WindowUpdated(stream_id, increment))

    def _rst_stream(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolError("RST_STREAM on stream 0")
        if len(payload) != 4:
            raise FrameTooLargeError(f"RST_STREAM of {len(payload)} bytes (4 expected)")
        stream = self.streams.get(stream_id)
        if stream is None:
            self._closed_how(stream_id)  # idle: a connection error; closed: ignored
            return
        self._forget(stream, _CLOSED_BY_RESET_RECEIVED)
        events.append(StreamReset(stream_id, int.from_bytes(payload, "big"), True))

    def _settings(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id:
            raise ProtocolError("SETTINGS on a stream")
        if flags & _ACK:
            if payload:
                raise FrameTooLargeError("a SETTINGS acknowledgement with a payload")
            if self._settings_unacked:
                self._settings_unacked -= 1
            events.append(SettingsAcknowledged())
            return
        if len(payload) % 6:
            raise FrameTooLargeError(f"SETTINGS of {len(payload)} bytes (a multiple of 6 expected)")
        changed: dict[int, int] = {}
        for at in range(0, len(payload), 6):
            code = (payload[at] << 8) | payload[at + 1]
            value = int.from_bytes(payload[at + 2 : at + 6], "big")
            if code == HEADER_TABLE_SIZE:
                self.encoder.header_table_size = value
            elif code == ENABLE_PUSH:
                if value > 1 or (value == 1 and self.client_side):  # a server may not offer pushes
                    raise ProtocolError(f"SETTINGS_ENABLE_PUSH of {value}")
            elif code == MAX_CONCURRENT_STREAMS:
                self.remote_max_concurrent_streams = value
            elif code == INITIAL_WINDOW_SIZE:
                if value > _LARGEST_WINDOW:
                    raise FlowControlError(f"SETTINGS_INITIAL_WINDOW_SIZE of {value}")
                delta = value - self.remote_initial_window_size
                self.remote_initial_window_size = value
                if delta:
                    for stream in self.streams.values():
                        stream.send_window += delta
                        if stream.send_window > _LARGEST_WINDOW:
                            raise FlowControlError("SETTINGS_INITIAL_WINDOW_SIZE put a stream's window over 2^31-1")
            elif code == MAX_FRAME_SIZE:
                if not _DEFAULT_MAX_FRAME <= value <= _LARGEST_FRAME:
                    raise ProtocolError(f"SETTINGS_MAX_FRAME_SIZE of {value}")
                self.max_outbound_frame_size = value
            elif code == MAX_HEADER_LIST_SIZE:
                self.remote_max_header_list_size = value
            else:
                continue  # unknown settings are ignored
            changed[code] = value
        self._out += _frame_header(0, _SETTINGS, _ACK, 0)
        events.append(RemoteSettingsChanged(changed))

    def _goaway_frame(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id:
            raise ProtocolError("GOAWAY on a stream")
        if len(payload) < 8:
            raise FrameTooLargeError(f"GOAWAY of {len(payload)} bytes (8 at least)")
        self.goaway_received = True
        last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        code = int.from_bytes(payload[4:8], "big")
        events.append(ConnectionTerminated(code, last, payload[8:]))

    # --- stream bookkeeping ------------------------------------------------------------------------------

    def _remote_end(self, stream: _Stream, events: list[Event]) -> None:
        stream.remote_closed = True
        events.append(StreamEnded(stream.stream_id))
        if stream.local_closed:
            self._forget(stream, _CLOSED_BY_END)

    def _forget(self, stream: _Stream, how: int) -> None:
        del self.streams[stream.stream_id]
        if stream.inbound:
            self._open_inbound -= 1
        else:
            self._open_outbound -= 1
        self._remember_closed(stream.stream_id, how)

    def _remember_closed(self, stream_id: int, how: int) -> None:
        closed = self._closed
        if stream_id not in closed:
            # Forgotten oldest first, through a queue of their ids: ``next(iter(dict))`` would scan
            # every entry deleted from the front so far (a walk growing with each stream).
            order = self._closed_order
            order.append(stream_id)
            if len(order) > _MAX_CLOSED:
                closed.pop(order.popleft(), None)
        closed[stream_id] = how

    def _stream_error(self, stream_id: int, code: int, events: list[Event]) -> None:
        """RST_STREAM ``code`` for what the peer sent on ``stream_id``; an open stream's user hears a
        ``StreamReset``."""
        open_stream = stream_id in self.streams
        self._reset(stream_id, code)
        if open_stream:
            events.append(StreamReset(stream_id, code, False))

    def _reset(self, stream_id: int, code: int) -> None:
        self._out += _frame_header(4, _RST_STREAM, 0, stream_id)
        self._out += code.to_bytes(4, "big")
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._forget(stream, _CLOSED_BY_RESET_SENT)
        else:
            self._remember_closed(stream_id, _CLOSED_BY_RESET_SENT)

    def _credit_connection(self, size: int) -> None:
        self._processed += size
        increment = _window_increment(self._receive_window, self._receive_window_max, self._processed)
        if increment:
            self._processed = 0
            self._receive_window += increment
            self._window_update_frame(0, increment)

    def _window_update_frame(self, stream_id: int, increment: int) -> None:
        self._out += _frame_header(4, _WINDOW_UPDATE, 0, stream_id)
        self._out += increment.to_bytes(4, "big")

    def _goaway(self, last_stream_id: int, code: int, debug: bytes) -> None:
        self._out += _frame_header(8 + len(debug), _GOAWAY, 0, 0)
        self._out += last_stream_id.to_bytes(4, "big")
        self._out += code.to_bytes(4, "big")
        self._out += debug

    # --- our side ------------------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """The bytes queued for the peer (taken: the buffer is empty after)."""
        out = self._out
        if not out:
            return b""
        data = bytes(out)
        self._out = bytearray()
        return data

    def get_next_available_stream_id(self) -> int:
        highest = self.highest_outbound_stream_id
        if highest:
            return highest + 2
        return 1 if self.client_side else 2

    @property
    def open_outbound_streams(self) -> int:
        return self._open_outbound

    @property
    def open_inbound_streams(self) -> int:
        return self._open_inbound

    def _sendable(self, stream_id: int) -> _Stream:
        if self._failed:
            raise ProtocolError("the connection has ended with an error")
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id in self._closed:
                raise StreamClosedError(f"stream {stream_id} is closed")
            raise NoSuchStreamError(f"stream {stream_id} is not open")
        if stream.local_closed:
            raise StreamClosedError(f"stream {stream_id} is closed for sending")
        return stream

    def send_headers(self, stream_id: int, headers: Any, end_stream: bool = False) -> None:
        """Send a header block: a new stream's request (client role), a response, or trailers (with
        ``end_stream``). Fields are sent as given (validated by whoever passes them)."""
        stream = self.streams.get(stream_id)
        if stream is None and not self._failed:
            if stream_id in self._closed:
                raise StreamClosedError(f"stream {stream_id} is closed")
            if not self.client_side or stream_id & 1 == 0:
                raise ProtocolError(
                    f"a {'server' if not self.client_side else 'client'} cannot open stream {stream_id}"
                )
            if stream_id <= self.highest_outbound_stream_id:
                raise ProtocolError(f"stream {stream_id} is not above stream {self.highest_outbound_stream_id}")
            if self.goaway_received:
                raise ProtocolError("the peer sent GOAWAY: no new streams")
            if self._open_outbound + 1 > self.remote_max_concurrent_streams:
                raise TooManyStreamsError(f"the peer allows {self.remote_max_concurrent_streams} open streams")
            stream = _Stream(stream_id, False, self.remote_initial_window_size, self.local_initial_window_size)
            self.streams[stream_id] = stream
            self._open_outbound += 1
            self.highest_outbound_stream_id = stream_id
        else:
            stream = self._sendable(stream_id)
        block = self.encoder.encode(headers)
        flags = _END_STREAM if end_stream else 0
        limit = self.max_outbound_frame_size
        out = self._out
        if len(block) <= limit:
            out += _frame_header(len(block), _HEADERS, flags | _END_HEADERS, stream_id)
            out += block
        else:
            out += _frame_header(limit, _HEADERS, flags, stream_id)
            out += block[:limit]
            at = limit
            while at < len(block):
                piece = block[at : at + limit]
                at += len(piece)
                out += _frame_header(len(piece), _CONTINUATION, _END_HEADERS if at >= len(block) else 0, stream_id)
                out += piece
        if end_stream:
            self._local_end(stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """One DATA frame: ``data`` must fit the windows (``local_flow_control_window``) and
        ``max_outbound_frame_size``."""
        stream = self._sendable(stream_id)
        size = len(data)
        if size > self.max_outbound_frame_size:
            raise FrameTooLargeError(f"{size} bytes of DATA over the peer's SETTINGS_MAX_FRAME_SIZE")
        if size > stream.send_window or size > self.outbound_flow_control_window:
            raise FlowControlError(f"{size} bytes of DATA beyond the flow-control window")
        stream.send_window -= size
        self.outbound_flow_control_window -= size
        out = self._out
        out += _frame_header(size, _DATA, _END_STREAM if end_stream else 0, stream_id)
        out += data
        if end_stream:
            self._local_end(stream)

    def end_stream(self, stream_id: int) -> None:
        """END_STREAM on an empty DATA frame."""
        stream = self._sendable(stream_id)
        self._out += _frame_header(0, _DATA, _END_STREAM, stream_id)
        self._local_end(stream)

    def _local_end(self, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            self._forget(stream, _CLOSED_BY_END)

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        """RST_STREAM: the stream is closed at once; what the peer still sends on it is ignored."""
        if self._failed:
            raise ProtocolError("the connection has ended with an error")
        if stream_id not in self.streams:
            if stream_id in self._closed:
                raise StreamClosedError(f"stream {stream_id} is closed")
            raise NoSuchStreamError(f"stream {stream_id} is not open")
        self._reset(stream_id, error_code)

    def local_flow_control_window(self, stream_id: int) -> int:
        """How many DATA bytes the peer's windows take now on ``stream_id``."""
        stream = self.streams.get(stream_id)
        if stream is None:
            raise StreamClosedError(f"stream {stream_id} is not open")
        return min(stream.send_window, self.outbound_flow_control_window)

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        """``acknowledged_size`` bytes of the stream's DATA were handed on: reopen the connection's
        window, and the stream's while it is open (h2's rule for when)."""
        if self._failed or acknowledged_size <= 0:
            return
        self._credit_connection(acknowledged_size)
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.processed += acknowledged_size
        increment = _window_increment(stream.receive_window, stream.receive_window_max, stream.processed)
        if increment:
            stream.processed = 0
            stream.receive_window += increment
            self._window_update_frame(stream_id, increment)

    def increment_flow_control_window(self, increment: int, stream_id: int = 0) -> None:
        """Open a receive window by ``increment`` beyond what was processed (the connection's by default)."""
        if not 1 <= increment <= _LARGEST_WINDOW:
            raise ValueError(f"a window increment of {increment}")
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is None:
                raise StreamClosedError(f"stream {stream_id} is not open")
            stream.receive_window += increment
            stream.receive_window_max = max(stream.receive_window_max, stream.receive_window)
        else:
            self._receive_window += increment
            self._receive_window_max = max(self._receive_window_max, self._receive_window)
        self._window_update_frame(stream_id, increment)

    def ping(self, opaque_data: bytes) -> None:
        if len(opaque_data) != 8:
            raise ValueError("PING data is 8 bytes")
        self._out += _frame_header(8, _PING, 0, 0)
        self._out += opaque_data

    def close_connection(
        self, error_code: int = 0, additional_data: bytes | None = None, last_stream_id: int | None = None
    ) -> None:
        """GOAWAY: streams the peer opens above ``last_stream_id`` (the highest it opened, by default)
        are refused; the others run to their end. After a connection error (its GOAWAY already
        queued) nothing is sent."""
        if self._failed:
            return
        last = self.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        self._goaway_sent = True
        self._goaway_last = last
        self._goaway(last, error_code, additional_data or b"")


def _setting(code: int, value: int) -> bytes:
    return ((code << 32) | value).to_bytes(6, "big")


def _dependency(payload: bytes, at: int) -> int:
    """The stream a priority block (at ``at``) depends on."""
    return int.from_bytes(payload[at : at + 4], "big") & 0x7FFFFFFF
