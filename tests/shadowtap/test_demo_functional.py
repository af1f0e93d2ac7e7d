"""`shadowtap demo` end to end: its report lists exactly the planted changes, and nothing is left running."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from shadowtap.demo.run import OUTPUT_NAMES, summary_endpoints
from shadowtap.demo.services import PLANTED


@pytest.mark.timeout(240)
def test_demo_reports_exactly_the_planted_changes(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "shadowtap", "demo", "--out", str(out), "--sessions", "30"],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr

    report = json.loads((out / "report.json").read_text())
    found = summary_endpoints(report)
    assert found == {(p.endpoint, p.path) for p in PLANTED}
    severities = {
        (s["endpoint"], s["path"]): s["severity"]
        for e in report["endpoints"]
        for s in e["signatures"]
        if not s["suppressed"]
    }
    assert severities == {(p.endpoint, p.path): p.severity for p in PLANTED}
    assert report["verdict"]["exit_code"] == 1, "the planted critical and high changes must fail the gate"
    assert report["noise_suppressed"] > 0, "the demo's noise must be seen and suppressed, not absent"

    html = (out / "report.html").read_text()
    assert "/api/orders/{id}" in html
    assert any((out / "tape").iterdir()) and any((out / "replay-tape").iterdir())
    for planted in PLANTED:
        assert planted.endpoint in result.stdout

    # Every process the demo started is gone: the services and every shadowtap command it ran.
    for pattern in ("shadowtap.demo.services", f"shadowtap.*{out}"):
        leftover = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False, timeout=10)
        assert leftover.stdout.strip() == "", f"demo left processes running ({pattern}): {leftover.stdout}"


def _run_demo(out: Path, sessions: int) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "shadowtap", "demo", "--out", str(out), "--sessions", str(sessions)],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _story(out: Path, stdout: str) -> dict[str, object]:
    """The figures a reader takes from a demo run."""
    report = json.loads((out / "report.json").read_text())
    replayed = re.search(r"requests (\d+) in", stdout)
    assert replayed is not None, stdout
    return {
        "tape segments": len(list((out / "tape").iterdir())),
        "replayed": int(replayed.group(1)),
        "totals": {k: report[k] for k in ("pairs", "compared", "equal", "differing", "errors")},
        "signatures": sorted(
            (s["endpoint"], s["path"], s["severity"], s["count"])
            for e in report["endpoints"]
            for s in e["signatures"]
            if not s["suppressed"]
        ),
        "exit": report["verdict"]["exit_code"],
    }


@pytest.mark.timeout(240)
def test_a_second_run_tells_the_same_story(tmp_path: Path) -> None:
    out = tmp_path / "demo-output"
    first_stdout = _run_demo(out, sessions=8)
    assert {p.name for p in out.iterdir()} <= set(OUTPUT_NAMES), "the demo wrote a file it would not clean"
    first = _story(out, first_stdout)
    second_stdout = _run_demo(out, sessions=8)
    second = _story(out, second_stdout)
    assert second == first
    assert first["tape segments"] == 1
    driven = re.search(r"driving (\d+) requests", first_stdout)
    assert driven is not None and first["replayed"] == int(driven.group(1))
    assert "already in" not in second_stdout


@pytest.mark.timeout(240)
def test_keep_running_serves_until_ctrl_c_then_finishes(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "shadowtap", "demo", "--out", str(out), "--sessions", "5", "--keep-running"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    assert demo.stdout is not None
    lines: list[str] = []
    for line in demo.stdout:
        lines.append(line)
        if line.startswith("Press Ctrl-C"):
            break
    try_it = "".join(lines)
    proxy_url = re.search(r"curl -s (http://127\.0\.0\.1:\d+)/api/users/7", try_it)
    assert proxy_url is not None, try_it
    # The printed commands work while the demo waits.
    with urllib.request.urlopen(proxy_url.group(1) + "/api/users/7", timeout=10) as response:
        assert response.status == 200
    # And the live view it names answers with the page.
    live_url = re.search(r"live view:\s+(http://127\.0\.0\.1:\d+/live)", try_it)
    assert live_url is not None, try_it
    with urllib.request.urlopen(live_url.group(1), timeout=10) as response:
        assert response.status == 200 and b"<html" in response.read(4096).lower()
    # Ctrl-C in a terminal: SIGINT to the whole foreground process group. Only the demo may act on
    # it; it then stops the proxy in order and goes on with replay and diff against live services.
    os.killpg(demo.pid, signal.SIGINT)
    rest, _ = demo.communicate(timeout=180)
    assert demo.returncode == 0, try_it + rest
    assert "Traceback" not in rest
    assert (out / "report.json").exists()
    # This demo's services (by their ports: other tests may run a demo of their own meanwhile) are gone.
    ports = [
        re.search(r"listening on http://127\.0\.0\.1:(\d+)", (out / "logs" / f"service-{name}.log").read_text())
        for name in ("primary", "secondary", "v2")
    ]
    assert all(ports), ports
    for port in ports:
        assert port is not None
        leftover = subprocess.run(
            ["pgrep", "-f", f"shadowtap.demo.services .*--port {port.group(1)}$"],
            capture_output=True, text=True, check=False, timeout=10,
        )  # fmt: skip
        assert leftover.stdout.strip() == "", f"a service on port {port.group(1)} outlived the demo"
