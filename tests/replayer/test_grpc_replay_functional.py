"""`shadowtap replay` of gRPC calls against a real grpcio server (shop.Catalog), end to end: a tape of
real encoded messages (recorded answers from the same server, built with ``recorder.model``), the
CLI as a subprocess with an ``h2c://`` target, then the results tape, the stats, the client-stream
gaps, and `shadowtap diff` over the results; and a tape `shadowtap proxy` recorded in front of v1,
replayed against v2."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from shadowtap.recorder import PRIMARY, REPLAY, Exchange, Request, Response, SyncTapeWriter, TapeOptions, TapeReader
from shadowtap.recorder.model import StreamMessage, Timing
from shadowtap.replayer.h2transport import H2Transport, message_offsets
from shadowtap.replayer.transport import ClientSettings, error_class
from shadowtap.wire.grpc import encode_message, split_messages
from tests.grpc_fixtures import CompiledShop, compile_shop
from tests.grpc_fixtures.server import make_servicer
from tests.replayer.tapes import MS, T_BASE_NS
from tests.shadowtap.test_cmd_replay_functional import shadowtap

GRPC_HEADERS = ((b"content-type", b"application/grpc"), (b"te", b"trailers"), (b"user-agent", b"grpc-test/1"))
#: When each message of the recorded client and bidirectional streams passed (ms after the call began).
UPLOAD_AT_MS = (1, 201, 401)
CHAT_AT_MS = (1, 151, 301)
SPEED = 2.0


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> CompiledShop:
    return compile_shop(tmp_path_factory.mktemp("shop"))


@dataclass
class Catalog:
    """The fixture's catalog, also noting when each streamed request message arrived."""

    port: int
    arrivals: dict[str, list[int]] = field(default_factory=dict)


@pytest.fixture
async def catalog(shop: CompiledShop) -> AsyncIterator[Catalog]:
    base = make_servicer(shop)
    arrivals: dict[str, list[int]] = {}

    class Timed(type(base)):  # type: ignore[misc]
        async def UploadPrices(self, request_iterator: Any, context: Any) -> Any:
            seen = arrivals.setdefault("UploadPrices", [])
            accepted = 0
            async for update in request_iterator:
                seen.append(time.monotonic_ns())
                if update.sku == "stop":
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "stopped")
                accepted += bool(update.sku)
            return shop.pb2.UploadSummary(accepted=accepted, rejected=len(seen) - accepted)

        async def Chat(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
            seen = arrivals.setdefault("Chat", [])
            async for message in request_iterator:
                seen.append(time.monotonic_ns())
                yield shop.pb2.ChatMessage(text=message.text.upper(), sent_at_unix_ms=message.sent_at_unix_ms)

    server = grpc.aio.server()
    shop.pb2_grpc.add_CatalogServicer_to_server(Timed(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Catalog(port, arrivals)
    finally:
        await server.stop(None)


def framed(messages: list[Any]) -> bytes:
    return b"".join(encode_message(m.SerializeToString()) for m in messages)


def timed(messages: list[Any], at_ms: tuple[int, ...]) -> tuple[StreamMessage, ...]:
    return tuple(StreamMessage(0, m.ByteSize(), at * MS) for m, at in zip(messages, at_ms, strict=True))


def grpc_exchange(
    ex_id: str, at_ms: int, method: str, requests: list[Any], answers: list[Any], request_at_ms: tuple[int, ...]
) -> Exchange:
    """A recorded gRPC call: ``requests`` sent at ``request_at_ms``, ``answers`` with grpc-status OK."""
    return Exchange(
        id=ex_id,
        started_at_ns=T_BASE_NS + at_ms * MS,
        request=Request(
            "POST",
            f"/shop.Catalog/{method}",
            GRPC_HEADERS,
            framed(requests),
            authority="catalog.internal",
            http_version="2",
            messages=timed(requests, request_at_ms),
        ),  # fmt: skip
        primary=Response(
            200,
            "",
            ((b"content-type", b"application/grpc"),),
            framed(answers),
            http_version="2",
            trailers=((b"grpc-status", b"0"),),
            messages=timed(answers, tuple(500 for _ in answers)),
        ),  # fmt: skip
        timings={PRIMARY: Timing(0, 400 * MS, 500 * MS)},
        session=ex_id,
    )


async def record_tape(shop: CompiledShop, port: int, directory: Path) -> dict[str, Exchange]:
    """Ask the real server for the answers a recording would hold, and write the tape."""
    pb2 = shop.pb2
    updates = [pb2.PriceUpdate(sku=f"sku-{i}", price=pb2.Price(currency="EUR", amount_cents=i)) for i in range(3)]
    chat = [pb2.ChatMessage(text=f"hello {i}", sent_at_unix_ms=i) for i in range(3)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = shop.pb2_grpc.CatalogStub(channel)
        product = await stub.GetProduct(pb2.GetProductRequest(id="p1"))
        listing = [p async for p in stub.ListProducts(pb2.ListProductsRequest(category="tea", limit=3))]
        summary = await stub.UploadPrices(iter(updates))
        replies = [m async for m in stub.Chat(iter(chat))]
    # The recorded service had a product "missing"; the target answers NOT_FOUND.
    missing = pb2.Product(id="missing", name="missing (v1)")
    exchanges = [
        grpc_exchange("unary", 0, "GetProduct", [pb2.GetProductRequest(id="p1")], [product], (1,)),
        grpc_exchange("missing", 5, "GetProduct", [pb2.GetProductRequest(id="missing")], [missing], (1,)),
        grpc_exchange("server-stream", 10, "ListProducts", [pb2.ListProductsRequest(category="tea", limit=3)],
                      listing, (1,)),
        grpc_exchange("client-stream", 15, "UploadPrices", updates, [summary], UPLOAD_AT_MS),
        grpc_exchange("bidi", 20, "Chat", chat, replies, CHAT_AT_MS),
    ]  # fmt: skip
    with SyncTapeWriter(directory, TapeOptions(redaction=None, compression="none")) as writer:
        for ex in exchanges:
            writer.write(ex)
    return {ex.id: ex for ex in exchanges}


def grpc_status(response: Response) -> tuple[bytes | None, bytes | None]:
    for fields in (response.trailers, response.headers):
        values = dict(fields)
        if b"grpc-status" in values:
            return values[b"grpc-status"], values.get(b"grpc-message")
    return None, None


def offsets_ns(at_ms: tuple[int, ...], size: int) -> Iterator[int]:
    messages = tuple(StreamMessage(0, 0, at * MS) for at in at_ms)
    found = message_offsets(messages, 5 * size, SPEED, 10**12)
    assert found is not None
    return (offset for _, offset in found)


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_grpc_calls_replay_over_h2c_with_statuses_messages_and_gaps(
    tmp_path: Path, shop: CompiledShop, catalog: Catalog, workers: str
) -> None:
    recorded = await record_tape(shop, catalog.port, tmp_path / "tape")
    catalog.arrivals.clear()  # only the replay's from here
    code, out, err = await shadowtap(
        str(tmp_path / "tape"), "--target", f"h2c://127.0.0.1:{catalog.port}", "--allow-writes",
        "--speed", str(SPEED), "--no-progress", "--results", str(tmp_path / "results"),
        "--json", str(tmp_path / "stats.json"), "--html", str(tmp_path / "report.html"),
        "--max-error-rate", "1", "--workers", workers,
    )  # fmt: skip
    assert code == 0, err
    results = {ex.id: ex for ex in TapeReader(tmp_path / "results")}
    assert set(results) == set(recorded)
    replayed: dict[str, Response] = {}
    for key, ex in results.items():
        outcome = ex.shadows[REPLAY]
        assert isinstance(outcome, Response), (key, outcome)
        assert (outcome.status, outcome.http_version) == (200, "2")
        replayed[key] = outcome
        assert ex.request == recorded[key].request and ex.primary == recorded[key].primary

    # Unary and server streaming: the answers the recording holds, message by message.
    for key in ("unary", "server-stream"):
        assert grpc_status(replayed[key])[0] == b"0"
        assert replayed[key].body == recorded[key].primary.body  # type: ignore[union-attr]
        assert [m.length for m in replayed[key].messages] == [len(m.data) for m in split_messages(replayed[key].body)]
    assert len(replayed["server-stream"].messages) == 3
    status, message = grpc_status(replayed["missing"])
    assert (status, message) == (b"5", b"no product missing")
    summary = shop.pb2.UploadSummary.FromString(split_messages(replayed["client-stream"].body)[0].data)
    assert (summary.accepted, summary.rejected) == (3, 0)
    chat = [shop.pb2.ChatMessage.FromString(m.data) for m in split_messages(replayed["bidi"].body)]
    assert [m.text for m in chat] == ["HELLO 0", "HELLO 1", "HELLO 2"]

    # The recorded gaps, halved by --speed 2, and never early: message i reached the server no
    # sooner than the call was sent plus its offset.
    for key, method, at_ms in (("client-stream", "UploadPrices", UPLOAD_AT_MS), ("bidi", "Chat", CHAT_AT_MS)):
        ex = results[key]
        timing = ex.timings[REPLAY]
        assert ex.started_mono_ns is not None and timing.sent_ns is not None
        sent_ns = ex.started_mono_ns + timing.sent_ns
        arrivals = catalog.arrivals[method]
        assert len(arrivals) == 3
        for arrived_ns, offset_ns in zip(arrivals, offsets_ns(at_ms, 3), strict=True):
            assert arrived_ns >= sent_ns + offset_ns
    # A bidirectional call's answers interleave: reply i came after message i was sent.
    bidi = results["bidi"]
    assert bidi.timings[REPLAY].sent_ns is not None
    for reply, offset_ns in zip(replayed["bidi"].messages, offsets_ns(CHAT_AT_MS, 3), strict=True):
        assert reply.at_ns is not None and reply.at_ns >= bidi.timings[REPLAY].sent_ns + offset_ns

    # The stats count the NOT_FOUND as an error by its name, like a 5xx.
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["errors"]["by_kind"] == {"grpc-NOT_FOUND": 1}
    assert stats["summary"]["errors"] == {"grpc-NOT_FOUND": 1}
    by_endpoint = {e["endpoint"]: e for e in stats["endpoints"]}
    assert by_endpoint["POST /shop.Catalog/GetProduct"]["errors"] == {"grpc-NOT_FOUND": 1}
    assert "grpc-NOT_FOUND 1" in out
    assert "200 NOT_FOUND: no product missing" in json.dumps(stats["errors"]["examples"])
    html = (tmp_path / "report.html").read_text()
    assert "grpc-NOT_FOUND&nbsp;&times;1" in html and "grpc-NOT_FOUND: 1" in html

    # The results tape reads like a proxy tape: `shadowtap diff` compares recorded vs replayed.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowtap", "diff", str(tmp_path / "results"),
        "--proto-descriptor", str(shop.descriptor_set), "--json", str(tmp_path / "diff.json"), "--no-progress",
        "--min-samples", "1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    diff_out, diff_err = await asyncio.wait_for(proc.communicate(), timeout=60)
    # Exit 1: the status change is critical, and it is the only difference.
    assert proc.returncode == 1, diff_out.decode() + diff_err.decode()
    report = (tmp_path / "diff.json").read_text()
    assert "/shop.Catalog/GetProduct" in report and "OK->NOT_FOUND" in report
    assert "pairs 5  compared 5  equal 4  differing 1" in diff_out.decode()


async def test_a_call_the_target_ends_early_sends_no_more_and_frees_its_stream(
    shop: CompiledShop, catalog: Catalog
) -> None:
    pb2 = shop.pb2
    updates = [pb2.PriceUpdate(sku="stop"), pb2.PriceUpdate(sku="later")]
    recorded = Request("POST", "/shop.Catalog/UploadPrices", GRPC_HEADERS, framed(updates), http_version="2",
                       messages=timed(updates, (0, 2_000)))  # fmt: skip
    lookup = [pb2.GetProductRequest(id="p1")]
    async with H2Transport(f"h2c://127.0.0.1:{catalog.port}", ClientSettings(h2_connections=1)) as transport:
        stopped = await transport.send("POST", recorded.target, GRPC_HEADERS, recorded.body, recorded)
        # The client's half of the stream is ended too: h2 no longer counts it as open.
        open_streams = transport._pool._conns[0]._h2.open_outbound_streams
        after = await transport.send("POST", "/shop.Catalog/GetProduct", GRPC_HEADERS, framed(lookup))
    assert isinstance(stopped.outcome, Response) and error_class(stopped.outcome) == "grpc-FAILED_PRECONDITION"
    assert len(catalog.arrivals["UploadPrices"]) == 1  # the second message was never sent
    assert open_streams == 0
    assert isinstance(after.outcome, Response) and error_class(after.outcome) is None


async def test_a_tape_the_proxy_recorded_replays_against_another_version(
    tmp_path: Path, shop: CompiledShop, catalog: Catalog
) -> None:
    # Recorded through `shadowtap proxy` in front of v1 (h2c), replayed against v2: the results
    # tape holds both, and the diff names the changed field.
    from shadowtap.proxy.app import ProxyApp
    from shadowtap.proxy.config import ProxyConfig

    v2 = grpc.aio.server()
    shop.pb2_grpc.add_CatalogServicer_to_server(make_servicer(shop, "v2"), v2)
    v2_port = v2.add_insecure_port("127.0.0.1:0")
    await v2.start()
    tape = tmp_path / "tape"
    app = ProxyApp(
        ProxyConfig.from_mapping(
            {
                "listen": "127.0.0.1:0",
                "admin": {"listen": "off"},
                "primary": f"h2c://127.0.0.1:{catalog.port}",
                "record": {"tape": str(tape), "join_timeout_s": 5},
            }
        )
    )
    await app.start()
    pb2 = shop.pb2
    try:
        async with grpc.aio.insecure_channel(app.listen_url.removeprefix("http://")) as channel:
            stub = shop.pb2_grpc.CatalogStub(channel)
            await stub.GetProduct(pb2.GetProductRequest(id="p1"), timeout=10)
            [p async for p in stub.ListProducts(pb2.ListProductsRequest(category="c", limit=3), timeout=10)]
            await stub.UploadPrices(iter([pb2.PriceUpdate(sku="a"), pb2.PriceUpdate(sku="b")]), timeout=10)
            [m async for m in stub.Chat(iter([pb2.ChatMessage(text="hi"), pb2.ChatMessage(text="yo")]), timeout=10)]
    finally:
        await app.shutdown()
    try:
        code, _out, err = await shadowtap(
            str(tape), "--target", f"h2c://127.0.0.1:{v2_port}", "--allow-writes", "--no-progress",
            "--results", str(tmp_path / "results"),
        )  # fmt: skip
    finally:
        await v2.stop(None)
    assert code == 0, err
    results = {ex.request.target.rsplit("/", 1)[1]: ex for ex in TapeReader(tmp_path / "results")}
    assert sorted(results) == ["Chat", "GetProduct", "ListProducts", "UploadPrices"]
    for method, answers in {"GetProduct": 1, "ListProducts": 3, "UploadPrices": 1, "Chat": 2}.items():
        replayed = results[method].shadows[REPLAY]
        assert isinstance(replayed, Response) and grpc_status(replayed)[0] == b"0", (method, replayed)
        assert len(replayed.messages) == len(split_messages(replayed.body)) == answers
    product = pb2.Product.FromString(split_messages(results["GetProduct"].shadows[REPLAY].body)[0].data)
    assert product.name == "p1 (v2)"
    code, diff_out, diff_err = await asyncio.wait_for(
        run_diff(tmp_path / "results", "--proto-descriptor", str(shop.descriptor_set), "--min-samples", "1"), 60
    )
    # The product names carry the version: a value change per unary answer and per streamed one.
    assert code == 0, diff_out + diff_err
    assert "pairs 4  compared 4" in diff_out and "body.name" in diff_out and "body[*].name" in diff_out


async def run_diff(*args: str | Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowtap", "diff", *map(str, args), "--no-progress",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
