"""`shadowtap proxy` as a real process: the listening line, SIGTERM drains onto the tape, workers, config checks."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from shadowtap.recorder import TapeReader
from shadowtap.recorder.model import Response

LINE_RE = re.compile(r"listening on (\S+) admin (\S+) workers (\d+) pid (\d+)")


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[str, str, list[str]]]:
    shadow_paths: list[str] = []

    async def primary(request: web.Request) -> web.Response:
        if request.path == "/slow":
            await asyncio.sleep(1.0)
        return web.Response(text=f"primary {request.path}")

    async def shadow(request: web.Request) -> web.Response:
        shadow_paths.append(request.path)
        return web.Response(text=f"shadow {request.path}")

    runners = []
    urls = []
    for handler in (primary, shadow):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
    yield urls[0], urls[1], shadow_paths
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Proxies started by a test; any still running at the end (a failed test) are killed."""
    started: list[asyncio.subprocess.Process] = []
    yield started
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.communicate()


async def start(
    started: list[asyncio.subprocess.Process], *args: str
) -> tuple[asyncio.subprocess.Process, re.Match[str]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowtap", "proxy", "--listen", "127.0.0.1:0", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    started.append(process)
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    match = LINE_RE.search(line)
    if match is None:
        process.kill()
        assert process.stderr is not None
        pytest.fail(f"no listening line: {line!r} {(await process.stderr.read()).decode()}")
    return process, match


async def stop(process: asyncio.subprocess.Process) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_sigterm_drains_in_flight_and_tape_holds_every_exchange(
    upstreams: tuple[str, str, list[str]], tmp_path: Path, processes: list[asyncio.subprocess.Process]
) -> None:
    primary, shadow, shadow_paths = upstreams
    tape = tmp_path / "tape"
    process, match = await start(processes, "--primary", primary, "--shadow", f"v2={shadow}", "--tape", str(tape))
    url, admin = match.group(1), match.group(2)
    async with aiohttp.ClientSession() as client:
        for i in range(20):
            async with client.get(f"{url}/fast/{i}") as resp:
                assert resp.status == 200 and await resp.text() == f"primary /fast/{i}"
        async with client.get(f"{admin}/readyz") as resp:
            assert resp.status == 200
        slow = asyncio.ensure_future(client.get(f"{url}/slow"))
        await asyncio.sleep(0.3)  # the slow request is at the primary now
        process.send_signal(signal.SIGTERM)
        async with await slow as resp:
            assert resp.status == 200 and await resp.text() == "primary /slow"
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert "Traceback" not in stderr.decode()

    taped = list(TapeReader(tape))
    assert sorted(ex.request.target for ex in taped) == sorted([f"/fast/{i}" for i in range(20)] + ["/slow"])
    for ex in taped:
        assert isinstance(ex.primary, Response) and ex.primary.status == 200
        assert ex.decisions == {"v2": "mirrored"}
        # Joined before the tape closed: each shadow outcome is on the tape, not lost in the drain.
        assert "v2" in ex.shadows
    assert sorted(shadow_paths) == sorted([f"/fast/{i}" for i in range(20)] + ["/slow"])


async def test_workers_share_the_port_and_the_kill_switch(
    upstreams: tuple[str, str, list[str]], tmp_path: Path, processes: list[asyncio.subprocess.Process]
) -> None:
    primary, shadow, _ = upstreams
    tape = tmp_path / "tape"
    events = tmp_path / "events.jsonl"
    process, match = await start(
        processes, "--primary", primary, "--shadow", f"v2={shadow}", "--tape", str(tape), "--workers", "2",
        "--events", str(events),
    )  # fmt: skip
    url, admin = match.group(1), match.group(2)
    assert match.group(3) == "2" and "," not in admin  # one admin address for the whole proxy
    async with aiohttp.ClientSession() as client:
        for i in range(40):
            # A fresh connection each time, so the kernel spreads them over both workers.
            async with client.get(f"{url}/w/{i}", headers={"Connection": "close"}) as resp:
                assert resp.status == 200
        async with client.get(f"{admin}/readyz") as resp:
            assert resp.status == 200
        async with client.get(f"{admin}/stats") as resp:
            workers = (await resp.json())["workers"]
        served = [w["stats"]["server"]["requests"] for w in workers]
        # Each worker froze its start-up heap out of the collector's full passes.
        assert all(w["stats"]["gc"]["frozen"] > 1000 for w in workers), [w["stats"]["gc"] for w in workers]
        assert [w["worker"] for w in workers] == [0, 1] and [w["stats"]["worker"] for w in workers] == [0, 1]
        assert sum(served) == 40 and all(n > 0 for n in served), served
        async with client.get(f"{admin}/metrics") as resp:
            families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
        by_worker = {
            s.labels["worker"]: s.value
            for s in families["shadowtap_proxy_requests"].samples
            if s.name.endswith("_total") and s.labels["status"] == "2xx"
        }
        assert by_worker == {"0": served[0], "1": served[1]}
        # The kill switch on the one admin address reaches both workers at once.
        async with client.put(f"{admin}/flags", json={"mirroring": False}) as resp:
            assert resp.status == 200
        async with client.get(f"{admin}/stats") as resp:
            assert [w["stats"]["flags"]["mirroring"] for w in (await resp.json())["workers"]] == [False, False]
    code, stderr = await stop(process)
    assert code == 0, stderr
    assert len(list(TapeReader(tape))) == 40
    # Both workers append to one events file; every line is whole.
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert sorted(e["path"] for e in lines) == sorted(f"/w/{i}" for i in range(40))


async def test_events_on_stdout_follow_the_listening_line(
    upstreams: tuple[str, str, list[str]], processes: list[asyncio.subprocess.Process]
) -> None:
    primary, _, _ = upstreams
    process, match = await start(processes, "--primary", primary, "--events", "-")
    async with aiohttp.ClientSession() as client:
        for i in range(3):
            async with client.get(f"{match.group(1)}/e/{i}") as resp:
                assert resp.status == 200
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        stdout, _ = await process.communicate()
    events = [json.loads(line) for line in stdout.decode().splitlines()]
    assert [(e["path"], e["primary"]["status"]) for e in events] == [(f"/e/{i}", 200) for i in range(3)]


def run_cli(*args: str) -> tuple[int, str, str]:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "shadowtap", "proxy", *args], capture_output=True, text=True, timeout=60, check=False
    )
    return result.returncode, result.stdout, result.stderr


def test_check_config_accepts_good_and_names_the_bad_key(tmp_path: Path) -> None:
    good = tmp_path / "proxy.yaml"
    good.write_text(
        "primary: http://127.0.0.1:9000\n"
        "shadows:\n  - {name: v2, url: 'http://127.0.0.1:9001', sample_percent: 10}\n"
        "mirror:\n  routes:\n    - {path: /orders/**, mirror_methods: [POST]}\n"
    )
    code, out, err = run_cli("--check-config", str(good), "--set", "shadows.v2.rate_per_s=20")
    assert code == 0, err
    assert "config OK" in out and '"rate_per_s": 20.0' in out
    bad = tmp_path / "bad.toml"
    bad.write_text('primary = "http://127.0.0.1:9000"\n[[shadows]]\nname = "v2"\nurl = "gopher://x"\n')
    code, out, err = run_cli("--check-config", str(bad))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "shadows[0].url" in err and "gopher://x" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--primary", "http://127.0.0.1:9", "--workers", "0"), "workers"),
        (("--primary", "http://127.0.0.1:9", "--shadow", "nourl"), "--shadow"),
        (("--listen", "127.0.0.1:0"), "primary"),
        (("--primary", "http://127.0.0.1:9", "--admin", "0.0.0.0:0"), "admin.listen"),
        (("--primary", "http://127.0.0.1:9", "--set", "forward.connect_timeout_s=-1"), "forward.connect_timeout_s"),
        (
            ("--primary", "http://127.0.0.1:9", "--shadow", "v2=https://127.0.0.1:9", "--shadow-ca-file", "/nope.pem"),
            "shadows.v2.ca_file",
        ),
        (("--primary", "http://127.0.0.1:9", "--shadow", "v2=http://127.0.0.1:9", "--shadow-timeout", "30"), "join"),
    ],
)
def test_bad_flags_are_one_line(args: tuple[str, ...], needle: str) -> None:
    code, _, err = run_cli(*args)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_in_use_and_unwritable_events_are_one_line(tmp_path: Path, workers: str) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_cli("--listen", f"127.0.0.1:{port}", "--primary", "http://127.0.0.1:9", "--workers", workers)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "'listen'" in err and str(port) in err
    with socket.socket() as busy:  # the admin address taken (with workers: the parent's own server)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_cli("--primary", "http://127.0.0.1:9", "--admin", f"127.0.0.1:{port}", "--workers", workers)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "admin.listen" in err and str(port) in err
    code, _, err = run_cli(
        "--primary", "http://127.0.0.1:9", "--events", str(tmp_path / "missing" / "e.jsonl"), "--workers", workers
    )
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and "events.path" in err, err
