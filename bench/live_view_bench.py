"""What the live view costs the proxy's own process: its CPU time while ``/diff`` is polled, and the
primary's latency with and without the polling.

Builds a live store of ``--pairs`` pairs (``bench/live_results_bench.py``'s ``build_store``), starts
``python -m shadowtap proxy`` on it (``live.db``; a primary and a ``v2`` shadow answering a small
body, from a process of their own) from the source tree ``--tree`` (default: this one; give a git
worktree of an older commit to compare), waits ``--settle`` seconds (the live results catch up on
the store), then, for ``--seconds`` each:

- idle: nothing sent;
- polled: ``GET /diff?shadow=v2&examples=1`` once a second, as the live page asks for it;
- paced: ``--rate`` requests a second through the proxy (keep-alive, ``--connections``), latency
  measured from each request's scheduled time; then the same with the polling.

For each, the CPU time (user + system, /proc/PID/stat) of the proxy's process alone: not its
children (tape writer, live differ, analysis process). Run it alone on the machine:

    flock /tmp/shadowtap-bench.lock .venv/bin/python bench/live_view_bench.py --pairs 300000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from live_results_bench import build_store

_SERVER = r"""
import asyncio, sys
BODY = b'{"ok": true, "items": [1, 2, 3]}'
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        writer.close()
async def main():
    servers = [await asyncio.start_server(handle, "127.0.0.1", 0) for _ in range(2)]
    print(" ".join(str(s.sockets[0].getsockname()[1]) for s in servers), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def poll_diff(admin: str, seconds: float) -> tuple[int, int]:
    """``GET /diff`` once a second for ``seconds``: (answers 200, others)."""
    ok = bad = 0
    host, _, port = admin.removeprefix("http://").partition(":")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /diff?shadow=v2&examples=1 HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n".encode())
        data = await reader.read()
        writer.close()
        if data.startswith(b"HTTP/1.1 200"):
            ok += 1
        else:
            bad += 1
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    return ok, bad


async def paced(url: str, rate: int, seconds: float, connections: int) -> list[float]:
    """``rate`` requests a second over ``connections`` keep-alive connections; latencies in ms from
    each request's scheduled time."""
    host, _, port = url.removeprefix("http://").partition(":")
    request = f"GET /items/1 HTTP/1.1\r\nhost: {host}\r\n\r\n".encode()
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    latencies: list[float] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        while (due := await queue.get()) is not None:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            latencies.append((time.monotonic() - due) * 1000)
        writer.close()

    tasks = [asyncio.create_task(worker()) for _ in range(connections)]
    start = time.monotonic() + 0.1
    total = int(rate * seconds)
    for i in range(total):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(due)
    for _ in tasks:
        queue.put_nowait(None)
    await asyncio.gather(*tasks)
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run(args: argparse.Namespace, proxy: str, admin: str, pid: int) -> None:
    await asyncio.sleep(args.settle)

    async def phase(name: str, work: asyncio.Future[object] | None) -> object:
        before, wall = cpu_s(pid), time.monotonic()
        result = await work if work is not None else await asyncio.sleep(args.seconds)
        used, elapsed = cpu_s(pid) - before, time.monotonic() - wall
        print(f"{name:<28} proxy process CPU {used:6.2f} s in {elapsed:5.1f} s ({100 * used / elapsed:5.1f} %)",
              flush=True)  # fmt: skip
        return result

    await phase("idle", None)
    ok, bad = await phase("/diff polled 1/s", asyncio.ensure_future(poll_diff(admin, args.seconds)))  # type: ignore[misc]
    print(f"    /diff answers: {ok} ok, {bad} not", flush=True)
    latencies = await phase(f"paced {args.rate}/s", asyncio.ensure_future(paced(proxy, args.rate, args.seconds,
                                                                                args.connections)))  # fmt: skip
    assert isinstance(latencies, list)
    print(f"    p50 {pct(latencies, 0.5):.2f} ms p99 {pct(latencies, 0.99):.2f} ms max {max(latencies):.2f} ms",
          flush=True)  # fmt: skip
    both = asyncio.gather(paced(proxy, args.rate, args.seconds, args.connections), poll_diff(admin, args.seconds))
    result = await phase(f"paced {args.rate}/s + /diff 1/s", both)  # type: ignore[arg-type]
    assert isinstance(result, list)
    latencies = result[0]
    print(f"    p50 {pct(latencies, 0.5):.2f} ms p99 {pct(latencies, 0.99):.2f} ms max {max(latencies):.2f} ms; "
          f"/diff answers: {result[1][0]} ok, {result[1][1]} not", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300_000)
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent), help="source tree to run")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds before measuring")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--rate", type=int, default=300)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shadowtap-live-view-") as directory:
        db = str(Path(directory) / "live.sqlite")
        build_store(db, args.pairs, secondary=False)
        server = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        primary, shadow = server.stdout.readline().split()
        env = {**os.environ, "PYTHONPATH": args.tree}
        proxy_process = subprocess.Popen(
            [sys.executable, "-m", "shadowtap", "proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
             "--primary", f"http://127.0.0.1:{primary}", "--shadow", f"v2=http://127.0.0.1:{shadow}",
             "--tape", str(Path(directory) / "tape"), "--set", f"live.db={db}"],
            cwd=args.tree, env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proxy_process.stdout is not None
            line = proxy_process.stdout.readline()
            match = re.search(r"listening on (\S+) admin (\S+) workers 1 pid (\d+)", line)
            assert match, line
            print(f"tree {args.tree}, {args.pairs:,} pairs in the live store; {line.strip()}", flush=True)
            asyncio.run(run(args, match.group(1), match.group(2), int(match.group(3))))
        finally:
            proxy_process.terminate()
            proxy_process.wait(60)
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
