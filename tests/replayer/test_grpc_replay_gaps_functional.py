"""Client- and bidirectional-streaming gRPC calls recorded through ``shadowtap proxy`` (a grpcio
client sending three messages 100 ms apart) and replayed with ``shadowtap replay`` against a real
grpcio server that notes when each message arrives: the replay keeps the gaps the proxy recorded,
scaled by ``--speed`` and never early."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shadowtap.proxy.app import ProxyApp
from shadowtap.proxy.config import ProxyConfig
from shadowtap.recorder import REPLAY, Exchange, Response, TapeReader
from shadowtap.replayer.h2transport import message_offsets
from tests.grpc_fixtures import CompiledShop
from tests.replayer.test_grpc_replay_functional import Catalog, catalog, shop  # noqa: F401  (fixtures)
from tests.shadowtap.test_cmd_replay_functional import shadowtap

GAP_S = 0.1


async def _record(shop: CompiledShop, port: int, tape: Path) -> dict[str, Exchange]:  # noqa: F811
    """One client stream and one bidirectional stream through the proxy, three messages each,
    ``GAP_S`` apart; the tape's exchanges by method name."""
    app = ProxyApp(
        ProxyConfig.from_mapping(
            {
                "listen": "127.0.0.1:0",
                "admin": {"listen": "off"},
                "primary": f"h2c://127.0.0.1:{port}",
                "record": {"tape": str(tape), "join_timeout_s": 5},
            }
        )
    )
    await app.start()
    pb2 = shop.pb2

    async def updates() -> AsyncIterator[Any]:
        for i in range(3):
            if i:
                await asyncio.sleep(GAP_S)
            yield pb2.PriceUpdate(sku=f"sku-{i}", price=pb2.Price(currency="EUR", amount_cents=i))

    async def chat() -> AsyncIterator[Any]:
        for i in range(3):
            if i:
                await asyncio.sleep(GAP_S)
            yield pb2.ChatMessage(text=f"hello {i}", sent_at_unix_ms=i)

    try:
        async with grpc.aio.insecure_channel(app.listen_url.removeprefix("http://")) as channel:
            stub = shop.pb2_grpc.CatalogStub(channel)
            summary = await stub.UploadPrices(updates(), timeout=10)
            replies = [m async for m in stub.Chat(chat(), timeout=10)]
    finally:
        await app.shutdown()
    assert summary.accepted == 3 and [m.text for m in replies] == ["HELLO 0", "HELLO 1", "HELLO 2"]
    return {ex.request.target.rsplit("/", 1)[1]: ex for ex in TapeReader(tape)}


@pytest.mark.parametrize("speed", ["1", "2"])
async def test_streams_recorded_through_the_proxy_replay_with_their_gaps(
    tmp_path: Path,
    shop: CompiledShop,  # noqa: F811
    catalog: Catalog,  # noqa: F811
    speed: str,
) -> None:
    recorded = await _record(shop, catalog.port, tmp_path / "tape")
    for method in ("UploadPrices", "Chat"):
        messages = recorded[method].request.messages
        assert len(messages) == 3 and all(m.at_ns is not None for m in messages)
        at = [m.at_ns or 0 for m in messages]
        # Two gaps of 100 ms between the client's sends; the proxy saw them (slack for a loaded machine).
        assert at == sorted(at) and at[2] - at[0] >= 2 * GAP_S * 1e9 / 2
    catalog.arrivals.clear()  # only the replay's from here
    code, _out, err = await shadowtap(
        str(tmp_path / "tape"), "--target", f"h2c://127.0.0.1:{catalog.port}", "--allow-writes",
        "--speed", speed, "--no-progress", "--results", str(tmp_path / "results"),
    )  # fmt: skip
    assert code == 0, err
    results = {ex.request.target.rsplit("/", 1)[1]: ex for ex in TapeReader(tmp_path / "results")}
    for method in ("UploadPrices", "Chat"):
        ex = results[method]
        outcome = ex.shadows[REPLAY]
        assert isinstance(outcome, Response) and dict(outcome.trailers)[b"grpc-status"] == b"0"
        request = recorded[method].request
        offsets = message_offsets(request.messages, len(request.body), float(speed), 10**12)
        assert offsets is not None
        timing = ex.timings[REPLAY]
        assert ex.started_mono_ns is not None and timing.sent_ns is not None and timing.done_ns is not None
        sent_ns = ex.started_mono_ns + timing.sent_ns
        arrivals = catalog.arrivals[method]
        assert len(arrivals) == 3
        # Message i reached the server no sooner than the call was sent plus its recorded offset
        # divided by the speed: the gaps are kept, never shortened.
        for arrived_ns, (_, offset_ns) in zip(arrivals, offsets, strict=True):
            assert arrived_ns >= sent_ns + offset_ns
        # The call's time covers the stream it sent (honest latency: from its send to its end).
        assert timing.done_ns - timing.sent_ns >= offsets[2][1]
