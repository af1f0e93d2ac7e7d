"""A deploy that changes nothing passes the gate: three identical copies of a real echo service.

httpbin (from PyPI) runs under gunicorn three times on loopback: the primary, a `secondary` (the
same version again) and the candidate `v2` (the same version again). The real proxy mirrors a mix of
requests whose answers echo what the service was sent (headers, credentials, the Host in absolute
URLs and redirects, cookies, JSON bodies) and records a tape; `shadowtap diff` with default options
must find no regression, with and without the secondary. Whatever differs here was caused by
shadowtap itself: the forwarding headers the primary got, the credentials the copies lose, the
marker headers they gain, and the Host each copy is sent with.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import gunicorn.config
import pytest

pytestmark = pytest.mark.slow

LINE_RE = re.compile(r"listening on (\S+) admin (\S+) workers (\d+) pid (\d+)")

#: The WSGI entry gunicorn loads. httpbin 0.10.0 (the newest release whose requirements fit beside
#: locust's gevent, see pyproject.toml) imports ``werkzeug.http.parse_authorization_header``, which
#: Werkzeug 3 moved to ``Authorization.from_header``: put it back under the old name, nothing else.
_APP = """\
import werkzeug.http
if not hasattr(werkzeug.http, "parse_authorization_header"):
    from werkzeug.datastructures import Authorization
    werkzeug.http.parse_authorization_header = Authorization.from_header
from httpbin import app
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(port: int, process: subprocess.Popen[bytes], deadline_s: float) -> None:
    while time.monotonic() < deadline_s:
        if process.poll() is not None:
            assert process.stderr is not None
            pytest.fail(f"gunicorn exited: {process.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"gunicorn did not listen on {port}")


@pytest.fixture(scope="module")
def echo_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Three gunicorn processes serving httpbin: primary, secondary and v2, by URL."""
    app_dir = tmp_path_factory.mktemp("httpbin")
    (app_dir / "echo_app.py").write_text(_APP)
    # gunicorn 23+ opens a control socket at one fixed path per user unless told not to.
    settings = {setting.name for setting in gunicorn.config.KNOWN_SETTINGS}
    no_control = ["--no-control-socket"] if "control_socket_disable" in settings else []
    processes: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name in ("primary", "secondary", "v2"):
            port = _free_port()
            process = subprocess.Popen(
                [
                    sys.executable, "-m", "gunicorn", "--chdir", str(app_dir), "--bind", f"127.0.0.1:{port}",
                    "--workers", "1", "--worker-class", "sync", "--log-level", "warning", *no_control, "echo_app:app",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            processes[name] = (process, port)
        deadline_s = time.monotonic() + 30
        for process, port in processes.values():
            _wait_listening(port, process, deadline_s)
        yield {name: f"http://127.0.0.1:{port}" for name, (_, port) in processes.items()}
    finally:
        for process, _ in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()


async def _record(services: dict[str, str], shadows: tuple[str, ...], tape: Path) -> int:
    """Run the proxy with ``shadows``, drive the mix through it, stop it; return the requests sent."""
    shadow_args = [arg for name in shadows for arg in ("--shadow", f"{name}={services[name]}")]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowtap", "proxy", "--listen", "127.0.0.1:0", "--admin", "off",
        "--primary", services["primary"], *shadow_args, "--tape", str(tape),
        # Writes are mirrored only where a route lets them: the JSON echo is one.
        "--route", "path=/post;methods=POST;mirror_methods=POST",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None and process.stderr is not None
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
        match = LINE_RE.search(line)
        assert match is not None, f"{line!r} {(await process.stderr.read()).decode()}"
        url = match.group(1)
        sent = 0
        secret = {"Authorization": "Bearer client-token-7", "Cookie": "sid=abc123; theme=dark"}
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
            for i in range(6):
                requests: list[tuple[str, str, dict[str, str], object]] = [
                    ("GET", f"/get?page={i}", {}, None),
                    ("GET", "/headers", secret, None),
                    ("GET", f"/anything/item-{i}?q=shoes", {"X-Api-Key": "key-42", "X-Request-Source": "web"}, None),
                    ("POST", "/post", {"Content-Type": "application/json"}, {"name": "pen", "qty": i}),
                    ("GET", "/response-headers?X-Build=7", {}, None),
                    ("GET", "/redirect-to?url=/get", {}, None),
                    ("GET", "/absolute-redirect/1", {}, None),
                    ("GET", "/cookies", secret, None),
                    ("GET", "/user-agent", {"User-Agent": "shop-web/4.2"}, None),
                ]
                for method, path, headers, body in requests:
                    data = None if body is None else json.dumps(body)
                    async with client.request(
                        method, url + path, headers=headers, data=data, allow_redirects=False
                    ) as response:
                        await response.read()
                        assert response.status < 500, (method, path, response.status)
                    sent += 1
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
        return sent
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _diff(tape: Path, report: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowtap", "diff", str(tape), "--candidate", "v2", "--json", str(report), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
    )


def _failing(report: Path) -> list[str]:
    if not report.exists():
        return ["(no report was written)"]
    data = json.loads(report.read_text())
    return [
        f"{s['severity']} {s['kind']} {e['endpoint']} {s['path']} ({s['transition']})"
        for e in data["endpoints"]
        for s in e["signatures"]
        if s["id"] in data["verdict"]["failing_signatures"]
    ]


@pytest.mark.parametrize("shadows", [("secondary", "v2"), ("v2",)], ids=["with-secondary", "without-secondary"])
async def test_identical_echo_services_pass_the_gate(
    echo_services: dict[str, str], tmp_path: Path, shadows: tuple[str, ...]
) -> None:
    tape = tmp_path / "tape"
    sent = await _record(echo_services, shadows, tape)

    report = tmp_path / "report.json"
    result = await asyncio.to_thread(_diff, tape, report)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\nfailing: {_failing(report)}"
    data = json.loads(report.read_text())
    assert data["compared"] == sent
    assert data["verdict"]["failing_signatures"] == []
    assert data["secondary_name"] == ("secondary" if "secondary" in shadows else None)
    # What the proxy changed was seen, and explained: the copies' Host, credentials and markers.
    reasons = {s["reason"]: s["count"] for s in data["suppressions"]}
    assert {"rewrite:host", "rewrite:marker", "rewrite:authorization", "rewrite:cookie"} <= reasons.keys(), reasons
    assert "noise suppressed: rewrite:host" in " ".join(result.stdout.split())
    unsuppressed = [
        (e["endpoint"], s["path"], s["kind"]) for e in data["endpoints"] for s in e["signatures"] if not s["suppressed"]
    ]
    assert unsuppressed == [], unsuppressed
