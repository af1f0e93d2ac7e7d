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

With ``--writer-child`` the recording case also counts the tape writer process the proxy starts
(its join and tape encoding, per recorded request), separately from the proxy's own figure.

    .venv/bin/python bench/proxy_instructions.py [--requests 1000] [--connections 8] [--writer-child] [--json OUT]
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


def thread_totals(out_prefix: Path, pid: int | None = None) -> int:
    """Instructions in the dump made after the counters were zeroed, summed over threads (of the
    process ``pid`` when the output names carry pids)."""
    total = 0
    pattern = out_prefix.name + (f".{pid}.1*" if pid is not None else ".1*")
    for path in out_prefix.parent.glob(pattern):
        match = re.search(r"^(?:summary|totals):\s+(\d+)", path.read_text(errors="replace"), re.M)
        if match:
            total += int(match.group(1))
    return total


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the tape writer child, and multiprocessing's helpers)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            children = (task / "children").read_text().split()
            found += map(int, children)
            todo += map(int, children)
    return found


def is_tape_writer(pid: int) -> bool:
    """The tape writer child runs ``python -m shadowtap.recorder.tape_process DIR`` (``recorder.tape_process``
    in trees from before the ``shadowtap.*`` names)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"recorder.tape_process" in cmdline


def tape_writers(pid: int, timeout_s: float) -> list[int]:
    """The tape writer children of the proxy ``pid``, waiting for them to start (under valgrind a
    child's start-up takes tens of seconds) and then to work off the warm-up's backlog."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        writers = [child for child in descendants(pid) if is_tape_writer(child)]
        if writers:
            time.sleep(15.0)
            return writers
        time.sleep(0.5)
    raise RuntimeError("the proxy started no tape writer process")


def measure(
    name: str, extra: list[str], origin: int, requests: int, connections: int, work: Path, children: bool = False
) -> tuple[float, float]:
    """Instructions per request in the proxy process and, with ``children``, in its tape writer."""
    port = pb.free_port()
    out = work / f"callgrind-{name.replace(' ', '-').replace('+', '')}"
    argv = [
        VALGRIND, "--tool=callgrind", "--separate-threads=yes",
        f"--callgrind-out-file={out}.%p" if children else f"--callgrind-out-file={out}",
        *(["--trace-children=yes"] if children else []),
        *pb.SHADOWTAP, "proxy", "--listen", f"127.0.0.1:{port}", "--primary", f"http://127.0.0.1:{origin}",
        "--admin", "off", *extra,
    ]  # fmt: skip
    log = (work / f"{out.name}.log").open("w")
    proc = subprocess.Popen(argv, cwd=pb.ROOT, stdout=subprocess.DEVNULL, stderr=log)
    try:
        pb.wait_port(port, timeout_s=180)
        send(port, max(200, requests // 5), connections)  # warm-up: pools, caches, first-time paths
        time.sleep(0.5)
        writers = tape_writers(proc.pid, timeout_s=180) if children else []
        for pid in (proc.pid, *writers):
            subprocess.run([CALLGRIND_CONTROL, "-z", str(pid)], check=True, capture_output=True)
        started = time.monotonic()
        answered = send(port, requests, connections)
        elapsed = time.monotonic() - started
        # Let the copies and the tape batches finish inside the counted window (the writer child
        # under valgrind runs some 50 times slower than it would).
        time.sleep(5.0 if children else 0.3)
        for pid in (proc.pid, *writers):
            subprocess.run([CALLGRIND_CONTROL, "-d", str(pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()
    per_request = thread_totals(out, proc.pid if children else None) / answered
    child = sum(thread_totals(out, pid) for pid in writers) / answered
    note = f", tape writer child {child:,.0f}" if children else ""
    print(f"  {name:<34} {per_request:>12,.0f} instructions/request  ({answered} requests, {elapsed:.1f} s{note})")
    return per_request, child


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="counted requests per case (default 1000)")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections (default 8)")
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    parser.add_argument(
        "--writer-child", action="store_true",
        help="with recording, also count the tape writer process (valgrind follows the proxy's children)",
    )  # fmt: skip
    args = parser.parse_args()
    for tool in (pb.NGINX, VALGRIND, CALLGRIND_CONTROL):
        if not Path(tool).exists():
            print(f"proxy_instructions: {tool} is not installed (scripts/ensure-system-deps.sh nginx valgrind)")
            return 2
    origin, shadow = pb.free_port(), pb.free_port()
    answer = f"location / {{ default_type application/json; return 200 '{pb.BODY}'; }}"
    servers = "".join(f"  server {{ listen 127.0.0.1:{port}; {answer} }}\n" for port in (origin, shadow))
    # Live diff off (on by default with a shadow): the figures count mirroring and recording alone.
    mirror = ["--shadow", f"v2=http://127.0.0.1:{shadow}", "--sample-percent", "100", "--no-live-diff"]
    figures: dict[str, float] = {}
    print(f"proxy_instructions: callgrind, {args.requests} GETs over {args.connections} connections per case")
    with tempfile.TemporaryDirectory(prefix="shadowtap-instructions-") as tmp:
        work = Path(tmp)
        with pb.nginx(work / "nginx", servers, origin):
            figures["pass-through"], _ = measure("pass-through", [], origin, args.requests, args.connections, work)
            figures["mirroring"], _ = measure("mirroring", mirror, origin, args.requests, args.connections, work)
            figures["mirroring+recording"], child = measure(
                "mirroring+recording", [*mirror, "--tape", str(work / "tape")], origin, args.requests,
                args.connections, work, children=args.writer_child,
            )  # fmt: skip
            if args.writer_child:
                figures["tape writer child"] = child
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
