"""The README's gRPC quickstart runs as written: the proxy in front of a real grpcio service (v1) with
a v2 shadow (h2c), a grpcio client calling through it, then the descriptor set and the diff, which
must name the field v2 changed.

The servers are the suite's shop.Catalog (tests/grpc_fixtures), whose v2 names products
``"<id> (v2)"`` where v1 says ``"<id> (v1)"``: the planted change is ``body.name``. Only the ports
in the snippet are replaced by the servers' and free ones, as in test_readme_functional.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.grpc_fixtures import SHOP_PROTO, CompiledShop, compile_shop
from tests.grpc_fixtures.server import start_catalog
from tests.shadowtap.test_readme_functional import free_port, shell_blocks

CALLS = 30


def grpc_quickstart() -> list[str]:
    """The README's one shell block with an ``h2c://`` primary."""
    blocks = [block for block in shell_blocks() if any("--primary h2c://" in c for c in block)]
    assert len(blocks) == 1, blocks
    return blocks[0]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> CompiledShop:
    return compile_shop(tmp_path_factory.mktemp("shop"))


@pytest.fixture
async def services(shop: CompiledShop) -> AsyncIterator[dict[str, int]]:
    """The snippet's ports: the service v1 (50051), the candidate v2 (50052), the proxy (8080)."""
    v1, v1_port = await start_catalog(shop, "v1")
    v2, v2_port = await start_catalog(shop, "v2")
    try:
        yield {"50051": v1_port, "50052": v2_port, "8080": free_port()}
    finally:
        await v1.stop(None)
        await v2.stop(None)


async def wait_listening(port: int, proxy: asyncio.subprocess.Process) -> None:
    for _ in range(300):
        if proxy.returncode is not None:
            break
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return
    assert proxy.stderr is not None
    stderr = (await proxy.stderr.read()).decode() if proxy.returncode is not None else ""
    raise AssertionError(f"the proxy is not listening on {port} (exit {proxy.returncode}): {stderr}")


@pytest.mark.timeout(180)
async def test_grpc_quickstart_runs_as_written(shop: CompiledShop, services: dict[str, int], tmp_path: Path) -> None:
    quickstart = grpc_quickstart()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    shutil.copy(SHOP_PROTO, tmp_path / "shop.proto")  # "your protos", where the snippet runs

    def localise(command: str) -> str:
        for default, port in services.items():
            command = command.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port}")
        return command

    proxy_line = next(c for c in quickstart if c.startswith("shadowtap proxy"))
    assert proxy_line.endswith("&")
    assert "--route grpc=/shop.Catalog/*" in " ".join(shlex.split(proxy_line))
    proxy = await asyncio.create_subprocess_exec(
        *shlex.split(localise(proxy_line).rstrip("&")), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_listening(services["8080"], proxy)
        # A client of the service, through the sidecar: it gets v1's answers.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{services['8080']}") as channel:
            stub = shop.pb2_grpc.CatalogStub(channel)
            for n in range(CALLS):
                product = await stub.GetProduct(shop.pb2.GetProductRequest(id=f"p{n}"), timeout=10)
                assert product.name == f"p{n} (v1)"
    finally:
        if proxy.returncode is None:
            proxy.send_signal(signal.SIGTERM)  # the snippet's "stop the proxy": in-flight copies drain, the tape closes
        _, stderr = await asyncio.wait_for(proxy.communicate(), timeout=60)
    assert proxy.returncode == 0, stderr.decode()

    rest = [c for c in quickstart if c != proxy_line]
    assert [c.split()[:2] for c in rest] == [["python", "-m"], ["shadowtap", "diff"]], rest
    for command in rest:
        run = await asyncio.create_subprocess_exec(
            "bash", "-c", localise(command), cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(run.communicate(), timeout=120)
        allowed = (0, 1) if command.startswith("shadowtap diff") else (0,)  # 1: a regression was found
        assert run.returncode in allowed, (command, run.returncode, stdout.decode(), stderr.decode())
        assert b"Traceback" not in stderr
    assert (tmp_path / "shop.desc").stat().st_size > 0
    report = (tmp_path / "grpc-report.md").read_text()
    assert "/shop.Catalog/GetProduct" in report
    assert "body.name" in report, report
