"""``shadowtap.wire.h2conn`` against ``h2``, in memory: the same conversation run between two h2
connections and with ours in one role, both roles, must give the same events on both sides; then
malformed and hostile frame sequences, each checked for the error kind and code RFC 9113 asks (and
h2's, where it differs)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest

from shadowtap.wire import h2conn
from shadowtap.wire.h2conn import PREFACE, H2Connection

WINDOW = 100_000
HEADER_LIST = 64 * 1024
MAX_STREAMS = 10
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a.test"), (b":path", b"/up")]
GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.test"), (b":path", b"/")]


def reference(client_side: bool, window: int = WINDOW) -> Any:
    config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
    conn = h2.connection.H2Connection(config=config)
    values = {
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: HEADER_LIST,
    }
    values[h2.settings.SettingCodes.ENABLE_PUSH if client_side else h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = (
        0 if client_side else MAX_STREAMS
    )
    conn.local_settings = h2.settings.Settings(client=client_side, initial_values=values)
    return conn


def ours(client_side: bool) -> H2Connection:
    return H2Connection(
        client_side, max_concurrent_streams=MAX_STREAMS, initial_window_size=WINDOW, max_header_list_size=HEADER_LIST
    )


def normal(event: Any) -> tuple[Any, ...] | None:
    """An event of either implementation as comparable data (None: not compared, as the two send
    different but equivalent SETTINGS)."""
    name = type(event).__name__
    if name in ("RequestReceived", "ResponseReceived", "TrailersReceived", "InformationalResponseReceived"):
        return name, event.stream_id, [tuple(field) for field in event.headers]
    if name == "DataReceived":
        return name, event.stream_id, event.data, event.flow_controlled_length, bool(event.stream_ended)
    if name == "StreamEnded":
        return name, event.stream_id
    if name == "StreamReset":
        return name, event.stream_id, int(event.error_code)
    if name == "WindowUpdated":
        return name, event.stream_id, event.delta
    if name == "ConnectionTerminated":
        return name, int(event.error_code), event.last_stream_id, event.additional_data or b""
    if name in ("PingReceived", "PingAckReceived"):
        return name, event.ping_data
    return None


class Link:
    """Two connections joined in memory; each side's events are kept (and DATA acknowledged as it
    arrives, as a reader passing bytes on would)."""

    def __init__(self, client: Any, server: Any) -> None:
        self.client = client
        self.server = server
        self.events: dict[str, list[tuple[Any, ...]]] = {"client": [], "server": []}
        self.raw: dict[str, list[Any]] = {"client": [], "server": []}
        self.ack = True
        client.initiate_connection()
        server.initiate_connection()
        self.pump()

    def pump(self) -> None:
        for _ in range(1000):
            moved = False
            for name, sender, receiver in (("server", self.client, self.server), ("client", self.server, self.client)):
                data = sender.data_to_send()
                if data:
                    moved = True
                    for event in receiver.receive_data(data):
                        self.raw[name].append(event)
                        kept = normal(event)
                        if kept is not None:
                            self.events[name].append(kept)
                        if self.ack and type(event).__name__ == "DataReceived" and event.flow_controlled_length:
                            receiver.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if not moved:
                return
        raise AssertionError("the link never went quiet")

    def send_body(self, side: Any, stream_id: int, body: bytes, end: bool) -> None:
        """Send ``body`` as the windows allow, pumping while they are shut."""
        while body:
            room = min(side.local_flow_control_window(stream_id), side.max_outbound_frame_size, len(body))
            if room <= 0:
                self.pump()
                continue
            side.send_data(stream_id, body[:room], end_stream=end and room == len(body))
            body = body[room:]
        self.pump()


def conversation(link: Link) -> None:
    """Requests, responses, trailers, large bodies under flow control, CONTINUATION, resets, PING."""
    client, server = link.client, link.server
    big_field = [(b"x-big", b"v" * 40_000)]  # a header block in HEADERS + CONTINUATION frames
    client.send_headers(1, REQUEST + big_field)
    link.pump()
    link.send_body(client, 1, bytes(range(256)) * 1200, end=False)  # 307,200 bytes: past both windows
    client.send_headers(1, [(b"grpc-timeout", b"1S")], end_stream=True)
    link.pump()
    server.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")] + big_field)
    link.send_body(server, 1, b"r" * 250_000, end=False)
    server.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    link.pump()
    # A GET ended by its HEADERS, answered with an informational response first, then a reset by the
    # server; a stream the client resets; one answered with a body ending on its DATA.
    client.send_headers(3, GET, end_stream=True)
    client.send_headers(5, REQUEST)
    client.send_headers(7, GET, end_stream=True)
    link.pump()
    server.send_headers(3, [(b":status", b"103"), (b"link", b"</a>")])
    server.reset_stream(3, error_code=0x8)
    client.reset_stream(5, error_code=0x8)
    server.send_headers(7, [(b":status", b"404")])
    server.send_data(7, b"not here", end_stream=True)
    link.pump()
    client.ping(b"12345678")
    server.ping(b"abcdefgh")
    link.pump()
    server.close_connection(error_code=0, last_stream_id=7)
    link.pump()


def run(make_client: Callable[[bool], Any], make_server: Callable[[bool], Any], script: Callable[[Link], None]) -> Link:
    link = Link(make_client(True), make_server(False))
    script(link)
    return link


@pytest.mark.parametrize("role", ["client", "server"])
def test_a_conversation_gives_the_events_h2_gives(role: str) -> None:
    expected = run(reference, reference, conversation)
    got = run(ours if role == "client" else reference, ours if role == "server" else reference, conversation)
    assert got.events == expected.events
    names = {event[0] for event in got.events["client"] + got.events["server"]}
    assert {"TrailersReceived", "StreamReset", "WindowUpdated", "ConnectionTerminated", "PingAckReceived"} <= names
    assert "InformationalResponseReceived" in names


def settings_changes(link: Link, changer_role: str) -> None:
    """One side (h2 in both runs) shrinks then grows its INITIAL_WINDOW_SIZE and raises MAX_FRAME_SIZE
    while large bodies are under way both ways; padding on what the h2 server sends."""
    client, server = link.client, link.server
    client.send_headers(1, REQUEST)
    link.pump()
    changer = server if changer_role == "server" else client
    changer.update_settings(
        {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000, h2.settings.SettingCodes.MAX_FRAME_SIZE: 40_000}
    )
    link.pump()
    link.send_body(client, 1, b"q" * 50_000, end=False)
    server.send_headers(1, [(b":status", b"200")])
    if changer_role == "server":  # the server is h2 in both runs
        server.send_data(1, b"padded", pad_length=20)
    link.send_body(server, 1, b"s" * 50_000, end=False)
    changer.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 300_000})
    link.pump()
    link.send_body(client, 1, b"q" * 120_000, end=True)
    link.send_body(server, 1, b"s" * 120_000, end=True)


@pytest.mark.parametrize("role", ["client", "server"])
def test_settings_changes_and_padding_give_the_events_h2_gives(role: str) -> None:
    changer_role = "server" if role == "client" else "client"
    script = functools.partial(settings_changes, changer_role=changer_role)
    expected = run(reference, reference, script)
    got = run(ours if role == "client" else reference, ours if role == "server" else reference, script)
    assert got.events == expected.events
    ours_side = got.client if role == "client" else got.server
    assert ours_side.max_outbound_frame_size == 40_000
    padded = [e for e in got.events["client"] if e[0] == "DataReceived" and e[2] == b"padded"]
    assert role == "server" or padded == [("DataReceived", 1, b"padded", 27, False)]
    assert not ours_side.streams  # both ends ended: the stream is closed and forgotten


def test_a_slow_reader_holds_the_sender_to_the_window() -> None:
    link = run(ours, reference, lambda link: None)
    link.ack = False
    link.client.increment_flow_control_window(1_000_000)  # the stream's window is the bound
    link.client.send_headers(1, REQUEST, end_stream=True)
    link.pump()
    link.server.send_headers(1, [(b":status", b"200")])
    link.server.send_data(1, b"x" * 16_000)
    for _ in range(10):
        room = min(link.server.local_flow_control_window(1), 16_000)
        if room:
            link.server.send_data(1, b"x" * room)
    link.pump()
    received = sum(len(e.data) for e in link.raw["client"] if isinstance(e, h2conn.DataReceived))
    assert received == WINDOW  # not one byte past our window until acknowledged
    link.client.acknowledge_received_data(received, 1)
    link.pump()
    assert link.server.local_flow_control_window(1) == WINDOW


def test_the_peers_stream_limit_holds_and_counts_are_exact() -> None:
    link = run(ours, reference, lambda link: None)
    client = link.client
    for stream_id in range(1, 2 * MAX_STREAMS, 2):
        client.send_headers(stream_id, GET, end_stream=True)
    assert client.open_outbound_streams == MAX_STREAMS
    with pytest.raises(h2conn.TooManyStreamsError):
        client.send_headers(client.get_next_available_stream_id(), GET, end_stream=True)
    link.pump()
    for stream_id in range(1, 2 * MAX_STREAMS, 2):
        link.server.send_headers(stream_id, [(b":status", b"204")], end_stream=True)
    link.pump()
    assert client.open_outbound_streams == 0 and not client.streams


# --- hostile and malformed input ------------------------------------------------------------------------------


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big") + payload


SETTINGS = frame(0x4, 0, 0)
#: A request head (HPACK: static-table indexes) for stream 1.
HEAD = bytes((0x82, 0x86, 0x84, 0x41, 0x01, 0x61))  # GET, http, /, :authority "a"


def frames_of(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out = []
    while data:
        length = int.from_bytes(data[:3], "big")
        out.append((data[3], data[4], int.from_bytes(data[5:9], "big"), data[9 : 9 + length]))
        data = data[9 + length :]
    return out


def outcome(conn: Any, data: bytes) -> tuple[str, int | list[int]]:
    """What ``data`` got from a server connection: ("connection", GOAWAY code), or ("stream",
    RST_STREAM codes) — both implementations alike."""
    conn.initiate_connection()
    conn.data_to_send()
    try:
        conn.receive_data(data)
    except (h2conn.ProtocolError, h2.exceptions.ProtocolError):
        goaways = [f for f in frames_of(conn.data_to_send()) if f[0] == 0x7]
        return "connection", int.from_bytes(goaways[-1][3][4:8], "big") if goaways else None
    return "stream", [int.from_bytes(f[3], "big") for f in frames_of(conn.data_to_send()) if f[0] == 0x3]


HOSTILE_WINDOW = 30_000
OPEN = PREFACE + SETTINGS + frame(0x1, 0x4, 1, HEAD)  # stream 1 open, the client still sending
# (name, bytes after the preface, RFC 9113's outcome for ours, h2's where it differs)
HOSTILE: list[tuple[str, bytes, tuple[str, Any], tuple[str, Any] | None]] = [
    # RFC 9113 3.4: a connection error, GOAWAY optional (h2 sends none).
    ("not an HTTP/2 preface", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", ("connection", 0x1), ("connection", None)),
    ("a first frame that is not SETTINGS", PREFACE + frame(0x6, 0, 0, b"12345678"), ("connection", 0x1),
     ("stream", [])),  # h2 does not check it
    ("a frame over SETTINGS_MAX_FRAME_SIZE", PREFACE + SETTINGS + frame(0x0, 0, 1, b"x" * 16_385),
     ("connection", 0x6), None),
    ("DATA on an idle stream", PREFACE + SETTINGS + frame(0x0, 0, 1, b"x"), ("connection", 0x1), None),
    ("DATA on stream 0", PREFACE + SETTINGS + frame(0x0, 0, 0, b"x"), ("connection", 0x1), None),
    ("HEADERS on stream 0", PREFACE + SETTINGS + frame(0x1, 0x5, 0, HEAD), ("connection", 0x1), None),
    ("HEADERS on an even stream", PREFACE + SETTINGS + frame(0x1, 0x5, 2, HEAD), ("connection", 0x1), None),
    ("a stream id going down", OPEN + frame(0x1, 0x5, 5, HEAD) + frame(0x1, 0x5, 3, HEAD), ("connection", 0x1),
     None),
    ("padding as long as the frame", OPEN + frame(0x0, 0x8, 1, b"\x05abc"), ("connection", 0x1), None),
    ("RST_STREAM on an idle stream", PREFACE + SETTINGS + frame(0x3, 0, 1, b"\x00\x00\x00\x08"),
     ("connection", 0x1), None),
    ("RST_STREAM of 3 bytes", OPEN + frame(0x3, 0, 1, b"\x00\x00\x08"), ("connection", 0x6), None),
    ("PING of 7 bytes", PREFACE + SETTINGS + frame(0x6, 0, 0, b"1234567"), ("connection", 0x6), None),
    ("SETTINGS of 5 bytes", PREFACE + frame(0x4, 0, 0, b"\x00\x01\x00\x00\x10"), ("connection", 0x6), None),
    ("SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1", PREFACE + frame(0x4, 0, 0, b"\x00\x04\x80\x00\x00\x00"),
     ("connection", 0x3), None),
    ("SETTINGS_MAX_FRAME_SIZE under 16384", PREFACE + frame(0x4, 0, 0, b"\x00\x05\x00\x00\x10\x00"),
     ("connection", 0x1), None),
    ("SETTINGS_ENABLE_PUSH of 2", PREFACE + frame(0x4, 0, 0, b"\x00\x02\x00\x00\x00\x02"), ("connection", 0x1),
     None),
    ("a connection window over 2^31-1", PREFACE + SETTINGS + frame(0x8, 0, 0, b"\x7f\xff\xff\xff"),
     ("connection", 0x3), None),
    ("a WINDOW_UPDATE of 0 for the connection", PREFACE + SETTINGS + frame(0x8, 0, 0, b"\x00\x00\x00\x00"),
     ("connection", 0x1), None),
    ("a stream window over 2^31-1", OPEN + frame(0x8, 0, 1, b"\x7f\xff\xff\xff"), ("stream", [0x3]), None),
    # RFC 9113 6.9: a stream error; h2 ends the connection.
    ("a WINDOW_UPDATE of 0 for a stream", OPEN + frame(0x8, 0, 1, b"\x00\x00\x00\x00"), ("stream", [0x1]),
     ("connection", 0x1)),
    ("DATA past the stream's window", OPEN + frame(0x0, 0, 1, b"x" * 16_384) * 2,
     ("stream", [0x3]), ("connection", 0x3)),  # h2 ends the connection
    ("CONTINUATION without HEADERS", PREFACE + SETTINGS + frame(0x9, 0x4, 1, HEAD), ("connection", 0x1), None),
    ("HEADERS interrupted by another frame", PREFACE + SETTINGS + frame(0x1, 0, 1, HEAD) + frame(0x6, 0, 0, b"1" * 8),
     ("connection", 0x1), None),
    # A flood of empty CONTINUATION frames: h2 also stops at 64 (but says PROTOCOL_ERROR).
    ("a CONTINUATION flood", PREFACE + SETTINGS + frame(0x1, 0, 1, HEAD) + frame(0x9, 0, 1) * 100,
     ("connection", 0xB), ("connection", 0x1)),
    ("a header block that does not decode", PREFACE + SETTINGS + frame(0x1, 0x5, 1, b"\xff\xff\xff\xff\xff\xff"),
     ("connection", 0x9), ("connection", 0x1)),  # RFC 9113 4.3: COMPRESSION_ERROR; h2 says PROTOCOL_ERROR
    ("PUSH_PROMISE from a client", OPEN + frame(0x5, 0x4, 1, b"\x00\x00\x00\x02" + HEAD), ("connection", 0x1),
     None),
    # Past MAX_CONCURRENT_STREAMS: the proxy's chosen answer, ENHANCE_YOUR_CALM for the connection
    # (RFC 9113 5.1.2 allows a stream error too); h2 sends PROTOCOL_ERROR.
    ("a HEADERS flood", PREFACE + SETTINGS + b"".join(frame(0x1, 0x4, i, HEAD) for i in range(1, 40, 2)),
     ("connection", 0xB), ("connection", 0x1)),
    # Stream errors: the connection goes on.
    ("trailers without END_STREAM", OPEN + frame(0x1, 0x4, 1, bytes((0x40, 1, 0x78, 1, 0x79)),),
     ("stream", [0x1]), ("connection", 0x1)),  # RFC 9113 8.1: malformed, a stream error; h2 ends it all
    ("DATA after END_STREAM", PREFACE + SETTINGS + frame(0x1, 0x5, 1, HEAD) + frame(0x0, 0, 1, b"x"),
     ("stream", [0x5]), None),
    ("a stream depending on itself", PREFACE + SETTINGS + frame(0x2, 0, 1, b"\x00\x00\x00\x01\x10"),
     ("stream", [0x1]), ("connection", 0x1)),  # RFC 9113 5.3.1: a stream error
    # Frames on a stream the peer reset: ignored (our own reset is tested below).
    ("frames on a stream it reset",
     OPEN + frame(0x3, 0, 1, b"\x00\x00\x00\x08") + frame(0x8, 0, 1, b"\x00\x00\x01\x00"), ("stream", []), None),
    ("an unknown frame type", PREFACE + SETTINGS + frame(0xEE, 0xFF, 7, b"anything"), ("stream", []), None),
]  # fmt: skip


@pytest.mark.parametrize(("name", "data", "rfc", "h2_differs"), HOSTILE, ids=[case[0] for case in HOSTILE])
def test_hostile_input_gets_the_error_rfc_9113_asks(
    name: str, data: bytes, rfc: tuple[str, Any], h2_differs: tuple[str, Any] | None
) -> None:
    # A stream window under the connection's, so that DATA past it is the stream's error only.
    server = H2Connection(False, max_concurrent_streams=MAX_STREAMS, initial_window_size=HOSTILE_WINDOW)
    assert outcome(server, data) == rfc
    # h2 on the same bytes: the same, or the difference noted in the case.
    theirs = reference(False, HOSTILE_WINDOW)
    got = outcome(theirs, data)
    assert got == (h2_differs or rfc)


def test_after_a_connection_error_nothing_more_is_read() -> None:
    server = ours(False)
    server.initiate_connection()
    with pytest.raises(h2conn.ProtocolError):
        server.receive_data(PREFACE + SETTINGS + frame(0x0, 0, 0, b"x"))
    with pytest.raises(h2conn.ProtocolError):
        server.receive_data(frame(0x6, 0, 0, b"12345678"))
    server.close_connection(error_code=0xB)  # a second GOAWAY is not sent
    # Our SETTINGS, the acknowledgement of the client's, the GOAWAY.
    assert [f[0] for f in frames_of(server.data_to_send())] == [0x4, 0x4, 0x7]


def test_frames_on_a_stream_we_reset_are_ignored_and_their_data_credited() -> None:
    server = ours(False)
    server.initiate_connection()
    server.receive_data(OPEN)
    server.reset_stream(1, error_code=0x8)
    server.data_to_send()
    late = frame(0x0, 0, 1, b"y" * 16_000) * 4 + frame(0x1, 0x5, 1, bytes((0x40, 1, 0x78, 1, 0x79)))
    late += frame(0x8, 0, 1, b"\x00\x00\x01\x00") + frame(0x3, 0, 1, b"\x00\x00\x00\x08")
    assert server.receive_data(late) == []
    sent = frames_of(server.data_to_send())
    # No RST_STREAM for them; the connection's window reopened for the dropped DATA.
    assert [f[0] for f in sent] == [0x8] and int.from_bytes(sent[0][3], "big") >= 32_768
    # The HPACK state followed the ignored block: a new stream's head decodes.
    (request, _) = server.receive_data(frame(0x1, 0x5, 3, bytes((0x82, 0x86, 0x84, 0xBE))))
    assert isinstance(request, h2conn.RequestReceived) and (b"x", b"y") in request.headers


def test_streams_above_our_goaway_are_refused() -> None:
    server = ours(False)
    server.initiate_connection()
    server.receive_data(OPEN)
    server.close_connection(last_stream_id=1)
    server.data_to_send()
    assert server.receive_data(frame(0x1, 0x5, 3, HEAD)) == []
    (rst,) = frames_of(server.data_to_send())
    assert rst[:3] == (0x3, 0, 3) and int.from_bytes(rst[3], "big") == h2conn.REFUSED_STREAM
    events = server.receive_data(frame(0x0, 0x1, 1, b"body"))
    assert [type(e).__name__ for e in events] == ["DataReceived", "StreamEnded"]


def test_a_push_promise_to_a_client_that_disabled_push_is_a_connection_error() -> None:
    link = run(ours, reference, lambda link: None)
    link.client.send_headers(1, GET, end_stream=True)
    link.pump()
    with pytest.raises(h2conn.ProtocolError):
        link.client.receive_data(frame(0x5, 0x4, 1, b"\x00\x00\x00\x02" + HEAD))
    assert frames_of(link.client.data_to_send())[-1][0] == 0x7


def test_sending_past_the_window_or_on_a_closed_stream_raises() -> None:
    link = run(ours, reference, lambda link: None)
    client = link.client
    client.send_headers(1, REQUEST)
    with pytest.raises(h2conn.FrameTooLargeError):
        client.send_data(1, b"x" * 16_385)
    for _ in range(3):
        client.send_data(1, b"x" * 16_384)
    assert client.local_flow_control_window(1) == 65_535 - 3 * 16_384
    with pytest.raises(h2conn.FlowControlError):
        client.send_data(1, b"x" * 16_384)
    client.reset_stream(1)
    with pytest.raises(h2conn.StreamClosedError):
        client.send_data(1, b"x")
    with pytest.raises(h2conn.StreamClosedError):
        client.reset_stream(1)
    with pytest.raises(h2conn.ProtocolError):
        client.send_headers(1, GET)
