"""Replay memory at high path cardinality: peak RSS and time of `shadowtap replay --speed 0`.

Writes a tape of ``--exchanges`` GET exchanges over 31 endpoints, ``--distinct`` of them with a
distinct path (ids of every shape: digits, UUIDs, hashes, dates, long tokens, sparse slugs; the
paths of ``tests/scale_paths.py``, as the million-path test), then
replays it through the real CLI against nginx on loopback and prints the replay's peak RSS (VmHWM
of the child, from ``getrusage(RUSAGE_CHILDREN)``), its wall and CPU time and the endpoint templates
the report shows. Usage::

    .venv/bin/python bench/replay_memory.py [--exchanges 1000000] [--distinct 100000]

The budget (DESIGN.md): memory bounded whatever the number of distinct paths (under 300 MiB for 1M
exchanges with 100k distinct paths). It must never leave nginx running.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shadowtap.recorder import Exchange, Request, SyncTapeWriter, TapeOptions  # noqa: E402
from tests.scale_paths import STABLE, distinct_path  # noqa: E402

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
    keepalive_requests 10000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{{"id":12345,"name":"shadowtap","ok":true}}';
        }}
    }}
}}
"""


def stable_path(i: int) -> tuple[str, str]:
    """One of the 25 paths hit over and over (the literal templates)."""
    path = STABLE[i % len(STABLE)]
    return path, f"GET {path}"


def write_tape(directory: Path, exchanges: int, distinct: int, sessions: int = 256) -> dict[str, int]:
    """The tape, and how many exchanges each template should count."""
    base = 1_700_000_000 * 10**9
    expected: dict[str, int] = {}
    # Every distinct path is hit once, spread evenly; the rest of the traffic goes to the stable paths.
    k = 0
    with SyncTapeWriter(directory, TapeOptions(redaction=None)) as writer:
        for i in range(exchanges):
            if (i + 1) * distinct // exchanges > k:
                path, template = distinct_path(k)
                k += 1
            else:
                path, template = stable_path(i)
            expected[template] = expected.get(template, 0) + 1
            writer.write(
                Exchange(
                    id=f"m{i}",
                    started_at_ns=base + i * 1000,
                    connection_id=f"c{i % sessions}",
                    request=Request("GET", f"{path}?q={i}", ((b"Accept", b"application/json"),)),
                )
            )
    return expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replay_peak(tape: Path, url: str, out: Path, *flags: str) -> tuple[int, float, float]:
    """Run the CLI in a child; (peak RSS in KiB, wall seconds, CPU seconds). ``ru_maxrss`` of the
    children is the largest child's peak, and the replay is the only child waited for here."""
    cmd = [sys.executable, "-m", "shadowtap", "replay", str(tape), "--target", url, "--speed", "0"]
    cmd += ["--json", str(out), "--no-progress", "--max-error-rate", "1", *flags]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=3600)
    wall_s = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return after.ru_maxrss, wall_s, cpu_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exchanges", type=int, default=1_000_000)
    parser.add_argument("--distinct", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=256, help="distinct connection ids (the session key)")
    args = parser.parse_args()
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        print("nginx is not installed (scripts/ensure-system-deps.sh nginx)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="replay-memory-") as tmp_name:
        tmp = Path(tmp_name)
        started = time.monotonic()
        expected = write_tape(tmp / "tape", args.exchanges, args.distinct, args.sessions)
        print(f"tape: {args.exchanges:,} exchanges, {args.distinct:,} distinct paths, "
              f"{len(expected)} templates, written in {time.monotonic() - started:.1f} s")  # fmt: skip
        port = free_port()
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=port))
        nginx = subprocess.Popen(["/usr/sbin/nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)])
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            peak_kib, wall_s, cpu_s = replay_peak(tmp / "tape", f"http://127.0.0.1:{port}", tmp / "out.json")
        finally:
            nginx.terminate()
            nginx.wait(timeout=10)
        document = json.loads((tmp / "out.json").read_text())
    endpoints = {e["endpoint"]: e["requests"] for e in document["endpoints"]}
    more = document.get("endpoints_more", 0)
    right = sum(1 for name, count in expected.items() if endpoints.get(name) == count)
    print(f"replay --speed 0: peak RSS {peak_kib / 1024:,.0f} MiB, {wall_s:.1f} s wall, {cpu_s:.1f} s CPU, "
          f"{document['summary']['requests']:,} requests, errors {document['summary']['errors']}")  # fmt: skip
    print(f"report: {len(endpoints)} endpoints listed (+{more} more); {right} of {len(expected)} expected "
          f"templates with the expected count")  # fmt: skip
    for name, count in sorted(expected.items(), key=lambda item: -item[1]):
        if endpoints.get(name) != count:
            print(f"  {name:<40} expected {count:>9,}  reported {endpoints.get(name, 0):>9,}")
    print(f"templates reported: {', '.join(list(endpoints)[:8])} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
