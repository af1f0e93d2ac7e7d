"""The README's commands run as written: the two contract commands, then the quickstart for real.

The quickstart is executed line by line with bash against the demo service (version 1 as "your
service", version 2 as the candidate), with only the ports replaced by free ones.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowtap.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def shell_blocks() -> list[list[str]]:
    """Each ```sh block as a list of commands (continuations joined, comments dropped)."""
    blocks = []
    for block in re.findall(r"```sh\n(.*?)```", README, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands = []
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
        blocks.append(commands)
    return blocks


def test_the_two_contract_commands_come_first() -> None:
    first = shell_blocks()[0]
    assert first == ["make demo", "make test"]
    assert README.index("make demo") < README.index("## ")


def test_every_shadowtap_invocation_is_accepted_by_the_cli() -> None:
    invocations = [c for block in shell_blocks() for c in block if c.startswith("shadowtap ")]
    assert len(invocations) >= 5
    parser = build_parser()
    for command in invocations:
        argv = shlex.split(command.rstrip("&").strip())[1:]
        try:
            parser.parse_args(argv)
        except SystemExit as exc:  # argparse's way of refusing
            pytest.fail(f"README command refused by the CLI ({exc.code}): {command}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


@pytest.fixture
def services() -> Iterator[dict[str, int]]:
    ports = {"9000": free_port(), "9001": free_port(), "8080": free_port(), "8081": free_port()}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "shadowtap.demo.services", "--version", version, "--port", str(ports[key])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for key, version in (("9000", "1"), ("9001", "2"))
    ]
    try:
        for key in ("9000", "9001"):
            wait_for(f"http://127.0.0.1:{ports[key]}/api/health")
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.mark.timeout(180)
def test_quickstart_runs_as_written(tmp_path: Path, services: dict[str, int]) -> None:
    quickstart = shell_blocks()[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def localise(command: str) -> str:
        for default, port in services.items():
            command = command.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port}")
        return command

    def bash(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
        )

    setup = [c for c in quickstart if not c.startswith(("shadowtap ", "curl "))]
    assert setup == ["python3 -m venv .venv && .venv/bin/pip install -e .", "source .venv/bin/activate"]
    proxy_line = next(c for c in quickstart if c.startswith("shadowtap proxy"))
    assert proxy_line.endswith("&")
    proxy = subprocess.Popen(
        shlex.split(localise(proxy_line).rstrip("&")), cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    admin, front = services["8081"], services["8080"]
    try:
        try:
            wait_for(f"http://127.0.0.1:{admin}/healthz")
        except AssertionError:
            if proxy.poll() is not None:  # it exited: say why rather than only that it is not up
                assert proxy.stderr is not None
                raise AssertionError(f"the proxy exited with {proxy.returncode}: {proxy.stderr.read()}") from None
            raise
        # Clients use the service through the sidecar, as they would in production. The README
        # mirrors 10%: 400 requests give ~40 pairs (sd ~6), far above the differ's minimum of 10.
        for n in range(400):
            path = ("/api/users/{}", "/api/orders/{}", "/api/cart/{}")[n % 3].format(n)
            with urllib.request.urlopen(f"http://127.0.0.1:{front}{path}", timeout=10) as response:
                assert response.status == 200
        for command in (c for c in quickstart if c.startswith("curl ")):
            result = bash(localise(command))
            assert result.returncode == 0, (command, result.stderr)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/flags", timeout=10) as response:
            assert json.load(response)["mirroring"] is False, (
                "the README's kill switch must have switched mirroring off"
            )
    finally:
        proxy.send_signal(signal.SIGTERM)
        _, stderr = proxy.communicate(timeout=60)
    assert proxy.returncode == 0, stderr

    for command in (c for c in quickstart if c.startswith("shadowtap ") and c is not proxy_line):
        result = bash(localise(command))
        allowed = (0, 1) if command.startswith("shadowtap diff") else (0,)
        assert result.returncode in allowed, (command, result.returncode, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
    for produced in ("report.html", "report.md", "replay.html", "diff.xml"):
        assert (tmp_path / produced).stat().st_size > 0, produced
    assert "body.email" in (tmp_path / "report.md").read_text()
