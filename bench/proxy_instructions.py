"""The proxy's CPU work per request, counted in instructions: steady where wall-clock figures are not.

On a shared 2-core virtual machine, requests/s and even CPU-seconds per request move by 10-30 %
from one minute to the next, which hides any change smaller than that. Valgrind's callgrind counts
the user-space instructions a process executes, and gives the same count for the same work however
busy the machine is. This benchmark runs ``shadowtap proxy`` under callgrind in front of nginx
(pass-through, mirroring to one shadow, mirroring + recording), sends a warm-up, zeroes the counters,
sends a fixed number of keep-alive GETs over a few connections, and prints the instructions per
request, all threads of the proxy included, and each case's ratio to pass-through measured in the
same run.

What it does not count: the kernel (system calls are about 40 % of the proxy's CPU time on
loopback), cache misses and lock contention. It is the gauge for the proxy's own code; wall-clock
figures stay with ``bench/proxy_bench.py``. This script prints figures; it never asserts on them.

    .venv/bin/python bench/proxy_instructions.py [--requests 1000] [--connections 8] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy_bench as pb  # noqa: E402  (the bench's nginx and port helpers)

VALGRIND = shutil.which("valgrind") or "/usr/bin/valgrind"
CALLGRIND_CONTROL = shutil.which("callgrind_control") or "/usr/bin/callgrind_control"
REQUEST = b"GET /items/7?view=full HTTP/1.1\r\nHost: bench\r\nUser-Agent: instructions\r\nAccept: */*\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


def send(port: int, count: int, connections: int) -> int:
    """``count`` GETs (rounded up to whole rounds) over ``connections`` keep-alive connections, one
    request in flight on each; returns how many were answered."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(connections)]
    answered = 0
    try:
        while answered < count:
            for s in socks:
                s.sendall(REQUEST)
            for s in socks:
                buffer = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError("the proxy closed a connection")
                    buffer += chunk
                    head, sep, body = buffer.partition(b"\r\n\r\n")
                    if sep:
                        length = _CONTENT_LENGTH.search(b"\r\n" + head)
                        if len(body) >= (int(length.group(1)) if length else 0):
                            break
                if not buffer.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"unexpected answer: {buffer[:60]!r}")
                answered += 1
    finally:
        for s in socks:
            s.close()
    return answered


def thread_totals(out_prefix: Path) -> int:
    """Instructions in the dump made after the counters were zeroed, summed over threads."""
    total = 0
    for path in out_prefix.parent.glob(out_prefix.name + ".1*"):
        match = re.search(r"^(?:summary|totals):\s+(\d+)", path.read_text(errors="replace"), re.M)
        if match:
            total += int(match.group(1))
    return total


def measure(name: str, extra: list[str], origin: int, requests: int, connections: int, work: Path) -> float:
    port = pb.free_port()
    out = work / f"callgrind-{name.replace(' ', '-').replace('+', '')}"
    argv = [
        VALGRIND, "--tool=callgrind", f"--callgrind-out-file={out}", "--separate-threads=yes",
        *pb.SHADOWTAP, "proxy", "--listen", f"127.0.0.1:{port}", "--primary", f"http://127.0.0.1:{origin}",
        "--admin", "off", *extra,
    ]  # fmt: skip
    log = (work / f"{out.name}.log").open("w")
    proc = subprocess.Popen(argv, cwd=pb.ROOT, stdout=subprocess.DEVNULL, stderr=log)
    try:
        pb.wait_port(port, timeout_s=180)
        send(port, max(200, requests // 5), connections)  # warm-up: pools, caches, first-time paths
        time.sleep(0.5)
        subprocess.run([CALLGRIND_CONTROL, "-z", str(proc.pid)], check=True, capture_output=True)
        started = time.monotonic()
        answered = send(port, requests, connections)
        elapsed = time.monotonic() - started
        time.sleep(0.3)  # let the copies and the tape batch finish inside the counted window
        subprocess.run([CALLGRIND_CONTROL, "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()
    per_request = thread_totals(out) / answered
    print(f"  {name:<34} {per_request:>12,.0f} instructions/request  ({answered} requests, {elapsed:.1f} s)")
    return per_request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="counted requests per case (default 1000)")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections (default 8)")
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    args = parser.parse_args()
    for tool in (pb.NGINX, VALGRIND, CALLGRIND_CONTROL):
        if not Path(tool).exists():
            print(f"proxy_instructions: {tool} is not installed (scripts/ensure-system-deps.sh nginx valgrind)")
            return 2
    origin, shadow = pb.free_port(), pb.free_port()
    answer = f"location / {{ default_type application/json; return 200 '{pb.BODY}'; }}"
    servers = "".join(f"  server {{ listen 127.0.0.1:{port}; {answer} }}\n" for port in (origin, shadow))
    mirror = ["--shadow", f"v2=http://127.0.0.1:{shadow}", "--sample-percent", "100"]
    figures: dict[str, float] = {}
    print(f"proxy_instructions: callgrind, {args.requests} GETs over {args.connections} connections per case")
    with tempfile.TemporaryDirectory(prefix="shadowtap-instructions-") as tmp:
        work = Path(tmp)
        with pb.nginx(work / "nginx", servers, origin):
            figures["pass-through"] = measure("pass-through", [], origin, args.requests, args.connections, work)
            figures["mirroring"] = measure("mirroring", mirror, origin, args.requests, args.connections, work)
            figures["mirroring+recording"] = measure(
                "mirroring+recording", [*mirror, "--tape", str(work / "tape")], origin, args.requests,
                args.connections, work,
            )  # fmt: skip
    base = figures["pass-through"]
    print()
    print(f"{'case':<24} {'instructions/request':>21} {'x pass-through':>15}")
    for name, value in figures.items():
        print(f"{name:<24} {value:>21,.0f} {value / base:>15.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
