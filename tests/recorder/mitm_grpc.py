"""A real mitmproxy capture of gRPC over HTTP/2: mitmdump (reverse proxy, TLS both ways, ALPN h2) in
front of a real grpcio server of tests/grpc_fixtures/shop.proto, driven by a real grpcio client.

It writes a flow file (``--save-stream-file``) and a HAR (``hardump``) of the same calls: a unary call
answered with a message and trailers (``grpc-status: 0`` and the ``shop-region`` metadata), and one
answered ``NOT_FOUND`` trailers-only. mitmproxy speaks no cleartext h2c, hence TLS: the server's
certificate is made here, the client trusts mitmproxy's CA. Every socket is on 127.0.0.1.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import subprocess
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.grpc_fixtures import compile_shop
from tests.recorder.mitm_flows import MITMDUMP, free_port


@dataclass(frozen=True, slots=True)
class GrpcCapture:
    flows: Path
    har: Path
    found: Any
    not_found_code: str


def _self_signed() -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return private, cert.public_bytes(serialization.Encoding.PEM)


def capture(workdir: Path) -> GrpcCapture:
    import grpc

    shop = compile_shop(workdir / "shop")
    pb2, pb2_grpc = shop.pb2, shop.pb2_grpc

    class Catalog(pb2_grpc.CatalogServicer):  # type: ignore[misc,name-defined]
        def GetProduct(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC's method name)
            if request.id == "missing":
                context.abort(grpc.StatusCode.NOT_FOUND, "no product missing")
            context.set_trailing_metadata((("shop-region", "eu"),))
            return pb2.Product(id=request.id, name="Desk lamp", availability=pb2.IN_STOCK)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb2_grpc.add_CatalogServicer_to_server(Catalog(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([_self_signed()]))
    server.start()
    listen = free_port()
    flows, har, confdir = workdir / "grpc.mitm", workdir / "grpc.har", workdir / "mitm-conf"
    command = [
        str(MITMDUMP), "--quiet", "--set", f"confdir={confdir}", "--set", "ssl_insecure=true",
        "--mode", f"reverse:https://127.0.0.1:{port}@{listen}", "--listen-host", "127.0.0.1",
        "--set", f"hardump={har}", "--save-stream-file", str(flows),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", listen)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                raise RuntimeError(f"mitmdump did not start: {output[-2000:]}")
            time.sleep(0.05)
        ca = (confdir / "mitmproxy-ca-cert.pem").read_bytes()
        with grpc.secure_channel(f"127.0.0.1:{listen}", grpc.ssl_channel_credentials(root_certificates=ca)) as channel:
            stub = pb2_grpc.CatalogStub(channel)
            found = stub.GetProduct(pb2.GetProductRequest(id="p1"), timeout=10)
            try:
                stub.GetProduct(pb2.GetProductRequest(id="missing"), timeout=10)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
    finally:
        process.terminate()  # mitmdump writes the HAR on shutdown
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        server.stop(grace=None)
    return GrpcCapture(flows, har, found, code)
