"""The demo job: shadowtap end to end on loopback, driven through its own command line.

Starts the demo service three times (version 1 as primary, version 1 again as ``secondary`` so the
differ can learn the noise, version 2 as the ``v2`` shadow), puts ``shadowtap proxy`` in front with
mirroring and recording on, drives a few hundred requests across sessions, replays the tape at 5x
against version 2, runs ``shadowtap diff`` and prints where everything is.

It drives the real CLI in subprocesses because the CLI is the contract users run; it must never leave
a process behind (every child is stopped in ``finally``) and never touch anything but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from shadowtap.demo.services import CATEGORIES, PLANTED
from shadowtap.recorder.errors import ShadowtapError

#: How long any one step may take before the demo gives up with a clear message.
STEP_TIMEOUT_S = 60.0
#: The diff's own exit codes: 1 means it found regressions, which is what the demo is for.
DIFF_EXIT_OK = (0, 1)

#: Marks a folder as the demo's output, so a later run may clear it.
OUTPUT_MARKER = ".shadowtap-demo"
#: Everything the demo writes in its output folder: a new run removes exactly these first.
OUTPUT_NAMES = (
    OUTPUT_MARKER, "tape", "replay-tape", "logs", "report.html", "report.json", "diff-config.yaml",
    "diff.sqlite", "diff.sqlite-journal", "diff.sqlite-wal", "diff.sqlite-shm",
)  # fmt: skip

DEMO_DIFF_CONFIG = """\
# Differ settings for the demo service. Lists whose order carries no meaning are compared as sets.
unordered_arrays:
  - body.roles
  - body.items[*].tags
"""


@dataclass(slots=True)
class Step:
    """Prints progress as the demo goes: one line per step, with its duration."""

    out: Callable[[str], None]
    started: float = field(default_factory=time.monotonic)

    def say(self, message: str) -> None:
        self.out(f"[{time.monotonic() - self.started:5.1f}s] {message}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(slots=True)
class Child:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path


class Children:
    """Every process the demo started, so that all of them are stopped whatever happens."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    async def start(self, name: str, *argv: str) -> Child:
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("wb")
        try:
            # A session of its own: Ctrl-C in the terminal reaches only the demo, which then stops its
            # children in order (the services must outlive the proxy for the replay and diff steps).
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log_file.close()
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    async def stop(self, child: Child, timeout_s: float = 10.0) -> int:
        if child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.process.wait(), timeout_s)
            except TimeoutError:
                child.process.kill()
                await child.process.wait()
        return child.process.returncode if child.process.returncode is not None else -1

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(c) for c in reversed(self.children)), return_exceptions=True)


async def wait_http(url: str, child: Child, timeout_s: float = STEP_TIMEOUT_S) -> None:
    """Wait until ``url`` answers at all (any status), or fail naming the child's log."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if child.process.returncode is not None:
                raise ShadowtapError(f"{child.name} exited with {child.process.returncode}; see {child.log_path}")
            try:
                async with session.get(url) as response:
                    await response.read()
                    return
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.1)
    raise ShadowtapError(f"{child.name} did not answer at {url} within {timeout_s:.0f}s; see {child.log_path}")


async def run_cli(children: Children, name: str, *args: str) -> tuple[int, str]:
    """Run a shadowtap subcommand to completion; returns its exit code and output."""
    child = await children.start(name, sys.executable, "-m", "shadowtap", *args)
    try:
        code = await asyncio.wait_for(child.process.wait(), STEP_TIMEOUT_S * 2)
    except TimeoutError:
        await children.stop(child)
        raise ShadowtapError(f"shadowtap {args[0]} took too long; see {child.log_path}") from None
    return code, child.log_path.read_text(encoding="utf-8", errors="replace")


def demo_requests(rng: random.Random, sessions: int, per_session: int) -> list[list[tuple[str, str]]]:
    """Per session, the (method, target) pairs a shopper sends, in order."""
    plans = []
    for _ in range(sessions):
        user = rng.randint(1, 60)
        plan: list[tuple[str, str]] = [("GET", f"/api/users/{user}")]
        for _ in range(per_session - 1):
            roll = rng.random()
            if roll < 0.3:
                plan.append(("GET", f"/api/products?category={rng.choice(CATEGORIES)}"))
            elif roll < 0.55:
                plan.append(("GET", f"/api/orders/{rng.randint(1, 120)}"))
            elif roll < 0.8:
                plan.append(("GET", f"/api/cart/{rng.randint(1, 80)}"))
            elif roll < 0.9:
                plan.append(("GET", f"/api/users/{rng.randint(1, 60)}"))
            elif roll < 0.95:
                plan.append(("GET", "/api/health"))
            else:
                plan.append(("POST", "/api/orders"))
        plans.append(plan)
    return plans


async def drive_traffic(base: str, plans: list[list[tuple[str, str]]], spread_s: float) -> dict[int, int]:
    """Send every session's requests through ``base``; sessions start spread over ``spread_s``."""
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=64)

    async def session_task(index: int, plan: list[tuple[str, str]], session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(spread_s * index / max(1, len(plans)))
        headers = {"X-Session-Id": f"shopper-{index}", "Authorization": f"Bearer demo-token-{index}"}
        for method, target in plan:
            body = json.dumps({"sku": "BO-00001", "qty": 1}).encode() if method == "POST" else None
            async with session.request(method, base + target, headers=headers, data=body) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            await asyncio.sleep(0.02)

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(session_task(i, plan, session) for i, plan in enumerate(plans)))
    return statuses


def prepare_out_dir(out_dir: Path) -> list[str]:
    """Make ``out_dir`` ready for a run: created, marked, and cleared of an earlier run's output.

    A run that appends to the last one's tape, replay tape and results store tells a different story
    (twice the pairs, the idle gap between the runs replayed), so each starts clean. Only the names in
    ``OUTPUT_NAMES`` are ever removed, symlinks unlinked rather than followed, and only in a folder the
    demo marked or that holds nothing else (an earlier run from before the marker): a ``tape`` in
    some other folder given as ``--out`` is never the demo's to delete. Returns the names removed.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ShadowtapError(f"demo output {out_dir} is not a folder; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = {entry.name: entry for entry in out_dir.iterdir()}
    ours = sorted(name for name in entries if name in OUTPUT_NAMES and name != OUTPUT_MARKER)
    foreign = sorted(name for name in entries if name not in OUTPUT_NAMES)
    if ours and foreign and OUTPUT_MARKER not in entries:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ShadowtapError(
            f"{out_dir} holds files the demo did not write ({shown}) beside names it writes "
            f"({', '.join(ours)}); choose another --out or empty it"
        )
    for name in ours:
        entry = entries[name]
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (out_dir / OUTPUT_MARKER).write_text(
        "Written by `shadowtap demo`: its next run removes this folder's demo output first.\n", encoding="utf-8"
    )
    return ours


@dataclass(frozen=True, slots=True)
class DemoResult:
    out_dir: Path
    tape: Path
    replay_tape: Path
    html_report: Path
    json_report: Path
    diff_exit_code: int
    report: dict[str, Any]


async def run_demo(
    out_dir: Path, *, keep_running: bool = False, sessions: int = 40, per_session: int = 10, seed: int = 7
) -> DemoResult:
    step = Step(lambda line: print(line, flush=True))
    if prepare_out_dir(out_dir):
        step.say(f"cleared the previous run's output from {out_dir}")
    logs = out_dir / "logs"
    logs.mkdir()
    tape = out_dir / "tape"
    replay_tape = out_dir / "replay-tape"
    html_report, json_report = out_dir / "report.html", out_dir / "report.json"
    config = out_dir / "diff-config.yaml"
    config.write_text(DEMO_DIFF_CONFIG, encoding="utf-8")
    children = Children(logs)
    python = sys.executable
    try:
        ports = {name: free_port() for name in ("primary", "secondary", "v2", "proxy", "admin")}
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        step.say("starting the demo service: version 1 (primary), version 1 (secondary), version 2 (shadow)")
        for name, version in (("primary", 1), ("secondary", 1), ("v2", 2)):
            child = await children.start(
                f"service-{name}", python, "-m", "shadowtap.demo.services", "--version", str(version),
                "--port", str(ports[name]),
            )  # fmt: skip
            await wait_http(urls[name] + "/api/health", child)
        step.say(f"starting shadowtap proxy on {urls['proxy']} (admin {urls['admin']}), recording to {tape}")
        proxy = await children.start(
            "proxy", python, "-m", "shadowtap", "proxy",
            "--listen", f"127.0.0.1:{ports['proxy']}", "--primary", urls["primary"],
            "--shadow", f"secondary={urls['secondary']}", "--shadow", f"v2={urls['v2']}",
            "--tape", str(tape), "--admin", f"127.0.0.1:{ports['admin']}",
        )  # fmt: skip
        await wait_http(urls["admin"] + "/healthz", proxy)
        plans = demo_requests(random.Random(seed), sessions, per_session)
        total = sum(len(p) for p in plans)
        step.say(f"driving {total} requests in {sessions} sessions through the proxy")
        statuses = await drive_traffic(urls["proxy"], plans, spread_s=3.0)
        step.say("clients got " + ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items())))
        if keep_running:
            print_try_it(urls)
            await wait_for_interrupt()
        step.say("stopping the proxy (drains mirrors, closes the tape)")
        code = await children.stop(proxy, timeout_s=30)
        if code != 0:
            raise ShadowtapError(f"the proxy exited with {code}; see {proxy.log_path}")

        step.say(f"replaying the tape at 5x against version 2 into {replay_tape}")
        code, output = await run_cli(
            children, "replay", "replay", str(tape), "--target", urls["v2"], "--speed", "5",
            "--results", str(replay_tape), "--allow-writes",
        )  # fmt: skip
        if code not in (0, 1):
            raise ShadowtapError(f"shadowtap replay exited with {code}:\n{output}")
        print(indent(output))

        step.say("diffing primary (v1) against the v2 shadow, learning noise from the secondary (v1)")
        code, output = await run_cli(
            children, "diff", "diff", str(tape), "--primary", "primary", "--candidate", "v2",
            "--secondary", "secondary", "--config", str(config),
            "--html", str(html_report), "--json", str(json_report), "--db", str(out_dir / "diff.sqlite"),
        )  # fmt: skip
        if code not in DIFF_EXIT_OK:
            raise ShadowtapError(f"shadowtap diff exited with {code}:\n{output}")
        print(indent(output))
        report = json.loads(json_report.read_text(encoding="utf-8"))
        step.say("done")
        print(f"\n  tape:         {tape}\n  replay tape:  {replay_tape}\n  HTML report:  {html_report}")
        print(f"  JSON report:  {json_report}\n  logs:         {logs}")
        print(f"\n  planted changes in version 2 ({len(PLANTED)}):")
        for planted in PLANTED:
            print(f"    {planted.severity:<8} {planted.endpoint:<24} {planted.description}")
        return DemoResult(out_dir, tape, replay_tape, html_report, json_report, code, report)
    finally:
        await children.stop_all()


def indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines())


def print_try_it(urls: dict[str, str]) -> None:
    print("\nThe proxy and services are up.")
    print(f"  live view:  {urls['admin']}/live   (the v2 shadow judged as the traffic flows; open it in a browser)")
    print("Try:")
    print(f"  curl -s {urls['proxy']}/api/users/7")
    print(f"  curl -s {urls['proxy']}/api/orders/14     # version 2 answers 500 for this one")
    print(f"  curl -s {urls['admin']}/metrics | grep shadowtap_")
    print(f"  curl -s {urls['admin']}/flags")
    print(f"  curl -s -X PUT {urls['admin']}/flags -d '{{\"mirroring\": false}}'   # the kill switch")
    print("Press Ctrl-C to stop them and go on with replay and diff.\n", flush=True)


async def wait_for_interrupt() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def default_out_dir() -> Path:
    return Path(os.environ.get("SHADOWTAP_DEMO_DIR", "demo-output"))


def summary_endpoints(report: dict[str, Any]) -> set[tuple[str, str]]:
    """(endpoint, path) of every unsuppressed signature in a JSON report."""
    found = set()
    for endpoint in report.get("endpoints", []):
        for signature in endpoint.get("signatures", []):
            if not signature.get("suppressed"):
                found.add((signature["endpoint"], re.sub(r"\[\d+\]", "[*]", signature["path"])))
    return found
