"""Mutated requests from a raw socket against the real proxy and a primary that logs what it gets.

Hypothesis takes well-formed requests (plain, with a body, chunked, pipelined, Upgrade offers) and
mutates their bytes. Whatever comes in, the proxy must answer with its own error or with the
primary's answer to a request this client sent, forward only bytes the primary can parse, log no
error, and go on serving every other client their own answers. A bounded run (seconds) is part of
``make test``; ``bench/proxy_fuzz.py`` runs the same checks for as long as it is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httptools
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowtap.proxy.forward import ForwardSettings
from shadowtap.proxy.server import ProxyServer
from tests.proxy.conftest import LoggingPrimary, RecordingStage, logging_primary

SEEDS = [
    b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /b?x=1 HTTP/1.1\r\nHost: h\r\nX-Trace: 1\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /d HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /e HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /f HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    b"GET /g HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /h HTTP/1.0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET http://h/i HTTP/1.1\r\nHost: h\r\n\r\n",
]
# Bytes that have broken parsers before: separators, framing words, controls.
TOKENS = [
    b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b",", b"0", b"-1", b"chunked", b"Content-Length: 3\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Host: x\r\n", b"Connection: Upgrade\r\nUpgrade: h2c\r\n", b"\r\n\r\n",
    b"GET /z HTTP/1.1\r\nHost: h\r\n\r\n", b"HTTP/1.1", b"%2e%2e/", b"../", b"\xff",
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "flip"]))
        if kind == "insert":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "flip" and at < len(data):
            data[at] = data[at] ^ 0x20  # case
    return bytes(data)


@dataclass
class Running:
    port: int
    primary: LoggingPrimary
    server: ProxyServer
    stage: RecordingStage


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    """A proxy and a logging primary on a uvloop in a thread of their own, so Hypothesis drives them
    from plain blocking sockets."""
    ready: list[Running] = []
    started = threading.Event()
    stop: list[asyncio.Event] = []

    async def serve() -> None:
        stage = RecordingStage()
        async with logging_primary() as (port, primary):
            settings = ForwardSettings(
                primary=f"http://127.0.0.1:{port}/p",
                client_header_timeout_s=0.3,
                client_body_timeout_s=0.3,
                first_byte_timeout_s=2,
            )
            server = ProxyServer(settings, [stage])
            await server.start("127.0.0.1", 0)
            stop.append(asyncio.Event())
            ready.append(Running(server.port, primary, server, stage))
            started.set()
            await stop[0].wait()
            await server.shutdown(1)

    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10)
    yield ready[0]
    loop.call_soon_threadsafe(stop[0].set)
    thread.join(10)
    loop.close()


class _Responses:
    def __init__(self) -> None:
        self.items: list[tuple[int, dict[bytes, bytes], bytes]] = []
        self._headers: dict[bytes, bytes] = {}
        self._body = b""
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self._headers = {}
        self._body = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.items.append((self.parser.get_status_code(), self._headers, self._body))


def _exchange(port: int, payload: bytes) -> bytes:
    """Send ``payload``, half-close, read until the proxy closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def _own_answer(port: int, path: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % path)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


#: ``bench/proxy_fuzz.py`` raises this for long runs.
EXAMPLES = int(os.environ.get("SHADOWTAP_FUZZ_EXAMPLES", "150"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=mutated())
def test_mutated_requests_get_their_own_answer_or_our_error(
    running: Running, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    errors_before = len(running.primary.parse_errors)
    with caplog.at_level(logging.ERROR, logger="proxy"):
        raw = _exchange(running.port, payload)
    responses = _Responses()
    with contextlib.suppress(httptools.HttpParserError):
        responses.parser.feed_data(raw)  # a cut answer leaves a partial one at the end
    for status, headers, body in responses.items:
        if headers.get(b"x-shadowtap-error") == b"1":
            assert status in (400, 405, 408, 431, 501, 502, 504), status
            continue
        # The primary's answer names its request: it must be one this client sent, under the prefix.
        if body != b"*":
            assert body.startswith(b"/p/"), body
            assert body[2:] in payload, (body, payload)
        assert headers.get(b"set-cookie") == b"owner=" + body
    assert running.primary.parse_errors[errors_before:] == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert running.server.stats.stage_errors.by_stage == {}
    # Whatever this client did, the next one gets its own answer.
    answer = _own_answer(running.port, b"/victim")
    assert answer.endswith(b"\r\n\r\n/p/victim"), answer[:200]
