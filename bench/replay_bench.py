"""Replayer benchmark: unpaced throughput and CPU, then paced CPU and start lag from 250/s to 20,000/s.

Against a fast server in its own process on loopback (nginx, one worker, a 60-byte JSON, when
``/usr/sbin/nginx`` exists; else a small asyncio server), through the real ``shadowtap replay`` CLI
with ``--no-progress`` and 64 connections, in one run:

1. the fixed cost of a replay (start-up, opening the tape, the report): the median of one-request
   replays made at the start and before each paced run;
2. the maximum rate of one process unpaced (``--speed 0``) and its CPU per request;
3. paced (``--rate R``) at 250, 1,000, 2,000, 10,000 and 20,000 requests/s for a few seconds each
   (at least 2,000 requests, so the slow rates run longer): CPU per request beside the unpaced
   figure, start-lag p50/p99, the rate achieved, and (at 2,000/s) the cumulative drift; then
   2,000/s once more from a tape as a sidecar records it (each request with three header fields
   and its primary's recorded 1.6 KB JSON answer, which the replay decodes with it);
4. the floor of the machine: a plain Python loop on ``time.sleep``, no event loop (what a wake-up
   costs here at all); a bare loop woken by the same timer and due queue at the same rates,
   sending nothing (the wake-up cost and the lag the machine allows at best); the smallest paced
   client, that loop writing prepared requests on 64 keep-alive connections and only counting the
   answers (what any client on this event loop pays a request here); and the same loop
   running a fixed piece of Python work per request, beside that work's cost back to back in the
   same process (what this machine charges for work done in short bursts between sleeps);
5. with ``--reference``: ``wrk`` closed loop (one thread, 64 connections) and ``--workers 2``;
6. with ``--http2`` (nginx only: its h2c listener, ``listen ... http2`` without TLS): the same tape
   replayed to an ``h2c://`` target, streams multiplexed over the default 4 connections, unpaced
   and paced at 2,000/s, beside the HTTP/1.1 figures of the same run (``--http2-only`` skips the
   HTTP/1.1 paced runs and the floor).

CPU per request is the CLI's CPU time (``getrusage`` of the child) less the fixed cost, over the
requests it sent; the raw figure is printed beside it. Sleeps per request are the CLI's voluntary
context switches over the requests it sent: each is one wake-up of the process (the timer's, or an
answer's), the part of a paced request's CPU that is the machine's, not the work's; the floor prints
its own. The load average after the runs is printed with them. Each paced run is repeated ``--repeat`` times
and printed as the median with the spread (min..max), because the machine is shared. Usage::

    .venv/bin/python bench/replay_bench.py [--seconds 3] [--repeat 2] [--requests 40000] [--reference]
                                           [--server auto|nginx|asyncio] [--http2 | --http2-only]

It must never leave the server running: it is stopped whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shadowtap.recorder import Exchange, Request, SyncTapeWriter, TapeOptions
from shadowtap.recorder.model import Response

RATES = (250, 1_000, 2_000, 10_000, 20_000)
#: The rate of the drift line and of the HTTP/2 paced run.
MAIN_RATE = 2_000
#: Fewest requests in a paced run: the fixed cost's spread (tens of ms) over fewer would drown a
#: slow rate's figure.
MIN_PACED_REQUESTS = 2_000
BODY = '{"id":12345,"name":"shadowtap","ok":true,"tags":["a","b"],"n":1}'

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
            return 200 '{body}';
        }}
    }}
    server {{
        listen 127.0.0.1:{h2_port} http2;
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""

# The fallback target: keep-alive HTTP/1.1, every request answered at once with the same JSON.
ASYNCIO_SERVER = """
import asyncio, sys
import uvloop
BODY = sys.argv[2].encode()
HEAD = b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n"
ANSWER = HEAD % len(BODY) + BODY
class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        count = self.buffer.count(b"\\r\\n\\r\\n")
        if count:
            self.buffer = self.buffer[self.buffer.rindex(b"\\r\\n\\r\\n") + 4 :]
            self.transport.write(ANSWER * count)
async def main():
    server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()
uvloop.run(main())
"""

# A bare wake loop: the DueQueue and wake timer the runner uses, at one rate, sending nothing; with
# "work", each released item runs a fixed piece of Python work (six decodes of a small JSON
# document, about a request's unpaced CPU), also timed back to back in the same process, so the two
# say what running it in short bursts costs on this machine.
FLOOR = """
import asyncio, json, resource, sys, time
import uvloop
from shadowtap.replayer.pacer import DueQueue, make_wake_timer
from shadowtap.replayer.runner import RunnerSettings
rate, seconds, with_work = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "work"
DOC = json.dumps({"id": 12345, "name": "shadowtap", "tags": list(range(20)), "nested": {"a": [1.5, "x"] * 8}})
def work():
    for _ in range(6):
        json.loads(DOC)
def cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
start = cpu_s()
for _ in range(2000):
    work()
hot_us = (cpu_s() - start) / 2000 * 1e6 if with_work else 0.0
async def main():
    loop = asyncio.get_running_loop()
    settings = RunnerSettings()
    queue = DueQueue(int(settings.batch_window_s * 1e9), int(settings.min_batch_window_s * 1e9))
    count = int(rate * seconds)
    t0 = time.monotonic_ns() + 20_000_000
    for i in range(count):
        queue.push(t0 + i * 1_000_000_000 // rate, i)
    lags = []
    done = loop.create_future()
    def wake():
        now = time.monotonic_ns()
        released = queue.pop_due(now)
        lags.extend(now - due for due, _ in released)
        if with_work:
            for _ in released:
                work()
        wake_ns = queue.wake_ns()
        if wake_ns is None:
            done.set_result(None)
        else:
            timer.arm(wake_ns)
    timer = make_wake_timer(loop, wake)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    timer.arm(queue.wake_ns())
    await done
    after = resource.getrusage(resource.RUSAGE_SELF)
    timer.close()
    lags.sort()
    cpu_us = (after.ru_utime + after.ru_stime - cpu) / count * 1e6
    sleeps = (after.ru_nvcsw - usage.ru_nvcsw) / count
    print(cpu_us, lags[len(lags) // 2] / 1e6, lags[int(len(lags) * 0.99)] / 1e6, sleeps, hot_us)
uvloop.run(main())
"""

# A plain sleep loop, no event loop: time.sleep to absolute deadlines, one wake-up per tick (what
# sleeping and waking costs this machine at all, below any loop or timer of ours).
SLEEP = """
import resource, sys, time
rate, seconds = int(sys.argv[1]), float(sys.argv[2])
count = int(rate * seconds)
usage = resource.getrusage(resource.RUSAGE_SELF)
deadline = time.monotonic()
for _ in range(count):
    deadline += 1 / rate
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)
after = resource.getrusage(resource.RUSAGE_SELF)
cpu_us = (after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime) / count * 1e6
print(cpu_us, (after.ru_nvcsw - usage.ru_nvcsw) / count)
"""

# The smallest paced HTTP/1.1 client: the same timer and due queue, 64 keep-alive connections,
# each request's bytes made before the run, each answer only counted (the target's fixed body
# length). What a paced request costs on this machine with sockets and no replayer: the wake-ups,
# the system calls and the loop's own work.
CLIENT = """
import asyncio, resource, sys, time
import uvloop
from shadowtap.replayer.pacer import DueQueue, make_wake_timer
from shadowtap.replayer.runner import RunnerSettings
rate, seconds, port, body_bytes = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
REQUESTS = [b"GET /items/%d?q=%d HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nAccept: application/json\\r\\n\\r\\n" % (i % 500, i)
            for i in range(1000)]
idle = []
waiting = []  # requests due while every connection had one in flight (a stall): sent as one frees
state = {"done": 0}
class Answer(asyncio.Protocol):
    def __init__(self):
        self.buffer = b""
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.buffer += data
        head = self.buffer.find(b"\\r\\n\\r\\n")
        if head >= 0 and len(self.buffer) >= head + 4 + body_bytes:
            self.buffer = self.buffer[head + 4 + body_bytes:]
            if waiting:
                self.transport.write(REQUESTS[waiting.pop() % 1000])
            else:
                idle.append(self)
            state["done"] += 1
            if state["done"] == state["count"]:
                state["finished"].set_result(None)
async def main():
    loop = asyncio.get_running_loop()
    for _ in range(64):
        _, answer = await loop.create_connection(Answer, "127.0.0.1", port)
        idle.append(answer)
    settings = RunnerSettings()
    queue = DueQueue(int(settings.batch_window_s * 1e9), int(settings.min_batch_window_s * 1e9))
    count = state["count"] = int(rate * seconds)
    state["finished"] = loop.create_future()
    t0 = time.monotonic_ns() + 20_000_000
    for i in range(count):
        queue.push(t0 + i * 1_000_000_000 // rate, i)
    def wake():
        for _, i in queue.pop_due(time.monotonic_ns()):
            if idle:
                idle.pop().transport.write(REQUESTS[i % 1000])
            else:
                waiting.append(i)
        wake_ns = queue.wake_ns()
        if wake_ns is not None:
            timer.arm(wake_ns)
    timer = make_wake_timer(loop, wake)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    timer.arm(queue.wake_ns())
    await state["finished"]
    after = resource.getrusage(resource.RUSAGE_SELF)
    timer.close()
    cpu_us = (after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime) / count * 1e6
    print(cpu_us, (after.ru_nvcsw - usage.ru_nvcsw) / count)
uvloop.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def paced_requests(rate: int, seconds: float) -> int:
    return max(int(rate * seconds), MIN_PACED_REQUESTS)


#: A recorded answer as a sidecar writes one: a 1.6 KB JSON body and six header fields.
RECORDED_BODY = json.dumps(
    {"id": 1, "items": [{"sku": f"s{i}", "price": i * 1.5, "name": "widget " * 3} for i in range(25)]}
).encode()


def write_tape(directory: Path, count: int, spacing_us: int, recorded: bool = False) -> None:
    """``count`` GETs ``spacing_us`` apart; with ``recorded``, each with three request header fields
    and the primary's recorded answer (``RECORDED_BODY``), as a sidecar's tape has them."""
    base = 1_700_000_000 * 10**9
    with SyncTapeWriter(directory, TapeOptions(redaction=None)) as writer:
        for i in range(count):
            headers: tuple[tuple[bytes, bytes], ...] = ((b"Accept", b"application/json"),)
            primary = None
            if recorded:
                headers = (*headers, (b"User-Agent", b"curl/8.5.0"), (b"Cookie", b"session=s%d" % i))
                primary = Response(
                    200,
                    "OK",
                    ((b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(RECORDED_BODY)),
                     (b"Date", b"Sat, 05 Dec 2026 16:20:00 GMT"), (b"Server", b"nginx"),
                     (b"Cache-Control", b"no-cache"), (b"X-Request-Id", b"r%d" % i)),  # fmt: skip
                    RECORDED_BODY,
                    "1.1",
                    None,
                )
            request = Request("GET", f"/items/{i % 500}?q={i}", headers)
            started_at_ns = base + i * spacing_us * 1000
            writer.write(Exchange(id=f"b{i}", started_at_ns=started_at_ns, request=request, primary=primary))


@contextmanager
def target_server(tmp: Path, kind: str) -> Iterator[tuple[str, str, str | None]]:
    """(URL, description, h2c:// URL or None) of the target, in its own process, stopped on the way out."""
    port = free_port()
    h2_url = None
    if kind == "nginx" or (kind == "auto" and Path("/usr/sbin/nginx").exists()):
        h2_port = free_port()
        h2_url = f"h2c://127.0.0.1:{h2_port}"
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=port, h2_port=h2_port, body=BODY))
        process = subprocess.Popen(["/usr/sbin/nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)])
        description = "nginx (1 worker)"
    else:
        process = subprocess.Popen([sys.executable, "-c", ASYNCIO_SERVER, str(port), BODY])
        description = "asyncio + uvloop server"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", description, h2_url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _children_usage() -> tuple[float, int]:
    """CPU seconds and voluntary context switches (the times a process went to sleep, each one a
    wake-up later) of the finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime, usage.ru_nvcsw


def replay(tape: Path, url: str, out: Path, *flags: str) -> dict[str, Any]:
    """Run the CLI; the document gets ``cpu_s``: CPU seconds of the replay and its workers, and
    ``sleeps``: how many times they went to sleep."""
    cmd = [sys.executable, "-m", "shadowtap", "replay", str(tape), "--target", url, "--json", str(out), "--no-progress"]
    cpu_before_s, sleeps_before = _children_usage()
    subprocess.run([*cmd, "--connections", "64", *flags], check=True, stdout=subprocess.DEVNULL, timeout=600)
    document: dict[str, Any] = json.loads(out.read_text())
    cpu_after_s, sleeps_after = _children_usage()
    document["cpu_s"] = cpu_after_s - cpu_before_s
    document["sleeps"] = sleeps_after - sleeps_before
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


def floor(rate: int, seconds: float, work: bool = False) -> tuple[float, float, float, float, float]:
    """(CPU us per request, lag p50 ms, lag p99 ms, sleeps per request, the work's CPU us back to back
    or 0) of the bare wake loop at ``rate``, doing the fixed work per request when ``work``."""
    out = subprocess.run(
        [sys.executable, "-c", FLOOR, str(rate), str(seconds), "work" if work else "bare"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    cpu_us, p50_ms, p99_ms, sleeps, hot_us = (float(v) for v in out.stdout.split())
    return cpu_us, p50_ms, p99_ms, sleeps, hot_us


def sleep_loop(rate: int, seconds: float) -> tuple[float, float]:
    """(CPU us per tick, sleeps per tick) of the plain sleep loop (``SLEEP``) at ``rate``."""
    out = subprocess.run(
        [sys.executable, "-c", SLEEP, str(rate), str(seconds)], capture_output=True, text=True, check=True, timeout=120
    )
    cpu_us, sleeps = (float(v) for v in out.stdout.split())
    return cpu_us, sleeps


def client(rate: int, seconds: float, url: str) -> tuple[float, float]:
    """(CPU us per request, sleeps per request) of the smallest paced client (``CLIENT``) at ``rate``."""
    port = url.rsplit(":", 1)[1]
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, str(rate), str(seconds), port, str(len(BODY))],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    cpu_us, sleeps = (float(v) for v in out.stdout.split())
    return cpu_us, sleeps


def runs_as() -> str:
    """How the replay CLI runs its request path: compiled (the build matches) or interpreted, and why."""
    code = "import shadowtap.replayer; from shadowtap.wire import native; print(native.STATUS)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def spread(values: list[float], fmt: str) -> str:
    """The median, and the range when there are several."""
    median = format(statistics.median(values), fmt)
    if len(values) < 2:
        return median
    return f"{median} ({format(min(values), fmt)}..{format(max(values), fmt)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40_000, help="requests for the unpaced run")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each paced run")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each paced rate")
    parser.add_argument("--reference", action="store_true", help="also wrk closed loop and --workers 2")
    parser.add_argument("--server", choices=("auto", "nginx", "asyncio"), default="auto", help="the target")
    http2 = parser.add_mutually_exclusive_group()
    http2.add_argument("--http2", action="store_true", help="also replay over HTTP/2 (h2c) to nginx")
    http2.add_argument("--http2-only", action="store_true", help="HTTP/2 and the unpaced HTTP/1.1 run only")
    args = parser.parse_args()
    args.http2 = args.http2 or args.http2_only
    if args.reference and shutil.which("wrk") is None:
        print("wrk is not installed (scripts/ensure-system-deps.sh wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as tmp_name:
        tmp = Path(tmp_name)
        write_tape(tmp / "one", 1, spacing_us=1)
        write_tape(tmp / "fast", args.requests, spacing_us=1)
        for rate in RATES:
            write_tape(tmp / f"rate{rate}", paced_requests(rate, args.seconds), spacing_us=1)
        write_tape(tmp / "recorded", paced_requests(MAIN_RATE, args.seconds), spacing_us=1, recorded=True)
        with target_server(tmp, args.server) as (url, server, h2_url):
            if args.http2 and h2_url is None:
                print("--http2 needs nginx (its h2c listener) as the target", file=sys.stderr)
                return 2
            # One-request replays at the start and before each paced run: one is a single sample of a
            # machine whose state drifts (0.34 to 0.40 s in one day's runs, 10 us a request at
            # 2,000/s), so the median of them all is what is subtracted.
            fixed_runs = [replay(tmp / "one", url, tmp / "one.json", "--speed", "0")["cpu_s"] for _ in range(2)]
            unpaced = [replay(tmp / "fast", url, tmp / "fast.json", "--speed", "0") for _ in range(args.repeat)]
            paced: dict[int, list[dict[str, Any]]] = {rate: [] for rate in RATES}
            rates = () if args.http2_only else RATES
            recorded: list[dict[str, Any]] = []
            for _ in range(args.repeat):
                for rate in rates:
                    out = tmp / f"rate{rate}.json"
                    fixed_runs.append(replay(tmp / "one", url, tmp / "one.json", "--speed", "0")["cpu_s"])
                    paced[rate].append(replay(tmp / f"rate{rate}", url, out, "--rate", str(rate)))
                if rates:
                    out = tmp / "recorded.json"
                    recorded.append(replay(tmp / "recorded", url, out, "--rate", str(MAIN_RATE)))
            fixed_s = statistics.median(fixed_runs)
            floors = {rate: [floor(rate, min(args.seconds, 2.0)) for _ in range(args.repeat)] for rate in rates}
            sleeps_only = {
                rate: [sleep_loop(rate, min(args.seconds, 2.0)) for _ in range(args.repeat)] for rate in rates
            }
            clients = {rate: [client(rate, min(args.seconds, 2.0), url) for _ in range(args.repeat)] for rate in rates}
            work_floors = {
                rate: [floor(rate, min(args.seconds, 2.0), work=True) for _ in range(args.repeat)] for rate in rates
            }
            h2_fixed_s = 0.0
            h2_unpaced: list[dict[str, Any]] = []
            h2_paced: list[dict[str, Any]] = []
            if h2_url is not None and args.http2:
                h2_fixed_s = min(
                    replay(tmp / "one", h2_url, tmp / "h2one.json", "--speed", "0")["cpu_s"] for _ in range(2)
                )
                for _ in range(args.repeat):
                    h2_unpaced.append(replay(tmp / "fast", h2_url, tmp / "h2fast.json", "--speed", "0"))
                    out = tmp / "h2rate.json"
                    h2_paced.append(replay(tmp / f"rate{MAIN_RATE}", h2_url, out, "--rate", str(MAIN_RATE)))
            wrk = two = None
            if args.reference:
                wrk = wrk_rate(url, tmp, args.requests, 3)
                two = replay(tmp / "fast", url, tmp / "two.json", "--speed", "0", "--workers", "2")

    def requests(doc: dict[str, Any]) -> int:
        return max(1, int(doc["summary"]["requests"]))

    def cpu_us(doc: dict[str, Any]) -> float:
        return max(0.0, float(doc["cpu_s"]) - fixed_s) / requests(doc) * 1e6

    def raw_cpu_us(doc: dict[str, Any]) -> float:
        return float(doc["cpu_s"]) / requests(doc) * 1e6

    def rate_of(doc: dict[str, Any]) -> float:
        return float(doc["summary"]["achieved_rate_per_s"])

    def lag(doc: dict[str, Any], key: str) -> float:
        return float(doc["latency_ms"]["start_lag"][key])

    def sleeps(doc: dict[str, Any]) -> float:
        return float(doc["sleeps"]) / requests(doc)

    def failed(docs: list[dict[str, Any]]) -> int:
        return sum(sum(d["summary"]["errors"].values()) for d in docs)

    unpaced_cpu = statistics.median(cpu_us(doc) for doc in unpaced)
    print(f"replayer: {runs_as()}; load average after the runs {os.getloadavg()[0]:.2f}")
    print(
        f"target: {server} on loopback; the replay CLI, 64 connections; fixed cost "
        f"{spread([t * 1000 for t in fixed_runs], '.0f')} ms CPU ({len(fixed_runs)} one-request replays)"
    )
    print(
        f"unpaced (--speed 0), {args.requests:,} requests:  {spread([rate_of(d) for d in unpaced], ',.0f')} req/s; "
        f"{spread([cpu_us(d) for d in unpaced], '.1f')} us CPU/request "
        f"(raw {spread([raw_cpu_us(d) for d in unpaced], '.1f')})"
    )
    if h2_unpaced:

        def h2_cpu_us(doc: dict[str, Any]) -> float:
            return max(0.0, float(doc["cpu_s"]) - h2_fixed_s) / requests(doc) * 1e6

        h2_cpu = [h2_cpu_us(d) for d in h2_unpaced]
        print(
            f"HTTP/2 (h2c, nginx's http2 listener, 4 connections), fixed cost {h2_fixed_s * 1000:.0f} ms CPU: unpaced "
            f"{spread([rate_of(d) for d in h2_unpaced], ',.0f')} req/s, {spread(h2_cpu, '.1f')} us CPU/request "
            f"= {statistics.median(h2_cpu) / unpaced_cpu:.2f}x HTTP/1.1; paced {MAIN_RATE:,}/s "
            f"{spread([h2_cpu_us(d) for d in h2_paced], '.1f')} us CPU/request, start lag p99 "
            f"{spread([lag(d, 'p99') for d in h2_paced], '.3f')} ms"
        )
    if args.http2_only:
        print(f"failed requests: {{'http2': {failed(h2_unpaced + h2_paced)}, 'unpaced': {failed(unpaced)}}}")
        return 0
    print(f"paced (--rate R, {args.seconds:g} s, {args.repeat} runs; budget <= 60 us CPU/request, lag p99 <= 2 ms):")
    for rate in RATES:
        docs = paced[rate]
        cpus = [cpu_us(d) for d in docs]
        raw = spread([raw_cpu_us(d) for d in docs], ".1f")
        p50, p99 = (spread([lag(d, key) for d in docs], ".3f") for key in ("p50", "p99"))
        achieved = spread([rate_of(d) for d in docs], ",.0f")
        print(
            f"  {rate:>6,}/s: {spread(cpus, '.1f')} us CPU/request = {statistics.median(cpus) / unpaced_cpu:.2f}x "
            f"unpaced (raw {raw}); start lag p50 {p50} p99 {p99} ms; achieved {achieved}/s; "
            f"{spread([sleeps(d) for d in docs], '.2f')} sleeps/request"
        )
    print(
        f"  {MAIN_RATE:>6,}/s, a sidecar's tape (each request with its recorded 1.6 KB answer and three "
        f"header fields): {spread([cpu_us(d) for d in recorded], '.1f')} us CPU/request; start lag p99 "
        f"{spread([lag(d, 'p99') for d in recorded], '.3f')} ms"
    )
    slow = paced[MAIN_RATE][-1]
    full_seconds = [row for row in slow["timeline"] if row["planned"] == MAIN_RATE]
    behind = max((row["planned"] - row["sent"] for row in full_seconds), default=0)
    planned_span_s = (paced_requests(MAIN_RATE, args.seconds) - 1) / MAIN_RATE
    print(
        f"  drift at {MAIN_RATE:,}/s: planned span {planned_span_s:.3f} s, first send to last done "
        f"{float(slow['summary']['elapsed_s']):.3f} s; worst full second {behind} requests behind plan"
    )
    print("floor: a bare loop on the same timer and due queue, sending nothing:")
    for rate in RATES:
        runs = floors[rate]
        print(
            f"  {rate:>6,}/s: {spread([r[0] for r in runs], '.1f')} us CPU/request; lag p50 "
            f"{spread([r[1] for r in runs], '.3f')} p99 {spread([r[2] for r in runs], '.3f')} ms; "
            f"{spread([r[3] for r in runs], '.2f')} sleeps/request"
        )
    print("sleep: a plain Python loop on time.sleep, no event loop (what a wake-up costs this machine):")
    for rate in RATES:
        runs = sleeps_only[rate]
        print(
            f"  {rate:>6,}/s: {spread([r[0] for r in runs], '.1f')} us CPU/wake-up; "
            f"{spread([r[1] for r in runs], '.2f')} sleeps/wake-up"
        )
    print("smallest client: the same loop sending prepared requests on 64 connections, answers only counted:")
    for rate in RATES:
        runs = clients[rate]
        print(
            f"  {rate:>6,}/s: {spread([r[0] for r in runs], '.1f')} us CPU/request; "
            f"{spread([r[1] for r in runs], '.2f')} sleeps/request"
        )
    print("bursts: the same loop running a fixed piece of Python work per request (what short bursts cost here):")
    for rate in RATES:
        runs = work_floors[rate]
        ratios = [r[0] / r[4] for r in runs if r[4] > 0]
        print(
            f"  {rate:>6,}/s: {spread([r[0] for r in runs], '.1f')} us CPU/request for work taking "
            f"{spread([r[4] for r in runs], '.1f')} us back to back: {spread(ratios, '.2f')}x"
        )
    if wrk is not None and two is not None:
        one = statistics.median(rate_of(d) for d in unpaced)
        print(f"wrk closed loop, 1 thread, 64 connections: {wrk:,.0f} req/s; unpaced replay is {one / wrk:.2f} of it")
        print(f"--workers 2, unpaced: {rate_of(two):,.0f} req/s ({rate_of(two) / one:.2f}x one process)")

    errors = {f"{rate}/s": failed(paced[rate]) for rate in RATES} | {"recorded": failed(recorded)}
    if h2_unpaced:
        errors["http2"] = failed(h2_unpaced + h2_paced)
    print(f"failed requests: {errors | {'unpaced': failed(unpaced)}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
