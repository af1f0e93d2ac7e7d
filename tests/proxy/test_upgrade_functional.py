"""Upgrade pass-through: the tunnel after a 101, a refused upgrade, and either side closing."""

from __future__ import annotations

import asyncio

from tests.proxy.conftest import RecordingStage, raw_request, running_proxy
from tests.proxy.test_upstream_functional import raw_primary

UPGRADE_REQUEST = b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: toy-protocol\r\nX-Keep: 1\r\n\r\n"


async def _toy_switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"\r\nUpgrade: toy-protocol\r\n" in head and b"\r\nConnection: Upgrade\r\n" in head
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: toy-protocol\r\n\r\nHELLO\n")
    await writer.drain()
    while line := await reader.readline():
        if line == b"quit\n":
            writer.write(b"BYE\n")
            await writer.drain()
            return  # the primary ends the tunnel
        writer.write(line.upper())
        await writer.drain()


async def test_tunnel_carries_bytes_both_ways_and_closes_with_the_primary() -> None:
    stage = RecordingStage()
    async with raw_primary(_toy_switch) as (port, _), running_proxy(port, stages=[stage]) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            # Tunnel bytes sent right behind the request must wait for the 101, then pass.
            writer.write(UPGRADE_REQUEST + b"early\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
            assert b"Upgrade: toy-protocol" in head and b"Connection: Upgrade" in head
            assert await asyncio.wait_for(reader.readline(), 5) == b"HELLO\n"
            assert await asyncio.wait_for(reader.readline(), 5) == b"EARLY\n"
            writer.write(b"x" * 50_000 + b"\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"X" * 50_000 + b"\n"
            writer.write(b"quit\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"BYE\n"
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed with the primary
        finally:
            writer.close()
        await asyncio.sleep(0.05)
        assert proxy.stats.upgrades == 1
        assert proxy.stats.in_flight == 0
    (ex,) = stage.exchanges
    assert ex.upgraded and ex.response is not None and ex.response.status == 101
    assert ex.timing.done_ns is not None


async def _refuse_upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope")
    await writer.drain()
    await reader.read()


async def test_refused_upgrade_is_relayed_and_plain_http_goes_on() -> None:
    # The client connection stays HTTP/1.1 (as with nginx); the primary's connection, which may
    # still act on the offer, is closed rather than pooled.
    async with raw_primary(_refuse_upgrade) as (port, accepted), running_proxy(port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(UPGRADE_REQUEST)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
            assert b"Connection: close" not in head
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"nope"
            writer.write(UPGRADE_REQUEST)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"nope"
        finally:
            writer.close()
        assert len(accepted) == 2
        assert proxy.stats.pool.reuses == 0


async def test_client_closing_the_tunnel_closes_the_primary_side() -> None:
    primary_saw_eof = asyncio.Event()

    async def switch_and_wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: toy-protocol\r\n\r\n")
        await writer.drain()
        await reader.read()
        primary_saw_eof.set()

    async with raw_primary(switch_and_wait) as (port, _), running_proxy(port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(UPGRADE_REQUEST)
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        await asyncio.wait_for(primary_saw_eof.wait(), 5)
        await asyncio.sleep(0.05)
        assert proxy.stats.in_flight == 0


async def _read_body_and_decline(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    body = await reader.readexactly(length)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    await reader.read()


async def test_upgrade_request_with_a_body_that_is_declined_is_answered() -> None:
    # h2c-style: an Upgrade offer on a request with a body; the primary ignores the offer.
    request = (
        b"POST /form HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 11\r\n\r\nhello world"
    )
    async with raw_primary(_read_body_and_decline) as (port, _), running_proxy(port, first_byte_timeout_s=3) as proxy:
        (response,) = await raw_request(proxy.port, request)
    assert response.status == 200
    assert response.body == b"hello world"


async def _connect_gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A primary that accepts CONNECT (a TCP gateway): it speaks first, in the segment of its 200."""
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"CONNECT echo.internal:7 HTTP/1.1\r\n"):
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
        await writer.drain()
        return
    writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\nBANNER\n")
    await writer.drain()
    while line := await reader.readline():
        writer.write(line.upper())
        await writer.drain()


async def test_connect_to_an_allowed_target_becomes_a_tunnel_after_the_primary_accepts() -> None:
    stage = RecordingStage()
    async with (
        raw_primary(_connect_gateway) as (port, _),
        running_proxy(port, stages=[stage], connect_targets=("echo.internal:7",)) as proxy,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            # Bytes behind the CONNECT wait for the primary's 2xx, then go through the tunnel.
            writer.write(b"CONNECT echo.internal:7 HTTP/1.1\r\nHost: echo.internal:7\r\n\r\nearly\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 Connection Established\r\n")
            assert b"Transfer-Encoding" not in head and b"Content-Length" not in head
            assert await asyncio.wait_for(reader.readline(), 5) == b"BANNER\n"
            assert await asyncio.wait_for(reader.readline(), 5) == b"EARLY\n"
            writer.write(b"x" * 50_000 + b"\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"X" * 50_000 + b"\n"
        finally:
            writer.close()
        await asyncio.sleep(0.1)
        assert proxy.stats.upgrades == 1
        assert proxy.stats.in_flight == 0
    (ex,) = stage.exchanges
    assert ex.method == "CONNECT" and ex.upgraded
    assert ex.response is not None and ex.response.status == 200 and ex.response.body == b""


async def test_connect_the_primary_refuses_is_relayed_and_other_targets_get_405() -> None:
    async with (
        raw_primary(_connect_gateway) as (port, accepted),
        running_proxy(port, connect_targets=("other.internal:22", "echo.internal:7")) as proxy,
    ):
        other = b"CONNECT other.internal:22 HTTP/1.1\r\nHost: other.internal:22\r\n\r\n"
        (refused,) = await raw_request(proxy.port, other)
        db = b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal\r\n\r\n"
        (not_allowed,) = await raw_request(proxy.port, db)
        assert len(accepted) == 1
    assert (refused.status, refused.body) == (403, b"no")
    assert not_allowed.status == 405
    assert proxy.stats.client_errors == {405: 1}
