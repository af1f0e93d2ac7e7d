"""Transparency: the same request sent directly and through the proxy gets the same response.

Status, reason, header fields (order, case, duplicates) and body bytes must match, minus the
hop-by-hop fields (RFC 9110 §7.6.1, incl. names listed in Connection) that each hop sets for itself.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from shadowtap.wire import http1
from tests.proxy.conftest import (
    BIG,
    RawResponse,
    RecordingStage,
    build_primary_app,
    raw_head_request,
    raw_request,
    running_proxy,
    serve_app,
)


class Pair:
    def __init__(self, primary: int, proxy: int, stage: RecordingStage) -> None:
        self.primary = primary
        self.proxy = proxy
        self.stage = stage


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    stage = RecordingStage()
    async with (
        serve_app(build_primary_app()) as primary,
        # Forwarded headers off: the echo endpoint shows request headers, which must then match too.
        running_proxy(
            primary, stages=[stage], x_forwarded_for=False, x_forwarded_proto=False, x_forwarded_host=False
        ) as proxy,
    ):
        yield Pair(primary, proxy.port, stage)


def _end_to_end(response: RawResponse) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
    listed = http1.connection_tokens(response.headers)
    headers = [(k, v) for k, v in response.headers if k.lower() not in http1.HOP_BY_HOP | listed]
    return response.status, response.reason, headers, response.body


BINARY = bytes(range(256)) * 8
UTF8 = "naïve café — ✓ 日本語".encode()

MATRIX = {
    "get-query": b"GET /echo?a=1&b=%20x&a=2&empty= HTTP/1.1\r\nHost: example.test\r\n\r\n",
    "get-header-case-and-dups": (
        b"GET /echo HTTP/1.1\r\nHost: example.test\r\nX-Lower: a\r\nx-lower: b\r\nX-UPPER: C\r\n"
        b"Accept: */*\r\nAccept: text/html\r\n\r\n"
    ),
    "post-binary": b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(BINARY) + BINARY,
    "put-utf8": (
        b"PUT /echo HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n" % len(UTF8) + UTF8
    ),
    "post-chunked-upload": (
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n"
    ),
    "delete": b"DELETE /echo?id=7 HTTP/1.1\r\nHost: h\r\n\r\n",
    "patch-empty": b"PATCH /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    "options": b"OPTIONS /echo HTTP/1.1\r\nHost: h\r\n\r\n",
    "utf8-response": b"GET /utf8 HTTP/1.1\r\nHost: h\r\n\r\n",
    "gzip-not-decoded": b"GET /gzip HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\n\r\n",
    "chunked-response": b"GET /chunked HTTP/1.1\r\nHost: h\r\n\r\n",
    "streaming-response": b"GET /streaming HTTP/1.1\r\nHost: h\r\n\r\n",
    "download-1mib": b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n",
    "upload-1mib": b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(BIG) + BIG,
    "204": b"GET /204 HTTP/1.1\r\nHost: h\r\n\r\n",
    "304": b'GET /304 HTTP/1.1\r\nHost: h\r\nIf-None-Match: "v1"\r\n\r\n',
    "redirect": b"GET /redirect HTTP/1.1\r\nHost: h\r\n\r\n",
    "repeated-and-connection-listed": b"GET /repeated HTTP/1.1\r\nHost: h\r\n\r\n",
    "custom-reason": b"GET /teapot HTTP/1.1\r\nHost: h\r\n\r\n",
    "not-found": b"GET /nope HTTP/1.1\r\nHost: h\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(MATRIX))
async def test_matrix_matches_direct(pair: Pair, case: str) -> None:
    request = MATRIX[case]
    (direct,) = await raw_request(pair.primary, request)
    (proxied,) = await raw_request(pair.proxy, request)
    assert _end_to_end(proxied) == _end_to_end(direct)
    assert proxied.chunked == direct.chunked  # chunked stays chunked (re-framed), lengths stay lengths
    (ex,) = pair.stage.exchanges
    assert ex.failure is None and ex.response is not None
    assert ex.response.status == direct.status
    assert ex.response.body == direct.body[: len(ex.response.body)]


async def test_repeated_headers_keep_order_case_and_drop_connection_listed(pair: Pair) -> None:
    (proxied,) = await raw_request(pair.proxy, MATRIX["repeated-and-connection-listed"])
    names = [k for k, _ in proxied.headers]
    assert [v for k, v in proxied.headers if k == b"Set-Cookie"] == [b"a=1; Path=/", b"b=2; Path=/"]
    assert (b"X-Mixed-Case", b"One") in proxied.headers and (b"x-mixed-case", b"two") in proxied.headers
    assert names.index(b"X-Mixed-Case") < names.index(b"x-mixed-case")
    assert b"X-Hop" not in names  # listed in Connection: hop-by-hop


async def test_gzip_body_is_relayed_compressed(pair: Pair) -> None:
    (proxied,) = await raw_request(pair.proxy, MATRIX["gzip-not-decoded"])
    assert proxied.header(b"Content-Encoding") == b"gzip"
    assert gzip.decompress(proxied.body) == b'{"compressed": true}' * 50


async def test_head_responses_match_and_carry_no_body(pair: Pair) -> None:
    for path in (b"/utf8", b"/chunked", b"/big"):
        request = b"HEAD " + path + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        direct = await raw_head_request(pair.primary, request)
        proxied = await raw_head_request(pair.proxy, request)
        # Nothing after the head through the proxy (aiohttp itself sends a body on HEAD of a
        # streamed handler; the proxy ends a HEAD response at its head whatever follows).
        assert proxied.endswith(b"\r\n\r\n") and proxied.count(b"\r\n\r\n") == 1
        direct_head = direct.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        proxied_head = proxied.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        assert [h for h in proxied_head if not h.lower().startswith(b"connection:")] == [
            h for h in direct_head if not h.lower().startswith(b"connection:")
        ]


async def test_keep_alive_across_head_204_and_get(pair: Pair) -> None:
    # HEAD has a Content-Length but no body: the next response on both connections must still parse.
    request = (
        b"HEAD /big HTTP/1.1\r\nHost: h\r\n\r\n"
        b"GET /204 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"GET /utf8 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    raw = await raw_head_request(pair.proxy, request)
    assert raw.count(b"HTTP/1.1 ") == 3
    assert raw.index(b"HTTP/1.1 200") < raw.index(b"HTTP/1.1 204") < raw.rindex(b"HTTP/1.1 200")
    assert raw.endswith("héllo wörld ✓ 日本".encode())
    # ... and the primary connection that carried the HEAD was reused for the next two.
    assert len(pair.stage.exchanges) == 3


async def test_streaming_response_is_not_buffered(pair: Pair) -> None:
    arrivals: list[float] = []
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(f"http://127.0.0.1:{pair.proxy}/streaming") as resp,
    ):
        started = time.monotonic()
        async for _ in resp.content.iter_any():
            arrivals.append(time.monotonic() - started)
    # The primary sleeps 50 ms between four ticks: they must reach the client as they come.
    assert len(arrivals) >= 3
    assert arrivals[-1] - arrivals[0] >= 0.1


async def test_websocket_echo_passes_through(pair: Pair) -> None:
    async with aiohttp.ClientSession() as session:
        for port in (pair.primary, pair.proxy):
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                await ws.send_str("hi")
                assert (await ws.receive(timeout=5)).data == "echo:hi"
                payload = bytes(range(256)) * 300
                await ws.send_bytes(payload)
                assert (await ws.receive(timeout=5)).data == payload
                await ws.close()
    await asyncio.sleep(0.05)
    (ex,) = pair.stage.exchanges
    assert ex.upgraded
    assert ex.response is not None and ex.response.status == 101
    assert pair.stage.requests[0].upgraded  # told before the request went anywhere: never mirrored
