"""The mitmproxy addon for real: mitmdump in reverse mode in front of an in-test server, then the tape."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import os
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from shadowtap.recorder import Failure, Response, TapeReader

REPO = Path(__file__).resolve().parents[2]
MITMDUMP = Path(sys.executable).parent / "mitmdump"
ADDON = REPO / "recorder" / "mitm_addon.py"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"path": request.path, "query": dict(request.query)})


async def echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read(), status=201, content_type="application/json")


async def zipped(request: web.Request) -> web.Response:
    return web.Response(body=gzip.compress(b"compressed " * 50), headers={"Content-Encoding": "gzip"})


async def streamed(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for i in range(3):
        await response.write(b"part %d\n" % i)
    await response.write_eof()
    return response


async def websocket_echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        await ws.send_str(f"echo {message.data}")
    return ws


async def broken(request: web.Request) -> web.StreamResponse:
    # Close the connection without any response: mitmproxy records the flow with an error.
    assert request.transport is not None
    request.transport.close()
    await asyncio.sleep(0)
    raise web.HTTPInternalServerError()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_post("/echo", echo)
    app.router.add_get("/gzip", zipped)
    app.router.add_get("/stream", streamed)
    app.router.add_get("/broken", broken)
    app.router.add_get("/ws", websocket_echo)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
    try:
        yield int(sockets[0].getsockname()[1])
    finally:
        await runner.cleanup()


async def wait_listening(port: int, process: asyncio.subprocess.Process) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    while loop.time() < deadline:
        if process.returncode is not None:
            raise AssertionError(f"mitmdump exited early with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError("mitmdump did not start listening in time")


async def run_mitmdump(
    upstream_port: int, tmp_path: Path, *settings: str, mode: str | None = None
) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        str(MITMDUMP),
        "--mode",
        mode or f"reverse:http://127.0.0.1:{upstream_port}",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--set",
        f"confdir={tmp_path / 'mitm-conf'}",
        "-s",
        str(ADDON),
        *[arg for setting in settings for arg in ("--set", setting)],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SHADOWTAP_REDACTION_KEY": "test-key"},
    )
    try:
        await wait_listening(port, process)
    except BaseException:
        if process.returncode is None:
            process.kill()
        await process.wait()
        raise
    return process, port


async def exit_output(process: asyncio.subprocess.Process) -> bytes:
    """The output of a mitmdump expected to exit on its own; killed if it does not, in time."""
    try:
        output, _ = await asyncio.wait_for(process.communicate(), START_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return output


async def stop(process: asyncio.subprocess.Process) -> str:
    process.send_signal(signal.SIGINT)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return output.decode(errors="replace")


async def test_reverse_mode_traffic_lands_on_the_tape_redacted(upstream: int, tmp_path: Path) -> None:
    tape = tmp_path / "tape"
    process, port = await run_mitmdump(upstream, tmp_path, f"shadowtap_tape={tape}")
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.get(f"{base}/hello?x=1", headers={"Authorization": "Bearer s3cret"}) as r:
                assert r.status == 200 and (await r.json())["query"] == {"x": "1"}
            async with session.post(f"{base}/echo", json={"n": 1}) as r:
                assert r.status == 201
            async with session.get(f"{base}/gzip") as r:
                assert r.headers["Content-Encoding"] == "gzip"
                await r.read()
            async with session.get(f"{base}/stream") as r:
                assert await r.read() == b"part 0\npart 1\npart 2\n"
            async with session.get(f"{base}/broken") as r:
                assert r.status == 502  # mitmproxy answers for the dead upstream
                await r.read()
            async with session.ws_connect(f"{base}/ws") as ws:
                for text in ("a", "b"):
                    await ws.send_str(text)
                    assert await ws.receive_str() == f"echo {text}"
    finally:
        output = await stop(process)
    assert process.returncode == 0, output
    exchanges = list(TapeReader(tape))
    by_path = {ex.request.path: ex for ex in exchanges}
    assert sorted(by_path) == ["/broken", "/echo", "/gzip", "/hello", "/stream", "/ws"], output
    hello_ex = by_path["/hello"]
    assert hello_ex.request.target == "/hello?x=1" and hello_ex.tags["source"] == "mitm-addon"
    auth = hello_ex.request.header(b"authorization") or b""
    assert b"s3cret" not in auth and b"redacted" in auth
    assert isinstance(hello_ex.primary, Response) and hello_ex.primary.status == 200
    assert hello_ex.client_addr.startswith("127.0.0.1:") and "reverse" in hello_ex.tags["mitm.mode"]
    echo_ex = by_path["/echo"]
    assert echo_ex.request.body == b'{"n": 1}' and isinstance(echo_ex.primary, Response)
    assert echo_ex.primary.body == b'{"n": 1}' and echo_ex.primary.status == 201
    gz = by_path["/gzip"].primary
    assert isinstance(gz, Response) and gzip.decompress(gz.body) == b"compressed " * 50  # wire bytes
    chunked = by_path["/stream"].primary
    assert isinstance(chunked, Response) and chunked.body == b"part 0\npart 1\npart 2\n"
    assert isinstance(by_path["/broken"].primary, Failure)
    upgrade = by_path["/ws"]
    assert isinstance(upgrade.primary, Response) and upgrade.primary.status == 101
    assert upgrade.tags["mitm.websocket_messages"] == "4"  # recorded when the WebSocket ended
    timing = hello_ex.timings["primary"]
    assert timing.done_ns is not None and 0 < timing.done_ns < 10_000_000_000


async def test_sampling_zero_records_nothing_and_caps_apply(upstream: int, tmp_path: Path) -> None:
    off, capped = tmp_path / "off", tmp_path / "capped"
    first, port = await run_mitmdump(upstream, tmp_path, f"shadowtap_tape={off}", "shadowtap_sample_percent=0")
    second, port2 = await run_mitmdump(
        upstream, tmp_path, f"shadowtap_tape={capped}", "shadowtap_body_cap_bytes=4", "shadowtap_redact=false"
    )
    try:
        async with aiohttp.ClientSession() as session:
            for p in (port, port2):
                async with session.post(f"http://127.0.0.1:{p}/echo", data=b"0123456789") as r:
                    assert await r.read() == b"0123456789"
    finally:
        outputs = [await stop(first), await stop(second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    assert list(TapeReader(off)) == []
    (ex,) = list(TapeReader(capped))
    assert ex.request.body == b"0123" and ex.request.truncated_from == 10
    assert isinstance(ex.primary, Response) and ex.primary.body == b"0123" and ex.primary.truncated_from == 10


async def test_bad_option_is_refused_at_start(upstream: int, tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        str(MITMDUMP),
        "--mode",
        f"reverse:http://127.0.0.1:{upstream}",
        "--listen-port",
        str(free_port()),
        "--set",
        f"confdir={tmp_path / 'conf'}",
        "-s",
        str(ADDON),
        "--set",
        "shadowtap_sample_percent=150",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = await exit_output(process)
    assert process.returncode != 0
    assert b"shadowtap_sample_percent" in output and b"must be from 0 to 100" in output


@pytest.fixture
async def tls_upstream(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """An HTTPS upstream whose certificate comes from a private CA (like an internal service)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from mitmproxy.certs import CertStore

    store = CertStore.from_store(tmp_path / "upstream-ca", "upstream", 2048)
    entry = store.get_cert("localhost", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert_file, key_file = tmp_path / "upstream.pem", tmp_path / "upstream.key"
    cert_file.write_bytes(entry.cert.to_pem())
    key_file.write_bytes(
        entry.privatekey.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
    try:
        yield int(sockets[0].getsockname()[1]), tmp_path / "upstream-ca" / "upstream-ca-cert.pem"
    finally:
        await runner.cleanup()


def trust_mitmproxy(tmp_path: Path) -> ssl.SSLContext:
    # mitmdump generates its CA in confdir on first start; clients must trust it (docs/interop.md).
    return ssl.create_default_context(cafile=str(tmp_path / "mitm-conf" / "mitmproxy-ca-cert.pem"))


@pytest.mark.parametrize("mode", ["reverse", "regular"])
async def test_https_is_captured_in_reverse_and_forward_mode(
    tls_upstream: tuple[int, Path], tmp_path: Path, mode: str
) -> None:
    upstream_port, upstream_ca = tls_upstream
    tape = tmp_path / "tape"
    process, port = await run_mitmdump(
        upstream_port,
        tmp_path,
        f"shadowtap_tape={tape}",
        f"ssl_verify_upstream_trusted_ca={upstream_ca}",
        mode=f"reverse:https://127.0.0.1:{upstream_port}" if mode == "reverse" else "regular",
    )
    try:
        client_tls = trust_mitmproxy(tmp_path)
        async with aiohttp.ClientSession() as session:
            if mode == "reverse":
                url, proxy = f"https://127.0.0.1:{port}/hello?via=reverse", None
            else:
                url, proxy = f"https://127.0.0.1:{upstream_port}/hello?via=forward", f"http://127.0.0.1:{port}"
            async with session.get(url, proxy=proxy, ssl=client_tls, headers={"Cookie": "sid=abc"}) as r:
                assert r.status == 200 and (await r.json())["path"] == "/hello"
    finally:
        output = await stop(process)
    assert process.returncode == 0, output
    (ex,) = [ex for ex in TapeReader(tape) if ex.request.path == "/hello"]
    assert ex.request.scheme == "https" and ex.tags["mitm.mode"].startswith(mode)
    assert ex.request.query == f"via={'reverse' if mode == 'reverse' else 'forward'}"
    assert b"abc" not in (ex.request.header(b"cookie") or b"")
    assert isinstance(ex.primary, Response) and ex.primary.status == 200


async def test_an_unusable_tape_path_stops_mitmdump_with_one_line(upstream: int, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    process = await asyncio.create_subprocess_exec(
        str(MITMDUMP),
        "--mode",
        f"reverse:http://127.0.0.1:{upstream}",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(free_port()),
        "--set",
        f"confdir={tmp_path / 'conf'}",
        "-s",
        str(ADDON),
        "--set",
        f"shadowtap_tape={blocker / 'tape'}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = await exit_output(process)
    text = output.decode(errors="replace")
    assert "shadowtap: cannot record:" in text and "Traceback" not in text
    assert "Error logged during startup, exiting" in text


async def test_hot_reload_of_the_script_keeps_recording(upstream: int, tmp_path: Path) -> None:
    # mitmproxy reloads a script whose file changes and then calls its hooks synchronously.
    script = tmp_path / "shadowtap_addon.py"
    script.write_text(ADDON.read_text())
    tape = tmp_path / "tape"
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        str(MITMDUMP),
        "--mode",
        f"reverse:http://127.0.0.1:{upstream}",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--set",
        f"confdir={tmp_path / 'conf'}",
        "-s",
        str(script),
        "--set",
        f"shadowtap_tape={tape}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await wait_listening(port, process)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/hello?before=1") as r:
                assert r.status == 200
            script.write_text(ADDON.read_text() + "\n# changed\n")
            await asyncio.sleep(2.5)  # mitmproxy polls the script's mtime about once a second
            async with session.get(f"http://127.0.0.1:{port}/hello?after=1") as r:
                assert r.status == 200
    finally:
        output = await stop(process)
    assert process.returncode == 0, output
    assert "Traceback" not in output and "cannot be called from sync context" not in output, output
    assert output.count("Loading script") == 2, output
    # The old instance closed its writer (nothing left in its queue) and the new one started its own.
    assert output.count("shadowtap: recording into") == 2, output
    assert "shadowtap: 1 exchanges written" in output, output
    assert sorted(ex.request.query for ex in TapeReader(tape)) == ["after=1", "before=1"]
