"""Proxy speed and isolation: shadowtap against direct access and nginx, all measured in one run.

A fast upstream (nginx, 1 worker, a 60-byte JSON ``return``) is hit with ``wrk -t1 -c32`` directly,
through nginx ``proxy_pass`` and nginx ``mirror`` (1 worker each), and through ``shadowtap proxy``
(pass-through with 1 and 2 workers, mirroring, mirroring + recording), and through the naive
aiohttp.web proxy DESIGN.md calibrates its budgets with (``bench/naive_proxy.py``). Each figure is printed with its
ratio to a direct run made right before it, because absolute numbers on a shared 2-core machine move
from minute to minute. Then a
paced open-loop client sends a fixed 1,000 requests/s to measure added latency (p50/p99 against
direct) and isolation: the primary's latency with the shadow healthy, 10x slower (a delay of ten
times the direct p50 or more), and black-holed (accepts, never answers), for shadowtap and for nginx
``mirror``. The budget nearest its bound (mirror + record against nginx ``mirror``) is measured
again in ``--pairs`` interleaved pairs, and the median pair ratio is printed with every pair's. This
script prints figures; it never asserts on them.

    .venv/bin/python bench/proxy_bench.py [--duration 8] [--paced-duration 5] [--rate 1000] [--repeat 2]
                                          [--pairs 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SHADOWTAP = [PYTHON, "-m", "shadowtap"]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
BODY = '{"status":"ok","service":"shadowtap-bench","payload":"abcdef"}'  # 60 bytes

NAIVE_PASS = "naive aiohttp.web proxy, pass-through"
NAIVE_MIRROR = "naive aiohttp.web proxy, mirroring"
#: DESIGN.md's reference machine: the naive aiohttp.web design at ~2.1k and ~1.2k req/s against
#: 35-39k direct (midpoint 37k).
REFERENCE_NAIVE_PASS = 2100 / 37000
REFERENCE_NAIVE_MIRROR = 1200 / 37000

#: The slow shadow's delay: ten times a loopback nginx answer (~0.1-0.5 ms here) or more.
SLOW_SHADOW_DELAY_S = 0.005


def interpreter() -> str:
    """Which Python runs shadowtap here, and whether its libpython is a shared library: builds with
    one (pyenv's default) spend about a fifth more CPU on the data path (scripts/pick-python)."""
    with open("/proc/self/maps") as maps:
        shared = "/libpython3" in maps.read()
    build = "libpython shared (--enable-shared build)" if shared else "libpython linked in"
    # Asked the way the proxy processes start (same tree, same environment): compiled or not.
    data_path = subprocess.run(
        [PYTHON, "-c", "import shadowtap.proxy; from shadowtap.wire import native; print(native.STATUS)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"python {sys.version.split()[0]} at {sys.executable}, {build}\n  data path: {data_path or 'unknown'}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


# --- processes -------------------------------------------------------------------------------------


def nginx_config(workdir: Path, servers: str) -> Path:
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  keepalive_requests 1000000;
{servers}
}}
"""
    )
    return conf


@contextlib.contextmanager
def process(argv: list[str], ready_port: int | None = None, **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
    try:
        if ready_port is not None:
            wait_port(ready_port)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def nginx(workdir: Path, servers: str, port: int) -> Iterator[None]:
    workdir.mkdir(parents=True, exist_ok=True)
    conf = nginx_config(workdir, servers)
    with process([NGINX, "-c", str(conf), "-p", str(workdir)], ready_port=port, stderr=subprocess.DEVNULL):
        yield


@contextlib.contextmanager
def shadowtap_proxy(
    port: int, primary: int, extra: list[str], admin_port: int | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    argv = [*SHADOWTAP, "proxy", "--listen", f"127.0.0.1:{port}", "--primary", f"http://127.0.0.1:{primary}"]
    argv += ["--admin", "off" if admin_port is None else f"127.0.0.1:{admin_port}", *extra]
    with process(argv, ready_port=port, cwd=ROOT, stdout=subprocess.DEVNULL) as proc:
        yield proc


@contextlib.contextmanager
def misbehaving_shadows(slow_port: int, blackhole_port: int) -> Iterator[None]:
    argv = [PYTHON, __file__, "--serve-shadows", str(slow_port), str(blackhole_port), str(SLOW_SHADOW_DELAY_S)]
    with process(argv, ready_port=slow_port):
        wait_port(blackhole_port)
        yield


async def serve_shadows(slow_port: int, blackhole_port: int, delay_s: float) -> None:
    """A shadow that answers after ``delay_s`` and one that accepts and never answers."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(BODY),
        BODY.encode(),
    )

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if length:
                    await reader.readexactly(int(length.group(1)))
                await asyncio.sleep(delay_s)
                writer.write(answer)
        writer.close()

    async def blackhole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        writer.close()

    slow_server = await asyncio.start_server(slow, "127.0.0.1", slow_port, backlog=4096)
    hole_server = await asyncio.start_server(blackhole, "127.0.0.1", blackhole_port, backlog=4096)
    async with slow_server, hole_server:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


# --- load generators -------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    #: Direct throughput measured right before this case (the load from other work drifts).
    direct_requests_per_s: float = 0.0
    #: CPU time (user + system, all its processes) the proxy under test spent per request, in us;
    #: disturbed far less by other work on the machine than throughput is. 0 when not measured.
    cpu_us_per_request: float = 0.0
    #: Of the requests the proxy answered: the share whose copy the shadow answered, and the share
    #: written to the tape (from the proxy's /metrics after the run; -1 when not measured). A proxy
    #: that kept up by dropping copies would show it here.
    mirrored_share: float = -1.0
    taped_share: float = -1.0

    @property
    def ratio(self) -> float:
        return self.requests_per_s / self.direct_requests_per_s if self.direct_requests_per_s else 1.0


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


_METRIC_LINE = re.compile(r"^(shadowtap_[a-z_]+)(\{[^}]*\})?\s+([0-9.e+]+)$", re.M)


def delivery_shares(result: Result, admin_port: int) -> None:
    """Fill ``result``'s mirrored and taped shares from the proxy's Prometheus metrics."""
    time.sleep(0.5)  # the last copies, joins and the tape batch
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    requests = mirrored_ok = taped = 0.0
    for name, labels, value in _METRIC_LINE.findall(text):
        if name == "shadowtap_proxy_requests_total":
            requests += float(value)
        elif name == "shadowtap_mirror_outcomes_total" and 'outcome="ok"' in labels:
            mirrored_ok += float(value)
        elif name == "shadowtap_tape_writes_total":
            taped += float(value)
    if requests:
        result.mirrored_share = mirrored_ok / requests
        result.taped_share = taped / requests if "shadowtap_tape_writes_total" in text else -1.0
    taped_text = f", written to the tape {result.taped_share:.1%}" if result.taped_share >= 0 else ""
    print(f"      of {requests:,.0f} requests: copy answered by the shadow {result.mirrored_share:.1%}{taped_text}")


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (``--workers`` children), from /proc."""
    total_ticks = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            # Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            total_ticks += int(fields[11]) + int(fields[12])
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
    return total_ticks / os.sysconf("SC_CLK_TCK")


def run_wrk(
    name: str,
    port: int,
    duration_s: int,
    baseline_port: int | None = None,
    baseline_s: int = 3,
    cpu_pid: int | None = None,
) -> Result:
    """One wrk run; with ``baseline_port`` a short direct run right before gives its ratio, with
    ``cpu_pid`` the CPU that process (and its children) spent per request is measured."""
    direct = run_wrk("direct (adjacent baseline)", baseline_port, baseline_s) if baseline_port else None
    cpu_before_s = process_tree_cpu_s(cpu_pid) if cpu_pid is not None else 0.0
    out = subprocess.run(
        [WRK, "-t1", "-c32", f"-d{duration_s}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu_s = process_tree_cpu_s(cpu_pid) - cpu_before_s if cpu_pid is not None else 0.0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors:.*?timeout (\d+)"):
        found = re.search(pattern, out)
        if found:
            errors += int(found.group(1))
    cpu_us = cpu_s * 1e6 / requests if requests else 0.0
    result = Result(name, rps, p50, p99, errors, direct.requests_per_s if direct else rps, cpu_us)
    cpu_text = f"  cpu {cpu_us:5.1f} us/req" if cpu_pid is not None else ""
    print(
        f"  wrk {name:<42} {rps:>9,.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  x direct {result.ratio:.3f}"
        + cpu_text,
        flush=True,
    )
    return result


def paced(name: str, port: int, rate_per_s: float, duration_s: float, repeat: int, connections: int = 16) -> Result:
    """Open loop at ``rate_per_s``: request i is due at t0 + i/rate; latency counts from when it was
    due (so a stalled proxy cannot hide its queueing). Runs in a child process, ``repeat`` times; the
    run with the lowest p99 is kept (as timeit keeps its best), since other work on a shared machine
    only ever adds latency. Every case gets the same treatment, nginx and direct included."""
    runs: list[Result] = []
    for _ in range(repeat):
        out = subprocess.run(
            [PYTHON, __file__, "--paced", str(port), str(rate_per_s), str(duration_s), str(connections)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        data = json.loads(out)
        runs.append(Result(name, data["rate"], data["p50_ms"], data["p99_ms"], int(data["errors"])))
    result = min(runs, key=lambda r: r.p99_ms)
    all_p99 = ", ".join(f"{r.p99_ms:.2f}" for r in runs)
    print(
        f"  paced {name:<40} {result.requests_per_s:>6,.0f} req/s  p50 {result.p50_ms:6.3f} ms"
        f"  p99 {result.p99_ms:7.3f} ms (runs: {all_p99})  errors {result.errors}",
        flush=True,
    )
    return result


async def paced_client(port: int, rate_per_s: float, duration_s: float, connections: int) -> dict[str, float]:
    count = int(rate_per_s * duration_s)
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    latencies_ms: list[float] = []
    errors = 0
    clock = time.perf_counter  # uvloop's loop.time() has millisecond resolution
    t0 = clock() + 0.2
    # Bounded: a proxy that stalls (nginx mirror with a black-holed shadow) must not stall the bench.
    hard_deadline = t0 + duration_s + 3.0

    async def worker(k: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in range(k, count, connections):
                due = t0 + i / rate_per_s
                if due >= hard_deadline:
                    return
                delay = due - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(request)
                try:
                    async with asyncio.timeout(max(0.0, hard_deadline - clock())):
                        head = await reader.readuntil(b"\r\n\r\n")
                        length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                        await reader.readexactly(int(length.group(1)) if length else 0)
                except TimeoutError:
                    # Count this and every later request of this connection as lost: their latency
                    # is at least the time left to the deadline.
                    lost = range(i, count, connections)
                    latencies_ms.extend((hard_deadline - (t0 + j / rate_per_s)) * 1000.0 for j in lost)
                    errors += len(lost)
                    return
                latencies_ms.append((clock() - due) * 1000.0)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
        finally:
            writer.close()

    started = clock()
    await asyncio.gather(*(worker(k) for k in range(connections)))
    elapsed = clock() - started
    latencies_ms.sort()
    return {
        "rate": len(latencies_ms) / elapsed,
        "p50_ms": latencies_ms[len(latencies_ms) // 2],
        "p99_ms": latencies_ms[int(len(latencies_ms) * 0.99)],
        "errors": float(errors),
    }


# --- the benchmark ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    parser.add_argument("--paced-duration", type=float, default=5.0, help="seconds per paced run (default 5)")
    parser.add_argument("--rate", type=float, default=1000.0, help="paced requests/s (default 1000)")
    parser.add_argument("--repeat", type=int, default=2, help="paced runs per case, best p99 kept (default 2)")
    parser.add_argument(
        "--pairs",
        type=int,
        default=3,
        help="extra interleaved nginx mirror / shadowtap mirror+record runs for that budget (default 3)",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    parser.add_argument(
        "--serve-shadows", nargs=3, metavar=("SLOW_PORT", "HOLE_PORT", "DELAY_S"), help=argparse.SUPPRESS
    )
    parser.add_argument("--paced", nargs=4, metavar=("PORT", "RATE", "SECONDS", "CONNS"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve_shadows:
        import uvloop

        slow, hole, delay = args.serve_shadows
        uvloop.run(serve_shadows(int(slow), int(hole), float(delay)))
        return 0
    if args.paced:
        import uvloop

        port, rate, seconds, conns = args.paced
        print(json.dumps(uvloop.run(paced_client(int(port), float(rate), float(seconds), int(conns)))))
        return 0

    for tool in (NGINX, WRK):
        if not Path(tool).exists():
            print(f"proxy_bench: {tool} is not installed (scripts/ensure-system-deps.sh nginx wrk)", file=sys.stderr)
            return 2

    ports = {name: free_port() for name in ("origin", "shadow", "nginx_proxy", "nginx_mirror", "slow", "hole")}
    ports.update({name: free_port() for name in ("nginx_mirror_slow", "nginx_mirror_hole", "tap", "admin", "naive")})
    wrk_results: list[Result] = []
    paced_results: list[Result] = []
    pairs: list[tuple[Result, Result]] = []
    with tempfile.TemporaryDirectory(prefix="shadowtap-bench-") as tmp:
        work = Path(tmp)
        origin_servers = f"""
  server {{ listen 127.0.0.1:{ports["origin"]}; location / {{ default_type application/json; return 200 '{BODY}'; }} }}
  server {{ listen 127.0.0.1:{ports["shadow"]}; location / {{ default_type application/json; return 200 '{BODY}'; }} }}
"""

        def mirror_server(port: int, shadow_port: int) -> str:
            return f"""
  upstream shadow_{port} {{ server 127.0.0.1:{shadow_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ mirror /mirror; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://origin; }}
    location = /mirror {{
      internal; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_connect_timeout 1s; proxy_read_timeout 1s; proxy_pass http://shadow_{port}$request_uri;
    }}
  }}"""

        proxy_servers = f"""
  upstream origin {{ server 127.0.0.1:{ports["origin"]}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{ports["nginx_proxy"]};
    location / {{ proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://origin; }}
  }}
{mirror_server(ports["nginx_mirror"], ports["shadow"])}
{mirror_server(ports["nginx_mirror_slow"], ports["slow"])}
{mirror_server(ports["nginx_mirror_hole"], ports["hole"])}
"""
        # Live diff (on by default with a shadow) is measured by bench/live_diff_bench.py: off here, so
        # these figures are mirroring's and recording's own, beside nginx mirror which compares nothing.
        live_off = ["--no-live-diff"]
        shadow = ["--shadow", f"v2=http://127.0.0.1:{ports['shadow']}", "--sample-percent", "100", *live_off]
        slow_shadow = ["--shadow", f"v2=http://127.0.0.1:{ports['slow']}", "--sample-percent", "100", *live_off]
        hole_shadow = ["--shadow", f"v2=http://127.0.0.1:{ports['hole']}", "--sample-percent", "100", *live_off]
        shadow_timeout = ["--shadow-timeout", "1"]

        def tape(name: str) -> list[str]:
            return ["--tape", str(work / f"tape-{name}")]

        print(f"proxy_bench: wrk -t1 -c32 -d{args.duration}s, paced {args.rate:g} req/s x {args.paced_duration:g} s")
        print(f"  cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f} (shared machine: ratios matter)")
        print(f"  {interpreter()}")
        tap = ports["tap"]
        with (
            nginx(work / "origin", origin_servers, ports["origin"]),
            misbehaving_shadows(ports["slow"], ports["hole"]),
            nginx(work / "proxy", proxy_servers, ports["nginx_proxy"]),
        ):
            print("throughput (wrk):")
            origin = ports["origin"]

            def measure(
                name: str, port: int, proc: subprocess.Popen[bytes] | None = None, admin: int | None = None
            ) -> None:
                pid = None if proc is None else proc.pid
                wrk_results.append(run_wrk(name, port, args.duration, baseline_port=origin, cpu_pid=pid))
                if admin is not None:
                    delivery_shares(wrk_results[-1], admin)

            wrk_results.append(run_wrk("direct", origin, args.duration))
            measure("nginx proxy_pass (1 worker)", ports["nginx_proxy"])
            measure("nginx mirror (1 worker)", ports["nginx_mirror"])
            # DESIGN.md's reference design, for calibrating this machine against the reference one.
            naive = [PYTHON, str(ROOT / "bench" / "naive_proxy.py"), str(ports["naive"]), f"http://127.0.0.1:{origin}"]
            with process(naive, ready_port=ports["naive"]) as proc:
                measure(NAIVE_PASS, ports["naive"], proc)
            naive_mirror_argv = [*naive, "--shadow", f"http://127.0.0.1:{ports['shadow']}"]
            with process(naive_mirror_argv, ready_port=ports["naive"]) as proc:
                measure(NAIVE_MIRROR, ports["naive"], proc)
            with shadowtap_proxy(tap, ports["origin"], []) as proc:
                measure("shadowtap pass-through (1 process)", tap, proc)
            with shadowtap_proxy(tap, ports["origin"], ["--workers", "2"]) as proc:
                time.sleep(0.5)  # both workers listening before the load starts
                measure("shadowtap pass-through (--workers 2)", tap, proc)
            admin = ports["admin"]
            with shadowtap_proxy(tap, ports["origin"], shadow, admin) as proc:
                measure("shadowtap mirroring (1 process)", tap, proc, admin)
            with shadowtap_proxy(tap, ports["origin"], shadow + tape("wrk"), admin) as proc:
                measure("shadowtap mirroring+recording (1 process)", tap, proc, admin)
            slow_args = slow_shadow + shadow_timeout + tape("wrk-slow")
            with shadowtap_proxy(tap, ports["origin"], slow_args, admin) as proc:
                measure("shadowtap mirror+record, shadow 10x slower", tap, proc, admin)
            measure("nginx mirror, shadow 10x slower", ports["nginx_mirror_slow"])

            # The budget that sits closest to 1 gets more than one sample: each pair runs nginx
            # mirror, then shadowtap mirror+record, each after its own direct baseline, so a slow
            # minute of the machine lands on both sides of a pair rather than on one figure.
            if args.pairs > 0:
                print(f"mirror + record against nginx mirror, {args.pairs} interleaved pairs:")
            for i in range(args.pairs):
                nginx_run = run_wrk(f"pair {i + 1}: nginx mirror", ports["nginx_mirror"], args.duration, origin)
                with shadowtap_proxy(tap, ports["origin"], shadow + tape(f"pair-{i}"), admin) as proc:
                    tap_run = run_wrk(
                        f"pair {i + 1}: shadowtap mirror+record", tap, args.duration, origin, cpu_pid=proc.pid
                    )
                    delivery_shares(tap_run, admin)
                pairs.append((nginx_run, tap_run))

            print(f"latency at a fixed {args.rate:g} req/s (paced, open loop, from the intended send time):")
            dur = args.paced_duration
            paced_results.append(paced("direct", ports["origin"], args.rate, dur, args.repeat))
            with shadowtap_proxy(tap, ports["origin"], []):
                paced_results.append(paced("shadowtap pass-through", tap, args.rate, dur, args.repeat))
            with shadowtap_proxy(tap, ports["origin"], shadow + tape("paced")):
                paced_results.append(paced("shadowtap mirror+record, shadow healthy", tap, args.rate, dur, args.repeat))
            with shadowtap_proxy(tap, ports["origin"], slow_shadow + shadow_timeout + tape("paced-slow")):
                paced_results.append(
                    paced("shadowtap mirror+record, shadow 10x slower", tap, args.rate, dur, args.repeat)
                )
            with shadowtap_proxy(tap, ports["origin"], hole_shadow + shadow_timeout + tape("paced-hole")):
                paced_results.append(
                    paced("shadowtap mirror+record, shadow black-holed", tap, args.rate, dur, args.repeat)
                )
            paced_results.append(
                paced("nginx mirror, shadow healthy", ports["nginx_mirror"], args.rate, dur, args.repeat)
            )
            paced_results.append(
                paced("nginx mirror, shadow 10x slower", ports["nginx_mirror_slow"], args.rate, dur, args.repeat)
            )
            paced_results.append(
                paced("nginx mirror, shadow black-holed", ports["nginx_mirror_hole"], args.rate, dur, args.repeat)
            )

    print()
    print(
        f"{'throughput (wrk -t1 -c32)':<46} {'req/s':>9} {'direct':>9} {'x direct':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'errors':>7} {'cpu us/req':>10}"
    )
    for r in wrk_results:
        cpu = f"{r.cpu_us_per_request:>10.1f}" if r.cpu_us_per_request else f"{'':>10}"
        print(
            f"{r.name:<46} {r.requests_per_s:>9,.0f} {r.direct_requests_per_s:>9,.0f} {r.ratio:>9.3f}"
            f" {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>7} {cpu}"
        )
    paced_direct = paced_results[0]
    print()
    title = f"latency at {args.rate:g} req/s"
    print(f"{title:<46} {'p50 ms':>8} {'+p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for r in paced_results:
        added = r.p50_ms - paced_direct.p50_ms
        print(f"{r.name:<46} {r.p50_ms:>8.3f} {added:>+8.3f} {r.p99_ms:>8.3f} {r.errors:>7}")
    by_name = {r.name: r for r in wrk_results}
    tap1 = by_name["shadowtap pass-through (1 process)"]
    tap2 = by_name["shadowtap pass-through (--workers 2)"]
    full = by_name["shadowtap mirroring+recording (1 process)"]
    nginx_mirror = by_name["nginx mirror (1 worker)"]
    paced_by = {r.name: r for r in paced_results}
    healthy = paced_by["shadowtap mirror+record, shadow healthy"]
    print()
    nginx_pass = by_name["nginx proxy_pass (1 worker)"]
    print("budgets (DESIGN.md):")
    print(
        f"  pass-through / nginx proxy_pass >= 1 (goal 1.3): {tap1.ratio / nginx_pass.ratio:.2f}x (both x direct),"
        f" {tap1.requests_per_s / nginx_pass.requests_per_s:.2f}x in req/s; {tap1.ratio:.3f} x direct"
    )
    naive_pass, naive_mirror = by_name[NAIVE_PASS], by_name[NAIVE_MIRROR]
    print(
        f"    calibration: naive aiohttp.web here {naive_pass.ratio:.3f} (pass) / {naive_mirror.ratio:.3f} (mirror)"
        f" x direct, on the reference machine {REFERENCE_NAIVE_PASS:.3f} / {REFERENCE_NAIVE_MIRROR:.3f};"
        f" shadowtap pass-through = {tap1.requests_per_s / naive_pass.requests_per_s:.1f}x naive"
        f" (the budget asks {0.20 / REFERENCE_NAIVE_PASS:.1f}x on the reference machine)"
    )
    added_p50 = paced_by["shadowtap pass-through"].p50_ms - paced_direct.p50_ms
    print(f"  added p50 <= 1 ms at {args.rate:g} req/s:          {added_p50:+.3f} ms")
    print(f"  --workers 2 / 1 process (x direct):       {tap2.ratio / tap1.ratio:.2f}x")
    print(f"  mirror+record / nginx mirror >= 1.3 (goal 2): {full.ratio / nginx_mirror.ratio:.2f}x (both x direct)")
    if pairs:
        # Both views: x direct corrects for the machine's speed at each run (through a short direct
        # run of its own, itself noisy); plain req/s compares runs a few seconds apart.
        by_direct = [t.ratio / n.ratio for n, t in pairs]
        by_rate = [t.requests_per_s / n.requests_per_s for n, t in pairs]
        print(
            f"    {len(pairs)} interleaved pairs: median {statistics.median(by_direct):.2f}x x direct"
            f" ({', '.join(f'{r:.2f}' for r in by_direct)}), median {statistics.median(by_rate):.2f}x in req/s"
            f" ({', '.join(f'{r:.2f}' for r in by_rate)})"
        )
    for case in ("shadow 10x slower", "shadow black-holed"):
        r = paced_by[f"shadowtap mirror+record, {case}"]
        print(
            f"  primary p99, {case:<19} / healthy <= 1.10: {r.p99_ms / healthy.p99_ms:.2f}"
            f"  (/ pass-through: {r.p99_ms / paced_by['shadowtap pass-through'].p99_ms:.2f})"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "wrk": [{**asdict(r), "ratio": r.ratio} for r in wrk_results],
                    "paced": [asdict(r) for r in paced_results],
                    "pairs": [[{**asdict(r), "ratio": r.ratio} for r in pair] for pair in pairs],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
