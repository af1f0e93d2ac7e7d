"""The Locust workers' blocking HTTP/2 client on real sockets, against the h2c server of the asyncio
transport's tests (``tests/wire/h2peer.py``, no code shared with the client), called from a thread as
a Locust worker's greenlet would call it: answers with trailers, connection reuse, and each failure
as the asyncio transport classes it."""

from __future__ import annotations

import asyncio
import socket

import h2.config
import h2.connection
import h2.events

from shadowtap.recorder import Failure, FailureKind, Request, Response
from shadowtap.replayer.h2blocking import BlockingH2Client
from shadowtap.replayer.sending import ClientSettings
from tests.replayer.test_h2transport_functional import Target, target  # noqa: F401  (the fixture)


async def test_answers_failures_and_one_reused_connection(target: Target) -> None:  # noqa: F811
    url = f"h2c://127.0.0.1:{target.port}/base"
    client = BlockingH2Client(url, ClientSettings(max_body_bytes=100_000))
    # /slow answers after 5 s: any timeout below that ends it, however loaded the machine.
    impatient = BlockingH2Client(url, ClientSettings(timeout_s=0.5))
    recorded = Request("POST", "/up", (), b"data", http_version="2", trailers=((b"x-digest", b"d1"),))

    def calls() -> list[Response | Failure]:
        sends = [
            ("POST", "/up", ((b"Host", b"api.example"),), b"data", recorded),
            ("GET", "/trailers", (), b"", None),
            ("GET", "/goaway", (), b"", None),  # refused unprocessed the first time: sent again
            ("GET", "/reset", (), b"", None),
            ("GET", "/big", (), b"", None),
        ]
        outcomes = [client.send(*call).outcome for call in sends]
        return [*outcomes, impatient.send("GET", "/slow", (), b"").outcome]

    try:
        up, trailers, goaway, reset, big, slow = await asyncio.to_thread(calls)
    finally:
        client.close()
        impatient.close()
    assert isinstance(up, Response) and (up.status, up.body, up.http_version) == (201, b"got data", "2")
    headers, body, sent_trailers = target.seen[0]
    assert dict(headers)[b":authority"] == b"api.example" and dict(headers)[b":path"] == b"/base/up"
    assert (body, sent_trailers) == (b"data", [(b"x-digest", b"d1")])
    assert isinstance(trailers, Response) and trailers.trailers == ((b"x-checksum", b"abc"),)
    assert isinstance(goaway, Response) and goaway.status == 201
    assert [dict(h)[b":path"] for h, _, _ in target.seen].count(b"/base/goaway") == 2
    assert isinstance(reset, Failure) and reset.kind == FailureKind.RESET
    assert isinstance(big, Failure) and big.kind == FailureKind.BODY_TOO_LARGE
    assert isinstance(slow, Failure) and slow.kind == FailureKind.TIMEOUT
    # One connection until the GOAWAY, a second after it (a reset stream leaves it open).
    assert client.connects == 2


async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    client = BlockingH2Client(f"h2c://127.0.0.1:{port}")
    result = await asyncio.to_thread(client.send, "GET", "/", (), b"")
    assert isinstance(result.outcome, Failure) and result.outcome.kind == FailureKind.CONNECT_ERROR


async def test_a_connection_the_target_closed_while_idle_resends_only_an_idempotent_request() -> None:
    # A target that answers one request per connection and then closes it, without GOAWAY.
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    seen.append(dict(event.headers)[b":method"])
                    conn.send_headers(event.stream_id, [(b":status", b"200")], end_stream=True)
                    writer.write(conn.data_to_send())
                    await writer.drain()
                    writer.close()
                    return
            writer.write(conn.data_to_send())

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = BlockingH2Client(f"h2c://127.0.0.1:{port}")

    def calls() -> list[Response | Failure]:
        return [client.send(method, "/", (), b"").outcome for method in ("GET", "GET", "POST")]

    try:
        first, resent, lost = await asyncio.to_thread(calls)
    finally:
        client.close()
        server.close()
        await server.wait_closed()
    assert isinstance(first, Response) and isinstance(resent, Response)
    assert isinstance(lost, Failure) and lost.kind == FailureKind.RESET
    # The second GET found the first connection closed and went again on a new one; the POST found
    # the second closed too, and fails rather than risk being processed twice.
    assert seen == [b"GET", b"GET"] and client.connects == 2
