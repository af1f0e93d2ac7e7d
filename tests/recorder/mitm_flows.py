"""Real mitmproxy flow files of every flow type: mitmdump records HTTP/1.1, HTTP/2, WebSocket, TCP, UDP
and DNS flows, and HTTP flows that end in an error, between local clients and local servers.

Used two ways: the functional test records a fresh file at test time, and running this module writes
the committed fixture (``python -m tests.recorder.mitm_flows``, see tests/fixtures/README.md). Every
socket is on 127.0.0.1; the DNS question is for ``localhost``, which mitmproxy answers from this
machine's resolver, never the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, cast

from aiohttp import ClientConnectorError, ClientSession, ClientTimeout, WSMsgType, web

MITMDUMP: Final = Path(sys.executable).parent / "mitmdump"
FIXTURE: Final = Path(__file__).resolve().parents[1] / "fixtures" / "mitmproxy" / "every-type.mitm"
BIG_BYTES: Final = 64 * 1024
#: mitmdump streams bodies larger than this: the flow then has no body (``raw_content`` is None).
STREAM_ABOVE: Final = "16k"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.transport.sendto(b"echo:" + data, addr)


class Servers:
    """The HTTP/WebSocket, TCP echo and UDP echo servers, on one event loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.release = asyncio.Event()
        self.http_port = self.tcp_port = self.udp_port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, name="mitm-flows-servers", daemon=True)

    def __enter__(self) -> Servers:
        self.loop.run_until_complete(self._start())
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    async def _start(self) -> None:
        self.runner = web.AppRunner(self._app(), shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.http_port = self.runner.addresses[0][1]

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(1024):
                writer.write(b"echo:" + data)
                await writer.drain()
            writer.close()

        self.tcp = await asyncio.start_server(echo, "127.0.0.1", 0)
        self.tcp_port = self.tcp.sockets[0].getsockname()[1]
        self.udp, _ = await self.loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
        self.udp_port = self.udp.get_extra_info("sockname")[1]

    async def _stop(self) -> None:
        self.release.set()
        self.udp.close()
        self.tcp.close()
        await self.tcp.wait_closed()
        await self.runner.cleanup()

    def _app(self) -> web.Application:
        async def get(request: web.Request) -> web.Response:
            return web.json_response({"query": dict(request.query), "version": f"{request.version[0]}"})

        async def post(request: web.Request) -> web.Response:
            return web.json_response({"got": await request.json()})

        async def big(_: web.Request) -> web.Response:
            return web.Response(body=b"b" * BIG_BYTES, content_type="application/octet-stream")

        async def slow(_: web.Request) -> web.Response:
            await self.release.wait()
            return web.Response(text="too late")

        async def websocket(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await ws.send_str(f"pong:{message.data}")
            return ws

        app = web.Application()
        app.router.add_get("/get", get)
        app.router.add_post("/post", post)
        app.router.add_get("/big", big)
        app.router.add_get("/slow", slow)
        app.router.add_get("/kill", get)
        app.router.add_get("/ws", websocket)
        return app


@contextlib.contextmanager
def mitmdump(out: Path, servers: Servers, confdir: Path) -> Iterator[dict[str, int]]:
    """mitmdump listening in every mode at once, writing every flow to ``out``; yields the ports."""
    ports = {
        "reverse": free_port(),
        "refused": free_port(),
        "tcp": free_port(),
        "udp": free_port(socket.SOCK_DGRAM),
        "dns": free_port(socket.SOCK_DGRAM),
        "regular": free_port(),
    }
    closed = free_port()
    command = [
        str(MITMDUMP),
        "--quiet",
        "--set",
        f"confdir={confdir}",
        "--mode",
        f"reverse:http://127.0.0.1:{servers.http_port}@{ports['reverse']}",
        "--mode",
        f"reverse:http://127.0.0.1:{closed}@{ports['refused']}",
        "--mode",
        f"reverse:tcp://127.0.0.1:{servers.tcp_port}@{ports['tcp']}",
        "--mode",
        f"reverse:udp://127.0.0.1:{servers.udp_port}@{ports['udp']}",
        "--mode",
        f"dns@{ports['dns']}",
        "--mode",
        f"regular@{ports['regular']}",
        "--listen-host",
        "127.0.0.1",
        "--set",
        f"stream_large_bodies={STREAM_ABOVE}",
        # Connect upstream only when a request needs it, so a refused upstream is an HTTP flow.
        "--set",
        "connection_strategy=lazy",
        # 444 closes the connection without a response: the flow ends killed.
        "--set",
        "block_list=:~u /kill:444",
        "--save-stream-file",
        str(out),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        for name in ("reverse", "refused", "tcp", "regular"):
            while True:
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", ports[name])) == 0:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                    raise RuntimeError(f"mitmdump did not start: {output[-2000:]}")
                time.sleep(0.05)
        yield ports
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _h2_get(port: int, path: str) -> tuple[int, bytes]:
    """One HTTP/2 GET over TLS (ALPN h2) with the ``h2`` state machine mitmproxy itself uses."""
    import h2.connection
    import h2.events

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # mitmproxy's own CA signed the certificate; this is a local test
    context.set_alpn_protocols(["h2"])
    status = 0
    body = b""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        conn.send_headers(
            1,
            [(":method", "GET"), (":path", path), (":scheme", "https"), (":authority", f"127.0.0.1:{port}")],
            end_stream=True,
        )
        tls.sendall(conn.data_to_send())
        ended = False
        while not ended:
            data = tls.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            tls.sendall(conn.data_to_send())
    return status, body


def _dns_query(port: int, name: str) -> bytes:
    question = b"".join(bytes([len(part)]) + part.encode() for part in name.split(".")) + b"\x00"
    packet = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(10)
        udp.sendto(packet, ("127.0.0.1", port))
        answer, _ = udp.recvfrom(4096)
    return answer


async def _http_clients(ports: dict[str, int], http_port: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    base = f"http://127.0.0.1:{ports['reverse']}"
    async with ClientSession() as session:
        # The port took a probe's connection, yet under load the first request was once refused
        # (mitmdump still setting up its listeners): a refused connection makes no flow, so it is
        # tried again, for up to 10 s.
        deadline = time.monotonic() + 10
        while True:
            try:
                async with session.get(f"{base}/get?x=1") as r:
                    seen["get"] = (r.status, await r.json())
                break
            except ClientConnectorError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        async with session.post(f"{base}/post", json={"name": "café"}) as r:
            seen["post"] = (r.status, await r.json())
        async with session.head(f"{base}/get") as r:
            seen["head"] = r.status
        async with session.get(f"{base}/big") as r:
            seen["big"] = len(await r.read())
        try:
            async with session.get(f"{base}/kill") as r:
                seen["kill"] = r.status
        except Exception as exc:  # noqa: BLE001 - the point is that it fails
            seen["kill"] = type(exc).__name__
        try:
            async with session.get(f"{base}/slow", timeout=ClientTimeout(total=0.5)) as r:
                seen["slow"] = r.status
        except TimeoutError:
            seen["slow"] = "client gave up"
        try:
            async with session.get(f"http://127.0.0.1:{ports['refused']}/nothing") as r:
                seen["refused"] = r.status
        except Exception as exc:  # noqa: BLE001 - mitmproxy may close instead of answering 502
            seen["refused"] = type(exc).__name__
        async with session.ws_connect(f"{base}/ws") as ws:
            await ws.send_str("one")
            first = await ws.receive_str()
            await ws.send_str("two")
            seen["websocket"] = [first, await ws.receive_str()]
        # Forward-proxy mode: an absolute-form request.
        async with session.get(
            f"http://127.0.0.1:{http_port}/get?via=proxy", proxy=f"http://127.0.0.1:{ports['regular']}"
        ) as r:
            seen["proxied"] = r.status
    # Forward-proxy mode with a CONNECT tunnel, plain HTTP inside it.
    reader, writer = await asyncio.open_connection("127.0.0.1", ports["regular"])
    authority = f"127.0.0.1:{http_port}".encode()
    writer.write(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority))
    seen["connect"] = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n", 1)[0]
    writer.write(b"GET /get?tunnel=1 HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % authority)
    seen["tunnel"] = (await reader.read()).split(b"\r\n", 1)[0]
    writer.close()
    await writer.wait_closed()
    reader, writer = await asyncio.open_connection("127.0.0.1", ports["tcp"])
    writer.write(b"hello tcp")
    await writer.drain()
    seen["tcp"] = await reader.read(100)
    writer.close()
    await writer.wait_closed()
    return seen


def _udp_roundtrip(port: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(10)
        udp.sendto(b"hello udp", ("127.0.0.1", port))
        data, _ = udp.recvfrom(100)
    return data


def record(out: Path, workdir: Path) -> dict[str, Any]:
    """Record one flow of each kind into ``out``; returns what the clients saw."""
    with Servers() as servers, mitmdump(out, servers, workdir / "mitmproxy-conf") as ports:
        seen = asyncio.run(_http_clients(ports, servers.http_port))
        seen["h2"] = _h2_get(ports["reverse"], "/get?h2=1")
        seen["udp"] = _udp_roundtrip(ports["udp"])
        seen["dns"] = len(_dns_query(ports["dns"], "localhost"))
        # Let mitmdump see the TCP/UDP ends before it stops (flows are written when they end).
        time.sleep(0.5)
    return seen


if __name__ == "__main__":
    import tempfile

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURE
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(record(target, Path(tmp)), default=repr))
    print(subprocess.run([str(MITMDUMP), "--version"], capture_output=True, text=True).stdout.splitlines()[0])
