"""HTTP/2 and gRPC through the proxy's mirror and record stages, against real peers: a grpcio server
v1 as primary and v2 as an h2c shadow, grpcio clients through the proxy (unary and every streaming
kind), the tape read back (HTTP version, trailers, message framing, the shadows' answers), what the
shadow saw (marker, correlation id, no credentials), the route opt-in for gRPC methods, shadows that
black-hole, stall or reset, ``shadowtap diff`` on the tape, and an HTTP/2 client in front of an
HTTP/1 primary."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web

from shadowtap.proxy.app import ProxyApp
from shadowtap.proxy.config import ProxyConfig
from shadowtap.recorder import TapeReader
from shadowtap.recorder.model import Exchange, Failure, Response
from shadowtap.wire.grpc import split_messages
from tests.grpc_fixtures import CompiledShop, compile_shop
from tests.grpc_fixtures.server import make_servicer
from tests.proxy.conftest import AppUpstream
from tests.shadowtap.test_cmd_diff_functional import run_cli
from tests.wire.h2peer import H2TestClient, H2TestServer, Responder

Header = tuple[bytes, bytes]
CATALOG = "/shop.Catalog/"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> CompiledShop:
    return compile_shop(tmp_path_factory.mktemp("shop"))


class _Seen(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Keeps each call's method and metadata as the server got them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.calls.append((details.method, {m.key: m.value for m in details.invocation_metadata}))
        return await continuation(details)


async def _catalog(shop: CompiledShop, version: str, servicer: Any = None) -> tuple[grpc.aio.Server, int, _Seen]:
    seen = _Seen()
    server = grpc.aio.server(interceptors=[seen])
    shop.pb2_grpc.add_CatalogServicer_to_server(servicer or make_servicer(shop, version), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, seen


@pytest.fixture
async def v1(shop: CompiledShop) -> AsyncIterator[tuple[int, _Seen]]:
    server, port, seen = await _catalog(shop, "v1")
    try:
        yield port, seen
    finally:
        await server.stop(None)


@pytest.fixture
async def v2(shop: CompiledShop) -> AsyncIterator[tuple[int, _Seen]]:
    server, port, seen = await _catalog(shop, "v2")
    try:
        yield port, seen
    finally:
        await server.stop(None)


async def _start(config: dict[str, Any]) -> ProxyApp:
    app = ProxyApp(ProxyConfig.from_mapping({"listen": "127.0.0.1:0", "admin": {"listen": "off"}, **config}))
    await app.start()
    return app


def _port(app: ProxyApp) -> int:
    return int(app.listen_url.rsplit(":", 1)[1])


async def _wait_for(predicate: Any, what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


async def _all_kinds(shop: CompiledShop, port: int) -> dict[str, Any]:
    """One call of each kind through the proxy, with a credential in the metadata."""
    pb2 = shop.pb2
    metadata = (("authorization", "Bearer client-secret"), ("x-request-tag", "t1"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = shop.pb2_grpc.CatalogStub(channel)
        product = await stub.GetProduct(pb2.GetProductRequest(id="p1"), metadata=metadata, timeout=10)
        listed = [p async for p in stub.ListProducts(pb2.ListProductsRequest(category="c", limit=3), timeout=10)]

        async def updates() -> AsyncIterator[Any]:
            for i in range(4):
                yield pb2.PriceUpdate(sku=f"s{i}" if i else "", price=pb2.Price(currency="EUR", amount_cents=i))

        summary = await stub.UploadPrices(updates(), timeout=10)

        async def chat() -> AsyncIterator[Any]:
            for text in ("hello", "there"):
                yield pb2.ChatMessage(text=text, sent_at_unix_ms=5)

        replies = [m async for m in stub.Chat(chat(), timeout=10)]
    return {"product": product, "listed": listed, "summary": summary, "replies": replies}


def _trailer(outcome: Response, name: bytes) -> bytes | None:
    for key, value in (*outcome.trailers, *outcome.headers):
        if key == name:
            return value
    return None


def _check_messages(body: bytes, messages: tuple[Any, ...], count: int) -> None:
    framed = split_messages(body)
    assert len(messages) == len(framed) == count
    assert [m.length for m in messages] == [len(f.data) for f in framed]
    assert all(m.flags == 0 and m.at_ns is not None and m.at_ns >= 0 for m in messages)


async def test_grpc_calls_of_every_kind_are_mirrored_to_an_h2c_shadow_and_recorded(
    shop: CompiledShop, v1: tuple[int, _Seen], v2: tuple[int, _Seen], tmp_path: Path
) -> None:
    (primary_port, primary_seen), (shadow_port, shadow_seen) = v1, v2
    tape = tmp_path / "tape"
    app = await _start(
        {
            "primary": f"h2c://127.0.0.1:{primary_port}",
            "shadows": {"v2": f"h2c://127.0.0.1:{shadow_port}"},
            "mirror": {"routes": [{"grpc": f"{CATALOG}*"}]},
            "record": {"tape": str(tape), "join_timeout_s": 5},
        }
    )
    port = _port(app)
    try:
        got = await _all_kinds(shop, port)
        await _wait_for(lambda: len(shadow_seen.calls) == 4, "the shadow got the four calls")
    finally:
        await app.shutdown()

    # The client got the primary's (v1) answers.
    assert got["product"].name == "p1 (v1)"
    assert [p.name for p in got["listed"]] == ["c-0 (v1)", "c-1 (v1)", "c-2 (v1)"]
    assert (got["summary"].accepted, got["summary"].rejected) == (3, 1)
    assert [(m.text, getattr(m, "from")) for m in got["replies"]] == [("HELLO", "v1"), ("THERE", "v1")]

    # The shadow got every call with the marker and correlation id, without the client's credential;
    # the primary got the credential.
    methods = ["GetProduct", "ListProducts", "UploadPrices", "Chat"]
    assert sorted(method for method, _ in shadow_seen.calls) == sorted(CATALOG + m for m in methods)
    for _, metadata in shadow_seen.calls:
        assert metadata["x-shadowtap-shadow"] == "1"
        assert metadata["x-shadowtap-correlation-id"]
        assert "authorization" not in metadata
    shadow_unary = next(md for method, md in shadow_seen.calls if method.endswith("GetProduct"))
    assert shadow_unary["x-request-tag"] == "t1"
    primary_unary = next(md for method, md in primary_seen.calls if method.endswith("GetProduct"))
    assert primary_unary["authorization"] == "Bearer client-secret"
    assert "x-shadowtap-shadow" not in primary_unary

    taped = {ex.request.target: ex for ex in TapeReader(tape)}
    assert sorted(taped) == sorted(CATALOG + m for m in methods)
    expected = {"GetProduct": (1, 1), "ListProducts": (1, 3), "UploadPrices": (4, 1), "Chat": (2, 2)}
    for method, (asked, answered) in expected.items():
        ex: Exchange = taped[CATALOG + method]
        request = ex.request
        assert (request.http_version, request.method, request.authority) == ("2", "POST", f"127.0.0.1:{port}")
        assert all(not name.startswith(b":") for name, _ in request.headers)
        assert ex.decisions == {"v2": "mirrored"}
        _check_messages(request.body, request.messages, asked)
        for name, version in (("primary", "v1"), ("v2", "v2")):
            outcome = ex.primary if name == "primary" else ex.shadows[name]
            assert isinstance(outcome, Response), (method, name, outcome)
            assert outcome.status == 200 and outcome.http_version == "2"
            assert _trailer(outcome, b"grpc-status") == b"0"
            assert all(not key.startswith(b":") for key, _ in outcome.headers)
            _check_messages(outcome.body, outcome.messages, answered)
            if method != "UploadPrices":
                assert f"{version}".encode() in outcome.body
        assert ex.timings["v2"].done_ns is not None
    # The shadow's request delta names the marker and correlation id and the credential removed.
    delta = taped[CATALOG + "GetProduct"].request_deltas["v2"]
    assert b"authorization" in [name.lower() for name in delta.removed]


async def test_only_the_grpc_methods_a_route_opts_in_are_mirrored(
    shop: CompiledShop, v1: tuple[int, _Seen], v2: tuple[int, _Seen], tmp_path: Path
) -> None:
    (primary_port, _), (shadow_port, shadow_seen) = v1, v2
    tape = tmp_path / "tape"
    app = await _start(
        {
            "primary": f"h2c://127.0.0.1:{primary_port}",
            "shadows": {"v2": f"h2c://127.0.0.1:{shadow_port}"},
            "mirror": {"routes": [{"grpc": f"{CATALOG}Get*"}, {"path": "/**", "mirror_methods": ["GET"]}]},
            "record": {"tape": str(tape), "join_timeout_s": 5},
            # The event log needs every joined exchange: the join runs on the loop, not in the writer.
            "events": {"path": str(tmp_path / "events.jsonl")},
        }
    )
    try:
        await _all_kinds(shop, _port(app))
        await _wait_for(lambda: len(shadow_seen.calls) >= 1, "the shadow got the opted-in call")
    finally:
        await app.shutdown()
    assert [method for method, _ in shadow_seen.calls] == [CATALOG + "GetProduct"]
    taped = {ex.request.target: ex for ex in TapeReader(tape)}
    assert taped[CATALOG + "GetProduct"].decisions == {"v2": "mirrored"}
    for method in ("ListProducts", "UploadPrices", "Chat"):
        assert taped[CATALOG + method].decisions == {"v2": "method-not-allowed"}
        assert not taped[CATALOG + method].shadows
    # Joined on the loop, taped alike: HTTP/2, trailers, messages, the shadow's answer.
    unary = taped[CATALOG + "GetProduct"]
    assert unary.request.http_version == "2" and len(unary.request.messages) == 1
    answer = unary.shadows["v2"]
    assert isinstance(answer, Response) and _trailer(answer, b"grpc-status") == b"0" and len(answer.messages) == 1
    chat = taped[CATALOG + "Chat"]
    assert isinstance(chat.primary, Response) and len(chat.primary.messages) == 2 and len(chat.request.messages) == 2
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == 4


async def test_a_request_stream_longer_than_the_shadow_timeout_is_not_mirrored(
    shop: CompiledShop, v1: tuple[int, _Seen], v2: tuple[int, _Seen], tmp_path: Path
) -> None:
    (primary_port, _), (shadow_port, shadow_seen) = v1, v2
    tape = tmp_path / "tape"
    app = await _start(
        {
            "primary": f"h2c://127.0.0.1:{primary_port}",
            "shadows": {"v2": {"url": f"h2c://127.0.0.1:{shadow_port}", "total_timeout_s": 0.2}},
            "mirror": {"routes": [{"grpc": f"{CATALOG}*"}]},
            "record": {"tape": str(tape), "join_timeout_s": 5},
        }
    )
    pb2 = shop.pb2
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{_port(app)}") as channel:
            stub = shop.pb2_grpc.CatalogStub(channel)

            async def slow_chat() -> AsyncIterator[Any]:
                yield pb2.ChatMessage(text="one")
                await asyncio.sleep(0.5)  # the request stream outlasts the shadow's timeout
                yield pb2.ChatMessage(text="two")

            replies = [m.text async for m in stub.Chat(slow_chat(), timeout=10)]
    finally:
        await app.shutdown()
    assert replies == ["ONE", "TWO"]
    assert shadow_seen.calls == []
    (ex,) = list(TapeReader(tape))
    assert ex.decisions == {"v2": "timeout"}
    first, second = ex.request.messages
    assert first.at_ns is not None and second.at_ns is not None and second.at_ns > first.at_ns


async def test_a_grpc_call_is_not_mirrored_without_a_route(
    shop: CompiledShop, v1: tuple[int, _Seen], v2: tuple[int, _Seen]
) -> None:
    (primary_port, _), (shadow_port, shadow_seen) = v1, v2
    app = await _start(
        {"primary": f"h2c://127.0.0.1:{primary_port}", "shadows": {"v2": f"h2c://127.0.0.1:{shadow_port}"}}
    )
    try:
        got = await _all_kinds(shop, _port(app))
        stats = app.stats()
    finally:
        await app.shutdown()
    assert got["product"].name == "p1 (v1)"
    assert shadow_seen.calls == []
    assert stats["mirror"]["v2"]["outcomes"] == {"method-not-allowed": 4}


async def test_a_request_stream_past_the_mirror_cap_is_not_mirrored(
    shop: CompiledShop, v1: tuple[int, _Seen], v2: tuple[int, _Seen], tmp_path: Path
) -> None:
    (primary_port, _), (shadow_port, shadow_seen) = v1, v2
    tape = tmp_path / "tape"
    app = await _start(
        {
            "primary": f"h2c://127.0.0.1:{primary_port}",
            "shadows": {"v2": {"url": f"h2c://127.0.0.1:{shadow_port}", "max_body_bytes": 2048}},
            "mirror": {"routes": [{"grpc": f"{CATALOG}*"}]},
            "record": {"tape": str(tape), "join_timeout_s": 5, "max_body_bytes": 1024},
        }
    )
    pb2 = shop.pb2
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{_port(app)}") as channel:
            stub = shop.pb2_grpc.CatalogStub(channel)

            async def updates() -> AsyncIterator[Any]:
                for i in range(100):  # about 3 KiB of messages: past the shadow's 2 KiB
                    yield pb2.PriceUpdate(sku=f"sku-{i:04d}", price=pb2.Price(currency="EUR", amount_cents=i))

            summary = await stub.UploadPrices(updates(), timeout=10)
    finally:
        await app.shutdown()
    assert summary.accepted == 100
    assert shadow_seen.calls == []
    (ex,) = list(TapeReader(tape))
    assert ex.decisions == {"v2": "body-too-large"}
    # Capped on the tape, truncation marked, every message's framing kept.
    assert len(ex.request.body) == 1024 and ex.request.truncated_from is not None and ex.request.truncated_from > 2048
    assert len(ex.request.messages) == 100


async def _black_hole() -> tuple[asyncio.Server, list[asyncio.StreamWriter]]:
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts, reads nothing, answers nothing

    return await asyncio.start_server(accept, "127.0.0.1", 0), held


async def _resetting() -> H2TestServer:
    async def handler(headers: list[Header], body: bytes, trailers: list[Header], respond: Responder) -> None:
        respond.reset(0x2)

    return await H2TestServer(handler).start()


async def _stalling(shop: CompiledShop) -> tuple[grpc.aio.Server, int, _Seen]:
    inner = make_servicer(shop, "v2")

    class Stalling(shop.pb2_grpc.CatalogServicer):  # type: ignore[misc,name-defined]
        async def GetProduct(self, request: Any, context: Any) -> Any:
            await asyncio.sleep(30)
            return await inner.GetProduct(request, context)

    return await _catalog(shop, "v2", Stalling())


async def test_black_holed_stalling_and_resetting_h2_shadows_never_cost_the_primary(
    shop: CompiledShop, v1: tuple[int, _Seen], tmp_path: Path
) -> None:
    primary_port, _ = v1
    hole, held = await _black_hole()
    resetter = await _resetting()
    stall_server, stall_port, stall_seen = await _stalling(shop)
    hole_port = hole.sockets[0].getsockname()[1]
    shadow = {"total_timeout_s": 0.5, "connect_timeout_s": 0.3}
    tape = tmp_path / "tape"
    app = await _start(
        {
            "primary": f"h2c://127.0.0.1:{primary_port}",
            "shadows": [
                {"name": "hole", "url": f"h2c://127.0.0.1:{hole_port}", **shadow},
                {"name": "stall", "url": f"h2c://127.0.0.1:{stall_port}", **shadow},
                {"name": "reset", "url": f"h2c://127.0.0.1:{resetter.port}", **shadow},
            ],
            "mirror": {"routes": [{"grpc": f"{CATALOG}GetProduct"}]},
            "record": {"tape": str(tape), "join_timeout_s": 5},
        }
    )
    pb2 = shop.pb2
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{_port(app)}") as channel:
            stub = shop.pb2_grpc.CatalogStub(channel)
            names = []
            for i in range(20):
                product = await stub.GetProduct(pb2.GetProductRequest(id=f"p{i}"), timeout=10)
                names.append(product.name)
    finally:
        await app.shutdown()
        await stall_server.stop(None)
        await resetter.close()
        hole.close()
        for writer in held:
            writer.close()
    assert names == [f"p{i} (v1)" for i in range(20)]  # every primary call answered
    assert stall_seen.calls  # the stalling shadow was reached
    taped = list(TapeReader(tape))
    assert len(taped) == 20
    kinds: dict[str, set[str]] = {"hole": set(), "stall": set(), "reset": set()}
    for ex in taped:
        assert isinstance(ex.primary, Response) and _trailer(ex.primary, b"grpc-status") == b"0"
        for name in kinds:
            outcome = ex.shadows.get(name)
            kinds[name].add(outcome.kind if isinstance(outcome, Failure) else ex.decisions[name])
    assert kinds["hole"] <= {"connect-error", "timeout", "breaker-open", "queue-full"}, kinds
    assert kinds["stall"] <= {"timeout", "breaker-open", "queue-full"}, kinds
    assert kinds["reset"] <= {"reset", "breaker-open"}, kinds
    assert "reset" in kinds["reset"] and "timeout" in kinds["stall"]


async def test_shadowtap_diff_finds_the_v2_change_on_a_recorded_grpc_tape(
    shop: CompiledShop, v1: tuple[int, _Seen], v2: tuple[int, _Seen], tmp_path: Path
) -> None:
    (primary_port, _), (shadow_port, _) = v1, v2
    tape = tmp_path / "tape"
    app = await _start(
        {
            "primary": f"h2c://127.0.0.1:{primary_port}",
            "shadows": {"v2": f"h2c://127.0.0.1:{shadow_port}"},
            "mirror": {"routes": [{"grpc": f"{CATALOG}GetProduct"}]},
            "record": {"tape": str(tape), "join_timeout_s": 5},
        }
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{_port(app)}") as channel:
            stub = shop.pb2_grpc.CatalogStub(channel)
            for i in range(30):
                await stub.GetProduct(shop.pb2.GetProductRequest(id=f"p{i}"), timeout=10)
    finally:
        await app.shutdown()
    taped = list(TapeReader(tape))
    assert len(taped) == 30 and all(isinstance(ex.shadows.get("v2"), Response) for ex in taped)
    report = tmp_path / "report.json"
    result = await asyncio.to_thread(
        run_cli,
        "diff",
        tape,
        "--candidate",
        "v2",
        "--proto-descriptor",
        shop.descriptor_set,
        "--json",
        report,
        "--fail-on",
        "severity>=medium",
    )
    assert "Traceback" not in result.stderr
    assert result.returncode == 1, result.stdout + result.stderr
    document = json.loads(report.read_text())
    found = {(e["endpoint"], s["path"]) for e in document["endpoints"] for s in e["signatures"] if not s["suppressed"]}
    assert found == {("POST " + CATALOG + "GetProduct", "body.name")}  # the one planted change: v2 in the name


async def test_an_h2_client_in_front_of_an_http1_primary_records_http2_and_mirrors_over_http1(
    tmp_path: Path,
) -> None:
    class Echo(AppUpstream):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name
            self.seen: list[tuple[str, dict[str, str]]] = []

        async def handle(self, request: web.Request) -> web.StreamResponse:
            await request.read()
            self.seen.append((f"{request.method} {request.path_qs}", dict(request.headers)))
            return web.Response(text=f"{self.name} {request.method} {request.path_qs}")

    primary, shadow = await Echo("v1").start(), await Echo("v2").start()
    tape = tmp_path / "tape"
    app = await _start(
        {"primary": primary.url, "shadows": {"v2": shadow.url}, "record": {"tape": str(tape), "join_timeout_s": 5}}
    )
    try:
        client = await H2TestClient.connect(_port(app))
        try:
            first = await client.get("/items/1?x=2", [(b"accept", b"text/plain"), (b"authorization", b"Basic eA==")])
            stream = client.request("POST", "/orders", [(b"content-type", b"application/json")], b'{"n": 1}', end=False)
            client.end(stream, [(b"x-checksum", b"abc")])
            second = await client.response(stream)
            await _wait_for(lambda: len(shadow.seen) == 1, "the shadow got the GET")
        finally:
            with contextlib.suppress(Exception):
                client.writer.close()
    finally:
        await app.shutdown()
        await primary.close()
        await shadow.close()
    assert first.status == 200 and first.body == b"v1 GET /items/1?x=2"
    assert second.status == 200 and second.body == b"v1 POST /orders"
    # The HTTP/2 GET went to the HTTP/1.1 shadow as HTTP/1.1, marked, without the credential; the
    # POST was not mirrored (safe methods only).
    ((line, headers),) = shadow.seen
    assert line == "GET /items/1?x=2" and headers["X-Shadowtap-Shadow"] == "1" and "Authorization" not in headers
    taped = {ex.request.target: ex for ex in TapeReader(tape)}
    get, post = taped["/items/1?x=2"], taped["/orders"]
    for ex in (get, post):
        assert ex.request.http_version == "2"
        assert isinstance(ex.primary, Response) and ex.primary.http_version == "1.1"
    assert get.request.method == "GET" and (b"accept", b"text/plain") in get.request.headers
    assert isinstance(get.primary, Response) and get.primary.body == b"v1 GET /items/1?x=2"
    answer = get.shadows["v2"]
    assert isinstance(answer, Response) and answer.body == b"v2 GET /items/1?x=2" and answer.http_version == "1.1"
    assert post.decisions == {"v2": "method-not-allowed"}
    assert post.request.body == b'{"n": 1}' and post.request.trailers == ((b"x-checksum", b"abc"),)
    assert post.request.messages == ()
