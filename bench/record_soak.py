"""Recording soak: does the proxy's memory level off over millions of recorded requests?

A real proxy (``shadowtap.workers.serve_proxy`` on uvloop, in its own process, as ``shadowtap proxy`` runs it)
records every exchange to a tape in a temporary directory, with its tape writer process; a fixed
upstream answers 60 bytes of JSON from another process; this process drives keep-alive GETs over
``--connections`` connections (no client library: a small asyncio protocol) for ``--requests``
requests or ``--max-seconds``, whichever comes first. Every ``--samples``-th of the run it prints
the resident set size of the proxy and of its tape writer child (``/proc/PID/status``, VmRSS), and
at the end the growth per request over the second half of the run (a least-squares slope: the
first half is warm-up, pools and arenas filling). ``--no-record`` runs the same proxy without a
tape, for the baseline; ``--shadow`` mirrors every request to a second upstream (joins in the tape
writer child); ``--tracemalloc N`` traces the proxy's allocations (N frames) and prints, at each
sample, the allocation sites that grew most since the previous one (slow: for finding, not timing).
This script prints figures; it never asserts on them.

    .venv/bin/python bench/record_soak.py [--requests 300000] [--max-seconds 600] [--connections 16]
                                          [--samples 20] [--no-record] [--shadow] [--writer process]
                                          [--tracemalloc 0] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BODY = b'{"status":"ok","service":"shadowtap-soak","payload":"abcdef"}'
REQUEST = b"GET /soak/%d?page=2 HTTP/1.1\r\nHost: soak\r\nUser-Agent: record-soak\r\n\r\n"

UPSTREAM = f"""
import asyncio, sys, uvloop

RESPONSE = (b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: {len(BODY)}\\r\\n\\r\\n"
            + {BODY!r})

class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        # Bodiless GETs: one answer per request head.
        self.buffer += data
        heads = self.buffer.count(b"\\r\\n\\r\\n")
        if heads:
            self.buffer = self.buffer[self.buffer.rfind(b"\\r\\n\\r\\n") + 4 :]
            self.transport.write(RESPONSE * heads)

async def main():
    server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

uvloop.run(main())
"""

PROXY = """
import json, signal, sys, tracemalloc, uvloop
from shadowtap.workers import serve_proxy
from shadowtap.proxy.config import ProxyConfig

config = ProxyConfig.from_mapping(json.loads(sys.argv[1]))
frames = int(sys.argv[2])
if frames:
    tracemalloc.start(frames)
    previous = [tracemalloc.take_snapshot()]

    def dump(signum, frame):
        ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]
        snapshot = tracemalloc.take_snapshot().filter_traces(ignore)
        key = "traceback" if frames > 1 else "lineno"
        stats = snapshot.compare_to(previous[0], key)[:12]
        previous[0] = snapshot
        out = ["--- tracemalloc: grew most since the previous sample"]
        for stat in stats:
            where = " <- ".join(f"{f.filename.rsplit('/', 2)[-2:][-1]}:{f.lineno}" for f in stat.traceback[:frames])
            out.append(f"{stat.size_diff:+10d} B {stat.count_diff:+7d} blocks  {where}")
        print("\\n".join(out), file=sys.stderr, flush=True)

    signal.signal(signal.SIGUSR1, dump)
serve_proxy(config, run=uvloop.run)
"""


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class Client(asyncio.Protocol):
    """One keep-alive connection sending GETs one after another while the shared budget lasts."""

    def __init__(self, run: Run, done: asyncio.Future[None]) -> None:
        self.run = run
        self.done = done
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        run = self.run
        if run.sent >= run.limit or time.monotonic() > run.deadline:
            assert self.transport is not None
            self.transport.close()
            return
        run.sent += 1
        assert self.transport is not None
        self.transport.write(REQUEST % run.sent)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(buffer) < end + 4 + length:
                return
            if not head.startswith(b"http/1.1 200"):
                self.run.errors += 1
            del buffer[: end + 4 + length]
            self.run.answered += 1
            self.run.on_answer()
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


@dataclass
class Sample:
    requests: int
    seconds: float
    proxy_rss: int
    writer_rss: int


class Run:
    def __init__(self, limit: int, deadline: float, every: int, on_sample: Any) -> None:
        self.limit = limit
        self.deadline = deadline
        self.every = every
        self.on_sample = on_sample
        self.sent = 0
        self.answered = 0
        self.errors = 0

    def on_answer(self) -> None:
        if self.answered % self.every == 0:
            self.on_sample(self.answered)


def slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


async def drive(port: int, connections: int, run: Run) -> None:
    loop = asyncio.get_running_loop()
    done = [loop.create_future() for _ in range(connections)]
    for future in done:
        await loop.create_connection(lambda f=future: Client(run, f), "127.0.0.1", port)  # type: ignore[misc]
    await asyncio.gather(*done)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300_000, help="requests to send (millions for a long soak)")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="stop after this long whatever the count")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--samples", type=int, default=20, help="RSS samples over the run")
    parser.add_argument("--no-record", action="store_true", help="no tape: the baseline")
    parser.add_argument("--shadow", action="store_true", help="mirror every request to a second upstream")
    parser.add_argument("--writer", choices=("process", "thread"), default="process")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES", help="trace the proxy's allocations")
    parser.add_argument("--json", metavar="OUT", help="write the samples and the slopes here")
    args = parser.parse_args()

    import uvloop

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes: list[subprocess.Popen[str]] = []
    try:
        upstreams = []
        for _ in range(2 if args.shadow else 1):
            upstream = subprocess.Popen([PYTHON, "-c", UPSTREAM], stdout=subprocess.PIPE, text=True, env=env)
            processes.append(upstream)
            assert upstream.stdout is not None
            upstreams.append(f"http://127.0.0.1:{int(upstream.stdout.readline())}")
        with tempfile.TemporaryDirectory(prefix="record-soak-") as work:
            config: dict[str, Any] = {"listen": "127.0.0.1:0", "primary": upstreams[0], "admin": {"listen": "off"}}
            if not args.no_record:
                config["record"] = {"tape": str(Path(work) / "tape"), "writer": args.writer, "fsync": "none",
                                    "max_segment_bytes": 16 * 1024 * 1024}  # fmt: skip
            if args.shadow:
                config["shadows"] = {"v2": upstreams[1]}
            proxy = subprocess.Popen(
                [PYTHON, "-c", PROXY, json.dumps(config), str(args.tracemalloc)],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                cwd=ROOT,
            )
            processes.append(proxy)
            assert proxy.stdout is not None
            line = proxy.stdout.readline()
            if "listening on" not in line:
                raise SystemExit(f"the proxy did not start: {line!r}")
            port = int(line.split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1])
            started = time.monotonic()
            samples: list[Sample] = []
            mode = "no tape" if args.no_record else f"recording ({args.writer} writer)"
            print(f"record soak: {args.requests:,} requests at most, {args.max_seconds:g} s at most, "
                  f"{args.connections} connections, {mode}{', one shadow' if args.shadow else ''}")  # fmt: skip
            print(f"{'requests':>10} {'seconds':>8} {'req/s':>7} {'proxy RSS':>12} {'writer RSS':>12}")

            def sample(answered: int) -> None:
                writers = children(proxy.pid)
                s = Sample(answered, time.monotonic() - started, rss_bytes(proxy.pid),
                           sum(rss_bytes(p) for p in writers))  # fmt: skip
                samples.append(s)
                rate = answered / s.seconds if s.seconds else 0.0
                print(f"{answered:>10,} {s.seconds:>8.1f} {rate:>7,.0f} {s.proxy_rss / 1e6:>9.2f} MB "
                      f"{s.writer_rss / 1e6:>9.2f} MB", flush=True)  # fmt: skip
                if args.tracemalloc:
                    os.kill(proxy.pid, signal.SIGUSR1)

            every = max(args.requests // args.samples, 1)
            run = Run(args.requests, started + args.max_seconds, every, sample)
            sample(0)
            uvloop.run(drive(port, args.connections, run))
            time.sleep(0.5)  # the writer's last batch
            if run.answered % every:
                sample(run.answered)
            half = [s for s in samples if s.requests >= run.answered / 2]
            proxy_slope = slope([(s.requests, s.proxy_rss) for s in half])
            writer_slope = slope([(s.requests, s.writer_rss) for s in half])
            print(f"answered {run.answered:,} ({run.errors} not 200) in {samples[-1].seconds:.1f} s")
            print(f"growth over the second half: proxy {proxy_slope:+.3f} B/request, "
                  f"writer {writer_slope:+.3f} B/request")  # fmt: skip
            if args.json:
                Path(args.json).write_text(json.dumps({
                    "args": vars(args), "samples": [asdict(s) for s in samples],
                    "proxy_bytes_per_request": proxy_slope, "writer_bytes_per_request": writer_slope,
                }, indent=2))  # fmt: skip
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(timeout=60)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
