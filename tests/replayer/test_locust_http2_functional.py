"""`shadowtap replay --locust` with exchanges recorded over HTTP/2 on the tape: a real Locust master and
worker replay gRPC calls against a real grpcio server over TLS (ALPN h2), and (with ``--http2``) a
tape of plain requests against an h2c server that shares no code with the client (``tests/wire/h2peer``).
The results tapes hold what each target answered over HTTP/2: statuses, trailers, gRPC messages, and
a failed call counted by its gRPC status as the asyncio replayer counts it."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from shadowtap.recorder import REPLAY, Response, TapeReader
from shadowtap.wire.grpc import split_messages
from tests.grpc_fixtures import CompiledShop, compile_shop
from tests.grpc_fixtures.server import make_servicer
from tests.proxy.test_server_tls_functional import Pki, pki  # noqa: F401  (the fixture)
from tests.replayer.tapes import make_exchange
from tests.replayer.test_grpc_replay_functional import grpc_status, record_tape
from tests.shadowtap.test_cmd_replay_functional import shadowtap, write_tape
from tests.wire.h2peer import H2TestServer, Header, Responder


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> CompiledShop:
    return compile_shop(tmp_path_factory.mktemp("shop"))


async def _h2c_handle(headers: list[Header], body: bytes, trailers: list[Header], reply: Responder) -> None:
    path = dict(headers)[b":path"]
    reply.head(200, [(b"content-type", b"text/plain")])
    await reply.data(b"h2 " + path)
    reply.trailers([(b"x-checksum", path)])


async def test_grpc_over_tls_and_plain_http2_over_h2c_replay_on_locust(
    tmp_path: Path,
    shop: CompiledShop,
    pki: Pki,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = grpc.aio.server()
    shop.pb2_grpc.add_CatalogServicer_to_server(make_servicer(shop), server)
    plain_port = server.add_insecure_port("127.0.0.1:0")
    credentials = grpc.ssl_server_credentials([(pki.key_file.read_bytes(), pki.cert_file.read_bytes())])
    tls_port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    h2c = await H2TestServer(_h2c_handle).start()
    h2c_port = h2c.port
    # Each Locust worker verifies the target as every client does: the test CA through OpenSSL's variable.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    try:
        recorded = await record_tape(shop, plain_port, tmp_path / "grpc")
        plain = [make_exchange(i, i * 2, session=f"s{i % 2}") for i in range(5)]
        plain[4] = replace(plain[4], request=replace(plain[4].request, http_version="2"))
        write_tape(tmp_path / "plain", plain)
        common = ["--locust", "--locust-workers", "1", "--locust-timeout", "60", "--no-progress"]
        (grpc_code, _, grpc_err), (h2c_code, _, h2c_err) = await asyncio.gather(
            shadowtap(
                str(tmp_path / "grpc"), "--target", f"https://localhost:{tls_port}", "--allow-writes",
                "--results", str(tmp_path / "grpc-results"), "--json", str(tmp_path / "grpc.json"),
                "--max-error-rate", "1", *common,
            ),
            shadowtap(
                str(tmp_path / "plain"), "--target", f"http://127.0.0.1:{h2c_port}/base", "--http2",
                "--results", str(tmp_path / "h2c-results"), *common,
            ),
        )  # fmt: skip
    finally:
        await h2c.close()
        await server.stop(None)
    assert grpc_code == 0, grpc_err
    assert h2c_code == 0, h2c_err

    # gRPC over TLS: unary, server, client and bidirectional streams, each answer whole.
    results = {ex.id: ex for ex in TapeReader(tmp_path / "grpc-results")}
    assert set(results) == set(recorded)
    replayed: dict[str, Response] = {}
    for key, ex in results.items():
        outcome = ex.shadows[REPLAY]
        assert isinstance(outcome, Response), (key, outcome)
        assert (outcome.status, outcome.http_version) == (200, "2")
        assert ex.request == recorded[key].request
        replayed[key] = outcome
    for key in ("unary", "server-stream"):
        assert grpc_status(replayed[key])[0] == b"0"
        assert replayed[key].body == recorded[key].primary.body  # type: ignore[union-attr]
    assert [m.length for m in replayed["server-stream"].messages] == [
        len(m.data) for m in split_messages(replayed["server-stream"].body)
    ] and len(replayed["server-stream"].messages) == 3
    assert grpc_status(replayed["missing"]) == (b"5", b"no product missing")
    summary = shop.pb2.UploadSummary.FromString(split_messages(replayed["client-stream"].body)[0].data)
    assert (summary.accepted, summary.rejected) == (3, 0)
    chat = [shop.pb2.ChatMessage.FromString(m.data) for m in split_messages(replayed["bidi"].body)]
    assert [m.text for m in chat] == ["HELLO 0", "HELLO 1", "HELLO 2"]
    document = json.loads((tmp_path / "grpc.json").read_text())
    overall = document["summary"]
    assert overall["requests"] == 5 and document["workers"] == 1
    assert overall["errors"] == {"grpc-NOT_FOUND": 1}, overall
    [example] = document["errors"]["examples"]
    assert example["detail"] == "200 NOT_FOUND: no product missing"

    # Plain requests, recorded over HTTP/1.1 and HTTP/2, all sent over h2c (--http2) with trailers back.
    results = {ex.id: ex for ex in TapeReader(tmp_path / "h2c-results")}
    assert set(results) == {ex.id for ex in plain}
    for ex in plain:
        outcome = results[ex.id].shadows[REPLAY]
        assert isinstance(outcome, Response) and outcome.http_version == "2", outcome
        path = b"/base" + ex.request.target.encode()
        assert (outcome.status, outcome.body, outcome.trailers) == (200, b"h2 " + path, ((b"x-checksum", path),))
    seen = sorted(dict(stream.headers)[b":path"] for stream in h2c.received)
    assert seen == sorted(b"/base" + ex.request.target.encode() for ex in plain)
    assert all(dict(stream.headers)[b":authority"] == f"127.0.0.1:{h2c_port}".encode() for stream in h2c.received)
