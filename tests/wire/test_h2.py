"""``shadowtap.wire.h2.Connection``'s cheap open-stream count, against h2's own peer in memory."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest

from shadowtap.wire.h2 import Connection

_REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]


def _pair(max_streams: int) -> tuple[Connection, h2.connection.H2Connection]:
    client = Connection(config=h2.config.H2Configuration(client_side=True, header_encoding=None))
    server = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.local_settings = h2.settings.Settings(
        client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams}
    )
    client.initiate_connection()
    server.initiate_connection()
    _exchange(client, server)
    return client, server


def _exchange(client: Connection, server: h2.connection.H2Connection) -> list[object]:
    events: list[object] = []
    for _ in range(3):
        events += server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
    return events


def test_the_peers_stream_limit_still_holds() -> None:
    client, server = _pair(max_streams=5)
    for _ in range(5):
        client.send_headers(client.get_next_available_stream_id(), _REQUEST, end_stream=True)
    with pytest.raises(h2.exceptions.TooManyStreamsError):
        client.send_headers(client.get_next_available_stream_id(), _REQUEST, end_stream=True)


def test_closed_streams_are_counted_out_and_forgotten() -> None:
    client, server = _pair(max_streams=1000)
    for _ in range(600):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, _REQUEST, end_stream=True)
        for event in _exchange(client, server):
            if isinstance(event, h2.events.RequestReceived):
                server.send_headers(event.stream_id, [(b":status", b"200")], end_stream=True)
        _exchange(client, server)
        assert len(client.streams) <= 256
    # Read from outside, the count is h2's exact one.
    assert client.open_outbound_streams == 0
    client.send_headers(client.get_next_available_stream_id(), _REQUEST, end_stream=False)
    assert client.open_outbound_streams == 1
