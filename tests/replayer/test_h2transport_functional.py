"""The HTTP/2 transport on real sockets, against an h2 server that shares no code with it
(``tests/wire/h2peer.py``): what goes out as pseudo-headers and fields, what comes back (status,
body, trailers, ``http_version``), how failures are classed, and which requests the default
transport sends over HTTP/2."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from shadowtap.recorder import REPLAY, Failure, FailureKind, Request, Response, SyncTapeWriter, TapeOptions, TapeReader
from shadowtap.recorder.model import StreamMessage
from shadowtap.replayer.h2transport import H2Transport
from shadowtap.replayer.transport import (
    ClientSettings,
    HttpTransport,
    SendResult,
    VersionedTransport,
    make_transport,
)
from tests.proxy.test_server_tls_functional import Pki, pki  # noqa: F401  (the fixture)
from tests.replayer.tapes import make_exchange
from tests.shadowtap.test_cmd_replay_functional import shadowtap
from tests.wire.h2peer import Header, Responder, _ServerConnection

Seen = tuple[list[Header], bytes, list[Header]]


class Target:
    """An h2c server answering by path, keeping every request it got."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.port = 0
        self.refused = False

    async def handle(self, headers: list[Header], body: bytes, trailers: list[Header], reply: Responder) -> None:
        self.seen.append((headers, body, trailers))
        path = dict(headers)[b":path"]
        if path.endswith(b"/reset"):
            reply.reset(0x2)
        elif path.endswith(b"/goaway") and not self.refused:
            self.refused = True
            reply.goaway(0)  # the first time: this stream was never processed
        elif path.endswith(b"/slow"):
            await asyncio.sleep(5)
        elif path.endswith(b"/trailers"):
            reply.head(200, [(b"content-type", b"text/plain")])
            await reply.data(b"with ")
            await reply.data(b"trailers")
            reply.trailers([(b"x-checksum", b"abc")])
        elif path.endswith(b"/big"):
            reply.head(200)
            await reply.data(b"x" * 200_000, end=True)
        else:
            reply.head(201, [(b"content-type", b"text/plain"), (b"x-reply", b"1")])
            await reply.data(b"got " + body, end=True)


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    from tests.wire.h2peer import H2TestServer

    t = Target()
    server = H2TestServer(t.handle)
    await server.start()
    t.port = server.port
    try:
        yield t
    finally:
        await server.close()


def h2_request(target: str, method: str = "GET", body: bytes = b"", headers: tuple[Header, ...] = ()) -> Request:
    return Request(method, target, headers, body, authority="recorded.example", http_version="2")


async def test_a_request_goes_out_as_an_http2_stream_with_pseudo_headers(target: Target) -> None:
    url = f"h2c://127.0.0.1:{target.port}/base"
    fields = ((b"X-Trace", b"t1"), (b"Connection", b"keep-alive"), (b"Content-Type", b"text/plain"))
    async with H2Transport(url) as transport:
        post = await transport.send("POST", "/items?x=1", fields, b"hello", h2_request("/items?x=1", "POST", b"hello"))
        get = await transport.send("GET", "/trailers", (), b"")
    assert isinstance(post.outcome, Response) and isinstance(get.outcome, Response)
    assert (post.outcome.status, post.outcome.reason, post.outcome.body) == (201, "", b"got hello")
    assert post.outcome.http_version == "2" and (b"x-reply", b"1") in post.outcome.headers
    assert post.first_byte_ns is not None
    assert (get.outcome.body, get.outcome.trailers) == (b"with trailers", ((b"x-checksum", b"abc"),))
    headers, body, _ = target.seen[0]
    assert headers == [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", f"127.0.0.1:{target.port}".encode()),
        (b":path", b"/base/items?x=1"),
        (b"x-trace", b"t1"),
        (b"content-type", b"text/plain"),
        (b"content-length", b"5"),
    ]
    assert body == b"hello"
    assert dict(target.seen[1][0])[b":path"] == b"/base/trailers" and b"content-length" not in dict(target.seen[1][0])


async def test_the_plans_host_is_the_authority_and_recorded_trailers_go_out(target: Target) -> None:
    recorded = Request("POST", "/up", (), b"data", http_version="2", trailers=((b"x-digest", b"d1"),))
    async with H2Transport(f"h2c://127.0.0.1:{target.port}") as transport:
        result = await transport.send("POST", "/up", ((b"Host", b"api.example"),), b"data", recorded)
    assert isinstance(result.outcome, Response)
    headers, body, trailers = target.seen[0]
    assert dict(headers)[b":authority"] == b"api.example" and b"host" not in dict(headers)
    assert (body, trailers) == (b"data", [(b"x-digest", b"d1")])


async def test_many_requests_share_a_few_connections(target: Target) -> None:
    settings = ClientSettings(h2_connections=2)
    async with H2Transport(f"h2c://127.0.0.1:{target.port}", settings) as transport:
        results = await asyncio.gather(*(transport.send("GET", f"/n/{i}", (), b"") for i in range(50)))
        connections = transport._pool.connects
    assert all(isinstance(r.outcome, Response) and r.outcome.status == 201 for r in results)
    assert len(target.seen) == 50 and 1 <= connections <= 2


async def test_a_stream_refused_by_goaway_is_sent_once_more_on_a_new_connection(target: Target) -> None:
    async with H2Transport(f"h2c://127.0.0.1:{target.port}") as transport:
        result = await transport.send("POST", "/goaway", (), b"once", h2_request("/goaway", "POST", b"once"))
        connects = transport._pool.connects
    assert isinstance(result.outcome, Response) and result.outcome.body == b"got once"
    assert [body for _, body, _ in target.seen] == [b"once", b"once"] and connects == 2


async def test_failures_are_classed_not_raised(target: Target) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    settings = ClientSettings(timeout_s=0.3, max_body_bytes=100_000)
    async with H2Transport(f"h2c://127.0.0.1:{target.port}", settings) as transport:
        reset = await transport.send("GET", "/reset", (), b"")
        slow = await transport.send("GET", "/slow", (), b"")
        big = await transport.send("GET", "/big", (), b"")
        after = await transport.send("GET", "/fine", (), b"")
    async with H2Transport(f"h2c://127.0.0.1:{dead_port}", settings) as transport:
        refused = await transport.send("GET", "/", (), b"")
    assert isinstance(reset.outcome, Failure) and reset.outcome.kind == FailureKind.RESET
    assert "INTERNAL_ERROR" in reset.outcome.message
    assert isinstance(slow.outcome, Failure) and slow.outcome.kind == FailureKind.TIMEOUT
    assert isinstance(big.outcome, Failure) and big.outcome.kind == FailureKind.BODY_TOO_LARGE
    assert isinstance(after.outcome, Response) and after.outcome.status == 201  # the connection lived on
    assert isinstance(refused.outcome, Failure) and refused.outcome.kind == FailureKind.CONNECT_ERROR


async def started(
    transport: H2Transport | VersionedTransport, target: str, body: bytes = b"", recorded: Request | None = None
) -> SendResult:
    """``transport.start`` a request and wait for its one result (the call must be sent at once)."""
    results: list[SendResult] = []
    method = "POST" if body else "GET"
    assert transport.start(method, target, (), body, recorded or h2_request(target, method, body), results.append)
    for _ in range(1000):
        if results:
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)  # nothing more comes
    assert len(results) == 1, results
    return results[0]


async def test_start_sends_without_a_task_on_a_warm_pool_and_ends_each_call_once(target: Target) -> None:
    settings = ClientSettings(timeout_s=0.3, max_body_bytes=100_000)
    async with H2Transport(f"h2c://127.0.0.1:{target.port}", settings) as transport:
        # Cold: no connection to open a stream on, so the task path (send) must dial.
        assert not transport.start("GET", "/cold", (), b"", h2_request("/cold"), lambda result: None)
        assert (await transport.send("GET", "/warm", (), b"")).outcome.status == 201  # type: ignore[union-attr]
        before = asyncio.all_tasks()
        post = await started(transport, "/items", b"hello")
        trailers = await started(transport, "/trailers")
        reset = await started(transport, "/reset")
        slow = await started(transport, "/slow")
        big = await started(transport, "/big")
        after = await started(transport, "/fine")
        # No task on the client's side (the target's handlers are tasks of the test server).
        assert all("/tests/" in repr(task) for task in asyncio.all_tasks() - before)
        connects = transport._pool.connects
        assert transport._deadlines is not None and len(transport._deadlines) == 0  # none kept
    assert isinstance(post.outcome, Response) and (post.outcome.status, post.outcome.body) == (201, b"got hello")
    assert post.outcome.http_version == "2" and post.first_byte_ns is not None
    assert isinstance(trailers.outcome, Response) and trailers.outcome.trailers == ((b"x-checksum", b"abc"),)
    assert isinstance(reset.outcome, Failure) and reset.outcome.kind == FailureKind.RESET
    assert isinstance(slow.outcome, Failure) and slow.outcome.kind == FailureKind.TIMEOUT
    assert isinstance(big.outcome, Failure) and big.outcome.kind == FailureKind.BODY_TOO_LARGE
    assert isinstance(after.outcome, Response) and after.outcome.status == 201  # the connection lived on
    assert connects == 1
    assert [dict(h)[b":path"] for h, _, _ in target.seen] == [
        b"/warm", b"/items", b"/trailers", b"/reset", b"/slow", b"/big", b"/fine"
    ]  # fmt: skip


async def test_a_finished_call_leaves_nothing_for_the_garbage_collector(target: Target) -> None:
    # A call's sink and its stream point at each other; a sink that kept its stream after the end
    # left a cycle every request, for the collector to walk.
    import gc

    from shadowtap.replayer.h2transport import _Call, _Started
    from shadowtap.wire.h2 import H2Stream

    async with H2Transport(f"h2c://127.0.0.1:{target.port}") as transport:
        await transport.send("GET", "/warm", (), b"")
        gc.collect()
        gc.disable()
        try:
            for i in range(20):
                assert isinstance((await started(transport, f"/n/{i}")).outcome, Response)
            left = [o for o in gc.get_objects() if type(o) in (_Call, _Started, H2Stream)]
        finally:
            gc.enable()
    assert left == []


async def test_start_sends_a_refused_stream_once_more_and_leaves_paced_messages_to_send(target: Target) -> None:
    async with VersionedTransport(HttpTransport(f"http://127.0.0.1:{target.port}"), H2Transport(
        f"http://127.0.0.1:{target.port}"
    )) as transport:  # fmt: skip
        assert (await transport.send("GET", "/warm", (), b"", h2_request("/warm"))).outcome.status == 201  # type: ignore[union-attr]
        refused = await started(transport, "/goaway", b"once")
        connects = transport.http2._pool.connects
        # A recorded gRPC client stream goes message by message at its recorded offsets: a task's work.
        body = b"\x00\x00\x00\x00\x01a\x00\x00\x00\x00\x01b"
        grpc_fields = ((b"content-type", b"application/grpc"),)
        recorded = Request("POST", "/up", grpc_fields, body, http_version="2",
                           messages=(StreamMessage(0, 1, 0), StreamMessage(0, 1, 1_000_000)))  # fmt: skip
        assert not transport.start("POST", "/up", grpc_fields, body, recorded, lambda result: None)
    assert isinstance(refused.outcome, Response) and refused.outcome.body == b"got once"
    assert [body for h, body, _ in target.seen if dict(h)[b":path"] == b"/goaway"] == [b"once", b"once"]
    assert connects == 2


async def test_the_default_transport_sends_http2_recordings_over_http2(target: Target) -> None:
    url = f"http://127.0.0.1:{target.port}"
    transport = make_transport(url)
    assert isinstance(transport, VersionedTransport) and isinstance(transport.http1, HttpTransport)
    assert isinstance(make_transport(url, ClientSettings(http_version="1.1")), HttpTransport)
    assert isinstance(make_transport(url, ClientSettings(http_version="2")), H2Transport)
    assert isinstance(make_transport(f"h2c://127.0.0.1:{target.port}"), H2Transport)
    async with transport:
        result = await transport.send("GET", "/v", (), b"", h2_request("/v"))
    assert isinstance(result.outcome, Response) and result.outcome.http_version == "2"
    assert dict(target.seen[0][0])[b":scheme"] == b"http"


async def test_replay_cli_against_a_plain_http2_server(tmp_path: Path, target: Target) -> None:
    recorded = [make_exchange(i, i * 5, target=f"/page/{i}") for i in range(6)]
    tape = tmp_path / "tape"
    with SyncTapeWriter(tape, TapeOptions(redaction=None, compression="none")) as writer:
        for ex in recorded:
            writer.write(ex)
    code, _out, err = await shadowtap(
        str(tape), "--target", f"h2c://127.0.0.1:{target.port}", "--speed", "4", "--no-progress",
        "--results", str(tmp_path / "results"), "--h2-connections", "1",
    )  # fmt: skip
    assert code == 0, err
    results = sorted(TapeReader(tmp_path / "results"), key=lambda ex: ex.id)
    assert [ex.id for ex in results] == [f"ex{i}" for i in range(6)]
    for ex in results:
        replayed = ex.shadows[REPLAY]
        assert isinstance(replayed, Response) and replayed.http_version == "2" and replayed.status == 201
        assert isinstance(ex.primary, Response) and ex.primary.body == f"recorded {ex.id[2:]}".encode()
    assert sorted(dict(h)[b":path"] for h, _, _ in target.seen) == sorted(f"/page/{i}".encode() for i in range(6))


async def test_https_targets_speak_http2_by_alpn_with_verified_certificates(
    pki: Pki,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Seen] = []

    async def handle(headers: list[Header], body: bytes, trailers: list[Header], reply: Responder) -> None:
        seen.append((headers, body, trailers))
        reply.head(200, [(b"content-type", b"text/plain")])
        await reply.data(b"over tls", end=True)

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _ServerConnection(handle, reader, writer).run()

    context = pki.server_context()
    context.set_alpn_protocols(["h2"])
    server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    # The transport verifies as every client does: trust the test CA through OpenSSL's variable.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    try:
        async with make_transport(f"https://localhost:{port}") as transport:
            result = await transport.send("GET", "/secure", (), b"", h2_request("/secure"))
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(result.outcome, Response) and result.outcome.body == b"over tls"
    assert result.outcome.http_version == "2"
    assert {k: v for k, v in seen[0][0] if k[:1] == b":"} == {
        b":method": b"GET",
        b":scheme": b"https",
        b":authority": f"localhost:{port}".encode(),
        b":path": b"/secure",
    }


async def test_an_answer_before_the_whole_request_ends_the_clients_half_too() -> None:
    # A server that answers as soon as a request's head arrives and never resets the stream (a 413
    # to a large upload, an error to a client stream): the client must end its half (RST_STREAM
    # NO_ERROR), or h2 counts the stream as open for as long as the connection lives.
    resets: list[int] = []
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    conn.send_headers(event.stream_id, [(b":status", b"413")], end_stream=True)
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    resets.append(int(event.error_code))
            writer.write(conn.data_to_send())
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    body = b"\x00\x00\x00\x00\x01a\x00\x00\x00\x00\x01b"
    grpc_fields = ((b"content-type", b"application/grpc"),)
    recorded = Request("POST", "/up", grpc_fields, body, http_version="2",
                       messages=(StreamMessage(0, 1, 0), StreamMessage(0, 1, 5_000_000_000)))  # fmt: skip
    try:
        async with H2Transport(f"h2c://127.0.0.1:{port}") as transport:
            result = await transport.send("POST", "/up", grpc_fields, body, recorded)
            open_streams = transport._pool._conns[0]._h2.open_outbound_streams
            for _ in range(100):  # until the server has read the reset
                if resets:
                    break
                await asyncio.sleep(0.01)
    finally:
        server.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await server.wait_closed()
    assert isinstance(result.outcome, Response) and result.outcome.status == 413
    assert open_streams == 0 and resets == [0]


async def test_http1_is_refused_for_an_h2c_target_in_one_line(tmp_path: Path) -> None:
    code, _out, err = await shadowtap(str(tmp_path), "--target", "h2c://127.0.0.1:1", "--http1", "--no-progress")
    assert code == 2 and err.count("\n") == 1, err
    assert "'--http1': an h2c:// target speaks HTTP/2 only" in err
