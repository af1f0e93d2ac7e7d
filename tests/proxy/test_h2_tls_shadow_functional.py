"""HTTP/2 over TLS to a shadow (``https://`` with ``http2: true``), against real peers: a grpcio
primary on h2c, a grpcio shadow on a TLS port with a throw-away CA, grpcio clients through the proxy
(unary and client streaming), the shadow's view of the calls and the tape; an https shadow that does
not agree to ``h2`` by ALPN fails its copies as ``connect-error`` without touching the primary path."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web

from shadowtap.proxy.app import ProxyApp
from shadowtap.proxy.config import ProxyConfig, ShadowSettings
from shadowtap.recorder import TapeReader
from shadowtap.recorder.errors import ConfigError
from shadowtap.recorder.model import Failure, Response
from tests.grpc_fixtures import CompiledShop, compile_shop
from tests.grpc_fixtures.server import make_servicer
from tests.proxy.test_server_tls_functional import Pki, pki  # noqa: F401  (the fixture)

CATALOG = "/shop.Catalog/"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> CompiledShop:
    return compile_shop(tmp_path_factory.mktemp("shop"))


class _Seen(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.calls.append((details.method, {m.key: m.value for m in details.invocation_metadata}))
        return await continuation(details)


async def _catalog(shop: CompiledShop, version: str, pki: Pki | None = None) -> tuple[grpc.aio.Server, int, _Seen]:  # noqa: F811
    seen = _Seen()
    server = grpc.aio.server(interceptors=[seen])
    shop.pb2_grpc.add_CatalogServicer_to_server(make_servicer(shop, version), server)
    if pki is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        credentials = grpc.ssl_server_credentials([(pki.key_file.read_bytes(), pki.cert_file.read_bytes())])
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, port, seen


async def _wait_for(predicate: Any, what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


async def _start(config: dict[str, Any]) -> tuple[ProxyApp, int]:
    app = ProxyApp(ProxyConfig.from_mapping({"listen": "127.0.0.1:0", "admin": {"listen": "off"}, **config}))
    await app.start()
    return app, int(app.listen_url.rsplit(":", 1)[1])


async def _calls(shop: CompiledShop, port: int) -> tuple[Any, Any]:
    pb2 = shop.pb2
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = shop.pb2_grpc.CatalogStub(channel)
        product = await stub.GetProduct(pb2.GetProductRequest(id="p1"), timeout=10)

        async def updates() -> AsyncIterator[Any]:
            for i in range(3):
                yield pb2.PriceUpdate(sku=f"s{i}", price=pb2.Price(currency="EUR", amount_cents=i))

        summary = await stub.UploadPrices(updates(), timeout=10)
    return product, summary


async def test_grpc_calls_are_mirrored_to_a_tls_http2_shadow(shop: CompiledShop, pki: Pki, tmp_path: Path) -> None:  # noqa: F811
    primary, primary_port, _ = await _catalog(shop, "v1")
    shadow, shadow_port, shadow_seen = await _catalog(shop, "v2", pki)
    tape = tmp_path / "tape"
    app, port = await _start(
        {
            "primary": f"h2c://127.0.0.1:{primary_port}",
            "shadows": [
                {"name": "v2", "url": f"https://localhost:{shadow_port}", "http2": True, "ca_file": str(pki.ca_file)}
            ],
            "mirror": {"routes": [{"grpc": f"{CATALOG}*"}]},
            "record": {"tape": str(tape), "join_timeout_s": 5},
        }
    )
    try:
        product, summary = await _calls(shop, port)
        await _wait_for(lambda: len(shadow_seen.calls) == 2, "the TLS shadow got both calls")
    finally:
        await app.shutdown()
        await shadow.stop(None)
        await primary.stop(None)
    assert product.name == "p1 (v1)" and summary.accepted == 3
    assert sorted(method for method, _ in shadow_seen.calls) == [CATALOG + "GetProduct", CATALOG + "UploadPrices"]
    assert all(metadata["x-shadowtap-shadow"] == "1" for _, metadata in shadow_seen.calls)
    taped = {ex.request.target: ex for ex in TapeReader(tape)}
    for method in ("GetProduct", "UploadPrices"):
        answer = taped[CATALOG + method].shadows["v2"]
        assert isinstance(answer, Response), answer
        assert answer.http_version == "2" and dict(answer.trailers)[b"grpc-status"] == b"0"
    assert b"p1 (v2)" in taped[CATALOG + "GetProduct"].shadows["v2"].body  # type: ignore[union-attr]
    assert len(taped[CATALOG + "UploadPrices"].shadows["v2"].messages) == 1  # type: ignore[union-attr]


async def test_an_https_shadow_that_refuses_h2_fails_its_copies_only(
    shop: CompiledShop,
    pki: Pki,  # noqa: F811
    tmp_path: Path,
) -> None:
    primary, primary_port, _ = await _catalog(shop, "v1")

    # An HTTP/1.1-only TLS server: ALPN never agrees to h2.
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text="http/1.1 only")

    http1 = web.Application()
    http1.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(http1, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    context.set_alpn_protocols(["http/1.1"])
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    shadow_port = runner.addresses[0][1]
    tape = tmp_path / "tape"
    app, port = await _start(
        {
            "primary": f"h2c://127.0.0.1:{primary_port}",
            "shadows": [
                {"name": "v2", "url": f"https://localhost:{shadow_port}", "http2": True, "ca_file": str(pki.ca_file)}
            ],
            "mirror": {"routes": [{"grpc": f"{CATALOG}*"}]},
            "record": {"tape": str(tape), "join_timeout_s": 5},
        }
    )
    try:
        product, summary = await _calls(shop, port)
    finally:
        await app.shutdown()
        await runner.cleanup()
        await primary.stop(None)
    assert product.name == "p1 (v1)" and summary.accepted == 3
    taped = list(TapeReader(tape))
    assert len(taped) == 2
    for ex in taped:
        assert isinstance(ex.primary, Response)
        failure = ex.shadows["v2"]
        assert isinstance(failure, Failure) and failure.kind == "connect-error", failure
        assert "ALPN" in failure.message


def test_http2_is_for_https_shadows() -> None:
    assert ShadowSettings(name="v2", url="https://127.0.0.1:1", http2=True).http2
    with pytest.raises(ConfigError, match="h2c://"):
        ShadowSettings(name="v2", url="http://127.0.0.1:1", http2=True)
    config = ProxyConfig.from_mapping(
        {"primary": "http://127.0.0.1:1", "shadows": [{"name": "v2", "url": "https://127.0.0.1:2", "http2": True}]}
    )
    assert config.shadows[0].http2
