"""Replayer benchmark: throughput per process and with --workers 2, start lag at a fixed rate, drift.

Against nginx on loopback (one worker, a 60-byte JSON), through the real `shadowtap replay` CLI:

1. the maximum sustained rate of one process (``--speed 0``: no waiting, 64 connections);
2. the same with ``--workers 2``;
3. the start-lag p99 and cumulative drift at ``--rate 2000`` (budget: p99 <= 2 ms, no drift);
4. the same tape replayed closed loop by ``wrk`` (one thread, 64 connections) as the reference;
5. the timer baseline for start lag: a bare loop awaiting the same 2,000/s deadlines with the
   runner's ``sleep_until`` and sending nothing (what the machine's scheduling allows at best).

Figures are printed as ratios against the wrk baseline measured in the same run, because absolute
numbers on a shared machine move from run to run; each replay also prints its CPU time per request
(the CLI and its workers, from ``getrusage``), which other work disturbs far less. Usage::

    .venv/bin/python bench/replay_bench.py [--requests 40000] [--rate-seconds 10]

It must never leave nginx running: the server is stopped whatever happens.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from shadowtap.recorder import Exchange, Request, SyncTapeWriter, TapeOptions

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log crit;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{{"id":12345,"name":"shadowtap","ok":true,"tags":["a","b"],"n":1}}';
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_tape(directory: Path, count: int, spacing_us: int) -> None:
    base = 1_700_000_000 * 10**9
    with SyncTapeWriter(directory, TapeOptions(redaction=None)) as writer:
        for i in range(count):
            writer.write(
                Exchange(
                    id=f"b{i}",
                    started_at_ns=base + i * spacing_us * 1000,
                    request=Request("GET", f"/items/{i % 500}?q={i}", ((b"Accept", b"application/json"),)),
                )
            )


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def replay(tape: Path, url: str, out: Path, *flags: str) -> dict[str, Any]:
    """Run the CLI; the document gets ``cpu_s``: CPU seconds of the replay and its workers, which
    other work on a shared machine disturbs far less than throughput."""
    cmd = [sys.executable, "-m", "shadowtap", "replay", str(tape), "--target", url, "--json", str(out), "--no-progress"]
    cpu_before_s = _children_cpu_s()
    subprocess.run([*cmd, *flags], check=True, stdout=subprocess.DEVNULL, timeout=600)
    document: dict[str, Any] = json.loads(out.read_text())
    document["cpu_s"] = _children_cpu_s() - cpu_before_s
    return document


def wrk_rate(url: str, tmp: Path, count: int, seconds: int) -> float:
    script = tmp / "paths.lua"
    paths = ",".join(f'"/items/{i % 500}?q={i}"' for i in range(min(count, 5000)))
    script.write_text(
        f"local paths = {{{paths}}}\nlocal i = 0\n"
        "request = function()\n  i = i % #paths + 1\n"
        '  return wrk.format("GET", paths[i], {["Accept"] = "application/json"})\nend\n'
    )
    result = subprocess.run(
        ["wrk", "-t1", "-c64", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    )
    match = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    assert match, result.stdout
    return float(match.group(1))


def timer_baseline(seconds: int) -> list[float]:
    """Start lag (ms) of bare 2,000/s deadlines on uvloop: the floor the machine allows."""
    code = (
        "import time, uvloop\n"
        "from shadowtap.replayer.runner import sleep_until\n"
        "async def main():\n"
        "    t0 = time.monotonic_ns() + 50_000_000\n"
        "    lags = []\n"
        f"    for i in range({2000 * seconds}):\n"
        "        due = t0 + i * 500_000\n"
        "        await sleep_until(due)\n"
        "        lags.append((time.monotonic_ns() - due) / 1e6)\n"
        "    lags.sort()\n"
        "    print(' '.join(str(lags[min(len(lags) - 1, int(len(lags) * q))]) for q in (0.5, 0.99, 0.999)))\n"
        "uvloop.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return [float(v) for v in out.stdout.split()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40_000, help="requests for the throughput runs")
    parser.add_argument("--rate-seconds", type=int, default=10, help="length of the 2,000/s run")
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} is not installed (scripts/ensure-system-deps.sh nginx wrk)", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=port))
        nginx = subprocess.Popen(["/usr/sbin/nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)])
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            write_tape(tmp / "fast", args.requests, spacing_us=1)
            rate_count = 2000 * args.rate_seconds
            write_tape(tmp / "rate", rate_count, spacing_us=500)

            wrk = wrk_rate(url, tmp, args.requests, 10)
            one = replay(tmp / "fast", url, tmp / "one.json", "--speed", "0", "--connections", "64")
            two = replay(tmp / "fast", url, tmp / "two.json", "--speed", "0", "--connections", "64", "--workers", "2")
            paced = replay(tmp / "rate", url, tmp / "rate.json", "--rate", "2000", "--connections", "64")
            floor = timer_baseline(args.rate_seconds)
        finally:
            nginx.terminate()
            nginx.wait(timeout=10)

    def rate(doc: dict[str, Any]) -> float:
        return float(doc["summary"]["achieved_rate_per_s"])

    def cpu_us(doc: dict[str, Any]) -> str:
        requests = int(doc["summary"]["requests"])
        return f"{float(doc['cpu_s']) / max(1, requests) * 1e6:.0f} us CPU/request"

    lag = paced["latency_ms"]["start_lag"]
    timeline = paced["timeline"]
    # Drift: whole seconds where sent fell behind planned, and the last send against the plan.
    full_seconds = [row for row in timeline if row["planned"] == 2000]
    behind = max((row["planned"] - row["sent"] for row in full_seconds), default=0)
    elapsed_s = float(paced["summary"]["elapsed_s"])
    planned_span_s = (rate_count - 1) / 2000

    print(f"wrk closed loop, 1 thread, 64 connections:  {wrk:10,.0f} req/s  (baseline 1.00)")
    print(
        f"replay --speed 0, one process:             {rate(one):10,.0f} req/s  ({rate(one) / wrk:.2f} of wrk; "
        f"{cpu_us(one)})"
    )
    print(
        f"replay --speed 0, --workers 2:             {rate(two):10,.0f} req/s  ({rate(two) / wrk:.2f} of wrk; "
        f"{cpu_us(two)})"
    )
    print(f"  scaling with --workers 2:                {rate(two) / rate(one):.2f}x one process")
    print(
        f"replay --rate 2000 for {args.rate_seconds} s: start lag p50 {lag['p50']:.3f} ms, "
        f"p99 {lag['p99']:.3f} ms, p99.9 {lag['p99.9']:.3f} ms, max {lag['p100']:.3f} ms"
    )
    print(
        f"  timer baseline (bare deadlines, same rate): p50 {floor[0]:.3f} ms, p99 {floor[1]:.3f} ms, "
        f"p99.9 {floor[2]:.3f} ms; replay p99 / baseline p99 = {lag['p99'] / max(floor[1], 0.001):.2f}"
    )
    print(
        f"  drift: planned span {planned_span_s:.3f} s, first send to last done {elapsed_s:.3f} s; "
        f"worst full second {behind} requests behind plan; achieved {rate(paced):,.0f} req/s; {cpu_us(paced)}"
    )
    errors = {name: doc["summary"]["errors"] for name, doc in (("one", one), ("two", two), ("paced", paced))}
    print(f"  errors: {errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
