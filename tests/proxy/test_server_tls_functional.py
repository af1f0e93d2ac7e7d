"""TLS on both sides: listening with a certificate, and https primaries verified by default."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shadowtap.proxy.forward import ForwardSettings
from shadowtap.proxy.server import ProxyServer
from shadowtap.recorder.model import FailureKind
from tests.proxy.conftest import RecordingStage, raw_request


@dataclass
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost."""
    directory = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("shadowtap test CA"))
        .issuer_name(_name("shadowtap test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pki


@pytest.fixture
async def https_primary(pki: Pki) -> AsyncIterator[int]:
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"secure {request.path_qs}")

    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_context())
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _through(settings: ForwardSettings, stage: RecordingStage | None = None) -> tuple[int, bytes]:
    proxy = ProxyServer(settings, [stage] if stage else [])
    await proxy.start("127.0.0.1", 0)
    try:
        (resp,) = await raw_request(proxy.port, b"GET /x?y=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        return resp.status, resp.body
    finally:
        await proxy.shutdown(1)


async def test_https_primary_verified_against_ca(pki: Pki, https_primary: int) -> None:
    settings = ForwardSettings(primary=f"https://127.0.0.1:{https_primary}", ca_file=str(pki.ca_file))
    assert await _through(settings) == (200, b"secure /x?y=1")


async def test_https_primary_with_unknown_ca_is_refused(https_primary: int) -> None:
    stage = RecordingStage()
    status, body = await _through(ForwardSettings(primary=f"https://127.0.0.1:{https_primary}"), stage)
    assert status == 502
    assert b"TLS handshake with primary failed" in body
    assert b"CERTIFICATE_VERIFY_FAILED" in body
    failure = stage.exchanges[0].failure
    assert failure is not None and failure.kind == FailureKind.CONNECT_ERROR


async def test_https_primary_without_verification_when_asked(https_primary: int) -> None:
    settings = ForwardSettings(primary=f"https://127.0.0.1:{https_primary}", tls_verify=False)
    assert await _through(settings) == (200, b"secure /x?y=1")


async def test_listening_with_tls(pki: Pki, https_primary: int) -> None:
    stage = RecordingStage()
    settings = ForwardSettings(primary=f"https://127.0.0.1:{https_primary}", ca_file=str(pki.ca_file))
    proxy = ProxyServer(settings, [stage], ssl_context=pki.server_context())
    await proxy.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.get(f"https://127.0.0.1:{proxy.port}/tls", ssl=pki.client_context()) as resp:
                    assert resp.status == 200
                    assert await resp.text() == "secure /tls"
    finally:
        await proxy.shutdown(1)
    assert [ex.scheme for ex in stage.exchanges] == ["https", "https"]
    assert proxy.stats.pool.connects == 1  # the TLS connection to the primary is kept alive
