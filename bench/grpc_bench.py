"""gRPC unary with mirroring and recording on: shadowtap against nginx ``grpc_pass``, in one run.

The upstreams speak h2c gRPC. By default each is nginx (1 worker) answering every call with the
framed ``shop.Product`` that the suite's grpcio servicer (tests/grpc_fixtures) gives for
``GetProduct(id="p1")``, with ``grpc-status: 0`` trailers: a real grpcio server answers about 3k
unary calls/s on this machine, below what either proxy forwards, so it would measure grpcio.
``--upstream grpcio`` runs real grpcio servers (the fixture's servicer) instead. Primary and shadow
are separate processes of the same kind, and both proxies forward to the same primary.

``h2load`` drives ``POST /shop.Catalog/GetProduct`` with gRPC headers (``content-type:
application/grpc``, ``te: trailers``, the framed request as the body), ``-c32 -m10``, through nginx
(1 worker, ``grpc_pass``, no mirroring) and through ``shadowtap proxy`` (1 worker, ``h2c://``
primary, an ``h2c://`` shadow opted in by a ``grpc`` route, recording to a tape), in ``--rounds``
interleaved rounds; each shadowtap figure is printed with its ratio to the same round's nginx
figure, then the median ratio (the budget: at least 0.5x).

Then isolation: paced load at ``--rate`` calls/s (h2load ``--rps``, latencies from its per-request
log), the primary's p50/p99 through shadowtap with the shadow healthy, 10x slower (a grpcio server
that sleeps ten times the direct p50, 5 ms at least, before answering) and black-holed (accepts TCP,
never answers), beside nginx ``grpc_pass`` and shadowtap pass-through at the same rate, in
``--paced-rounds`` interleaved rounds. This script prints figures; it never asserts on them.

    .venv/bin/python bench/grpc_bench.py [--duration 5] [--rounds 3] [--rate 500] [--paced-duration 5]
                                         [--paced-rounds 3] [--upstream nginx|grpcio] [--tree DIR] [--json OUT]

``--tree DIR`` runs shadowtap from another checkout (a git worktree with its own ``make native``), to
measure the code before a change in the same minutes.

Needs nginx and h2load (``scripts/ensure-system-deps.sh nginx h2load``) and the dev dependencies
(grpcio-tools compiles the fixture's proto).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from h2_bench import H2LOAD, tree_data_path  # noqa: E402
from proxy_bench import (  # noqa: E402
    NGINX,
    PYTHON,
    ROOT,
    SHADOWTAP,
    Result,
    delivery_shares,
    free_port,
    interpreter,
    nginx,
    process,
)

METHOD = "/shop.Catalog/GetProduct"
GRPC_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
#: The slow shadow sleeps ten times the direct p50, and at least this long.
MIN_SLOW_DELAY_S = 0.005


def framed(message: bytes) -> bytes:
    """One gRPC length-prefixed message, uncompressed."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def write_messages(shop_dir: Path, out: Path) -> tuple[Path, Path]:
    """The framed request file h2load posts and the framed answer nginx serves: the fixture
    servicer's own answer to ``GetProduct(id="p1")``."""
    from tests.grpc_fixtures import compile_shop
    from tests.grpc_fixtures.server import make_servicer

    shop = compile_shop(shop_dir)
    request = shop.pb2.GetProductRequest(id="p1")
    answer = asyncio.run(make_servicer(shop, "v1").GetProduct(request, None))
    request_file, answer_file = out / "request.bin", out / "product.bin"
    request_file.write_bytes(framed(request.SerializeToString()))
    answer_file.write_bytes(framed(answer.SerializeToString()))
    return request_file, answer_file


# --- upstreams ---------------------------------------------------------------------------------------


def grpc_origin(port: int, answer_dir: Path) -> str:
    """An nginx h2c server answering every POST with the framed product and OK trailers. The static
    module refuses POST with 405: error_page turns that into the file. It would answer before the
    request's DATA arrived and reset the rest of the stream (RST_STREAM, NO_ERROR), which proxies
    count as failed calls: ``mirror_request_body`` makes it read the whole request first."""
    return f"""
  server {{
    listen 127.0.0.1:{port} http2; http2_max_concurrent_streams 1024;
    location = /_read_body {{ internal; return 204; }}
    location / {{
      mirror /_read_body; mirror_request_body on; etag off;
      types {{ }} default_type application/grpc; root {answer_dir};
      try_files /product.bin =404; error_page 405 =200 $uri;
      add_trailer grpc-status 0 always; add_trailer grpc-message "" always;
    }}
  }}
"""


@contextlib.contextmanager
def grpcio_server(shop_dir: Path, port: int, version: str, delay_s: float = 0.0) -> Iterator[None]:
    argv = [PYTHON, __file__, "--serve-grpcio", str(shop_dir), str(port), version, str(delay_s)]
    with process(argv, ready_port=port, cwd=ROOT):
        yield


async def serve_grpcio(shop_dir: Path, port: int, version: str, delay_s: float) -> None:
    """The fixture's servicer on ``port``; GetProduct sleeps ``delay_s`` first when it is > 0."""
    import grpc

    from tests.grpc_fixtures import compile_shop
    from tests.grpc_fixtures.server import make_servicer

    shop = compile_shop(shop_dir / f"serve-{os.getpid()}")
    servicer = make_servicer(shop, version)
    if delay_s > 0:
        answer = servicer.GetProduct

        async def slow(request: Any, context: Any) -> Any:
            await asyncio.sleep(delay_s)
            return await answer(request, context)

        servicer.GetProduct = slow
    server = grpc.aio.server()
    shop.pb2_grpc.add_CatalogServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(None)


@contextlib.contextmanager
def slow_h2(port: int, answer_file: Path, delay_s: float) -> Iterator[None]:
    argv = [PYTHON, __file__, "--serve-slow-h2", str(port), str(answer_file), str(delay_s)]
    with process(argv, ready_port=port, cwd=ROOT):
        yield


async def serve_slow_h2(port: int, answer: bytes, delay_s: float) -> None:
    """An h2c gRPC server answering every call with ``answer`` (the framed product) and OK trailers
    ``delay_s`` after the call's end, on uvloop and shadowtap's compiled HTTP/2 connection: a slow
    shadow that costs next to no CPU, so that what the primary's latency shows is the proxy's share
    (a grpcio server spends a good part of a core at 1,000 calls/s on these two cores)."""
    from shadowtap.wire.h2conn import DataReceived, H2Connection, StreamEnded

    loop = asyncio.get_running_loop()
    head = [(b":status", b"200"), (b"content-type", b"application/grpc")]

    class Slow(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)
            self.conn = H2Connection(False)
            self.conn.initiate_connection()
            self.transport.write(self.conn.data_to_send())

        def data_received(self, data: bytes) -> None:
            try:
                events = self.conn.receive_data(data)
            except Exception:  # noqa: BLE001 - a bench server: a broken peer just goes
                self.transport.close()
                return
            for event in events:
                if isinstance(event, DataReceived) and event.flow_controlled_length:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded):
                    loop.call_later(delay_s, self.answer, event.stream_id)
            self.transport.write(self.conn.data_to_send())

        def answer(self, stream_id: int) -> None:
            with contextlib.suppress(Exception):  # the stream may be gone (reset, connection closed)
                self.conn.send_headers(stream_id, head)
                self.conn.send_data(stream_id, answer)
                self.conn.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)
            if not self.transport.is_closing():
                self.transport.write(self.conn.data_to_send())

    server = await loop.create_server(Slow, "127.0.0.1", port, backlog=4096)
    async with server:
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


@contextlib.contextmanager
def blackhole(port: int) -> Iterator[None]:
    with process([PYTHON, __file__, "--serve-blackhole", str(port)], ready_port=port):
        yield


async def serve_blackhole(port: int) -> None:
    """Accepts connections, reads what comes, never writes a byte (not even HTTP/2 SETTINGS)."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", port, backlog=4096)
    async with server:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


def mirror_outcomes(admin_port: int) -> dict[str, float]:
    """The copies' outcomes by reason (``mirrored``/``ok``/``queue-full`` ...), from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    outcomes: dict[str, float] = {}
    for labels, value in re.findall(r"^shadowtap_mirror_outcomes_total\{([^}]*)\}\s+(\S+)$", text, re.M):
        outcome = re.search(r'outcome="([^"]*)"', labels)
        if outcome:
            outcomes[outcome.group(1)] = outcomes.get(outcome.group(1), 0.0) + float(value)
    return outcomes


# --- load ----------------------------------------------------------------------------------------------


def run_h2load(port: int, request_file: Path, extra: list[str], timeout_s: float, log: Path | None = None) -> str:
    argv = [H2LOAD, *GRPC_HEADERS, "-d", str(request_file), *extra]
    if log is not None:
        argv.append(f"--log-file={log}")
    out = subprocess.run([*argv, f"http://127.0.0.1:{port}{METHOD}"], capture_output=True, text=True, timeout=timeout_s)
    if "status codes:" not in out.stdout:
        raise RuntimeError(f"h2load output not understood:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def throughput(port: int, request_file: Path, duration_s: float, warmup_s: float = 1.0) -> dict[str, float]:
    """h2load -c32 -m10 over h2c: calls/s and how many answers were not 2xx."""
    text = run_h2load(
        port, request_file, ["-c32", "-m10", "-t1", f"-D{duration_s:g}", f"--warm-up-time={warmup_s:g}"],
        timeout_s=duration_s + warmup_s + 60,
    )  # fmt: skip
    rate = re.search(r"finished in [^,]+, ([\d.]+) req/s", text)
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    failed = re.search(r"requests: .*, (\d+) failed", text)
    if rate is None or status is None:
        raise RuntimeError(f"h2load output not understood:\n{text}")
    errors = sum(int(status.group(i)) for i in (2, 3, 4)) + (int(failed.group(1)) if failed else 0)
    return {"req_per_s": float(rate.group(1)), "ok": float(status.group(1)), "errors": float(errors)}


def paced(port: int, request_file: Path, rate_per_s: int, duration_s: float, work: Path) -> dict[str, float]:
    """h2load at a fixed rate (4 connections, ``--rps`` each): p50/p99 from its per-request log."""
    log = work / f"paced-{port}.log"
    log.unlink(missing_ok=True)
    connections = 4
    run_h2load(
        port, request_file,
        ["-c4", "-m8", "-t1", f"--rps={max(1, rate_per_s // connections)}", f"-D{duration_s:g}", "--warm-up-time=1"],
        timeout_s=duration_s + 61, log=log,
    )  # fmt: skip
    latencies_ms, errors = [], 0
    for line in log.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        if not fields[1].startswith("2"):
            errors += 1
        latencies_ms.append(int(fields[2]) / 1000)
    if not latencies_ms:
        raise RuntimeError(f"h2load logged no requests to {log}")
    latencies_ms.sort()

    def pct(p: float) -> float:
        return latencies_ms[min(len(latencies_ms) - 1, int(p / 100 * len(latencies_ms)))]

    return {"calls": float(len(latencies_ms)), "p50_ms": pct(50), "p99_ms": pct(99), "errors": float(errors)}


# --- main ----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per h2load run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds (default 3)")
    parser.add_argument("--rate", type=int, default=500, help="paced calls/s for isolation (default 500)")
    parser.add_argument("--paced-duration", type=float, default=5.0, help="seconds per paced run (default 5)")
    parser.add_argument("--paced-rounds", type=int, default=3, help="interleaved paced rounds (default 3)")
    parser.add_argument("--upstream", choices=("nginx", "grpcio"), default="nginx", help="h2c gRPC upstreams")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose shadowtap runs (default: this)")
    parser.add_argument("--serve-grpcio", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument(
        "--slow-shadow",
        choices=("grpcio", "h2"),
        default="grpcio",
        help="the 10x slower shadow: a grpcio server (default), or a CPU-cheap h2c one (uvloop, compiled HTTP/2)",
    )
    parser.add_argument("--serve-blackhole", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-slow-h2", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_slow_h2:
        port, answer_file, delay_s = args.serve_slow_h2
        import uvloop

        uvloop.run(serve_slow_h2(int(port), Path(answer_file).read_bytes(), float(delay_s)))
        return 0
    if args.serve_grpcio:
        shop_dir, port, version, delay_s = args.serve_grpcio
        asyncio.run(serve_grpcio(Path(shop_dir), int(port), version, float(delay_s)))
        return 0
    if args.serve_blackhole:
        asyncio.run(serve_blackhole(args.serve_blackhole))
        return 0
    for tool in (NGINX, H2LOAD):
        if not os.path.exists(tool):
            print(f"grpc_bench: {tool} is not installed (scripts/ensure-system-deps.sh nginx h2load)", file=sys.stderr)
            return 2
    names = ("primary", "shadow", "slow", "hole", "nginx", "pass", "tap", "tap_admin", "tap_slow", "tap_hole")
    ports = {name: free_port() for name in names}
    print(
        f"grpc_bench: unary {METHOD}, h2load -c32 -m10 -t1 -D{args.duration:g} (h2c, gRPC headers), "
        f"1 worker each, {args.rounds} rounds; upstreams: {args.upstream}"
    )
    print(f"  cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f} (shared machine: ratios matter)")
    print(f"  {interpreter()}")
    tree = args.tree.resolve()
    tree_env = {**os.environ, "PYTHONPATH": str(tree)}
    print(f"  shadowtap from {tree}: {tree_data_path(tree)}")
    figures: dict[str, Any] = {"upstream": args.upstream, "throughput": {}, "paced": {}}
    with tempfile.TemporaryDirectory(prefix="shadowtap-grpc-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's worker (nobody, when started as root) reads the answer file here
        request_file, answer_file = write_messages(work / "shop", work)

        def upstream(name: str, version: str) -> None:
            if args.upstream == "nginx":
                stack.enter_context(nginx(work / name, grpc_origin(ports[name], work), ports[name]))
            else:
                stack.enter_context(grpcio_server(work / "shop", ports[name], version))

        def tap(port: str, shadow: str, admin: str | None = None) -> None:
            argv = [
                *SHADOWTAP, "proxy", "--listen", f"127.0.0.1:{ports[port]}",
                "--primary", f"h2c://127.0.0.1:{ports['primary']}",
                "--shadow", f"v2=h2c://127.0.0.1:{ports[shadow]}", "--route", f"grpc={METHOD}",
                "--no-live-diff",  # mirroring and recording alone, beside nginx grpc_pass
                "--tape", str(work / f"tape-{port}"), "--workers", "1",
                "--admin", f"127.0.0.1:{ports[admin]}" if admin else "off",
            ]  # fmt: skip
            stack.enter_context(
                process(argv, ready_port=ports[port], cwd=tree, env=tree_env, stdout=subprocess.DEVNULL)
            )

        upstream("primary", "v1")
        upstream("shadow", "v2")
        front = f"""
  upstream primary {{ server 127.0.0.1:{ports["primary"]}; keepalive 64; }}
  server {{ listen 127.0.0.1:{ports["nginx"]} http2; location / {{ grpc_pass grpc://primary; }} }}
"""
        stack.enter_context(nginx(work / "front", front, ports["nginx"]))
        tap("tap", "shadow", admin="tap_admin")
        pass_argv = [
            *SHADOWTAP, "proxy", "--listen", f"127.0.0.1:{ports['pass']}",
            "--primary", f"h2c://127.0.0.1:{ports['primary']}", "--workers", "1", "--admin", "off",
        ]  # fmt: skip
        stack.enter_context(
            process(pass_argv, ready_port=ports["pass"], cwd=tree, env=tree_env, stdout=subprocess.DEVNULL)
        )

        nginx_name = "nginx grpc_pass (1 worker, no mirror)"
        tap_name = "shadowtap, mirror + record"
        pass_name = "shadowtap, pass-through (no shadow, no tape)"
        cases = [
            ("direct (primary)", ports["primary"]),
            (nginx_name, ports["nginx"]),
            (pass_name, ports["pass"]),
            (tap_name, ports["tap"]),
        ]
        results: dict[str, list[dict[str, float]]] = figures["throughput"]
        for round_index in range(args.rounds):
            print(f"  round {round_index + 1}:")
            for name, port in cases:
                result = throughput(port, request_file, args.duration)
                results.setdefault(name, []).append(result)
                ratio = ""
                if name in (tap_name, pass_name):
                    reference = results[nginx_name][-1]["req_per_s"]
                    result["ratio_to_nginx"] = result["req_per_s"] / reference if reference else 0.0
                    ratio = f"  {result['ratio_to_nginx']:.2f}x nginx"
                errors = f", {result['errors']:.0f} failed or non-2xx" if result["errors"] else ""
                print(f"    {name:<44} {result['req_per_s']:>9,.0f} calls/s{errors}{ratio}")
        shares = Result(tap_name, 0.0, 0.0, 0.0)
        delivery_shares(shares, ports["tap_admin"])
        figures["mirrored_share"], figures["taped_share"] = shares.mirrored_share, shares.taped_share
        outcomes = mirror_outcomes(ports["tap_admin"])
        figures["mirror_outcomes"] = outcomes
        print("      copies by outcome: " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(outcomes.items())))
        print("  median ratio to nginx grpc_pass (same round):")
        for name in (pass_name, tap_name):
            ratios = [r["ratio_to_nginx"] for r in results[name]]
            figures[f"median_ratio {name}"] = statistics.median(ratios)
            listed = ", ".join(f"{r:.2f}" for r in ratios)
            print(f"    {name:<44} {statistics.median(ratios):.2f}x  (rounds: {listed})")

        print(f"  isolation: paced {args.rate} calls/s for {args.paced_duration:g} s (h2load --rps, 4 connections)")
        direct = paced(ports["primary"], request_file, args.rate, args.paced_duration, work)
        delay_s = max(MIN_SLOW_DELAY_S, 10 * direct["p50_ms"] / 1000)
        print(f"    direct (primary): p50 {direct['p50_ms']:.2f} ms, p99 {direct['p99_ms']:.2f} ms")
        print(f"    the slow shadow ({args.slow_shadow}) sleeps {delay_s * 1000:.1f} ms per call")
        figures["paced"]["direct"] = [direct]
        figures["slow_delay_ms"] = delay_s * 1000
        figures["slow_shadow"] = args.slow_shadow
        if args.slow_shadow == "h2":
            stack.enter_context(slow_h2(ports["slow"], answer_file, delay_s))
        else:
            stack.enter_context(grpcio_server(work / "shop", ports["slow"], "v2", delay_s))
        stack.enter_context(blackhole(ports["hole"]))
        tap("tap_slow", "slow")
        tap("tap_hole", "hole")
        paced_cases = [
            ("shadow healthy", ports["tap"]),
            ("shadow 10x slower", ports["tap_slow"]),
            ("shadow black-holed", ports["tap_hole"]),
        ]
        references = [("nginx grpc_pass", ports["nginx"]), ("shadowtap pass-through", ports["pass"])]
        for round_index in range(args.paced_rounds):
            print(f"   round {round_index + 1}:")
            for name, port in [*references, *paced_cases]:
                result = paced(port, request_file, args.rate, args.paced_duration, work)
                figures["paced"].setdefault(name, []).append(result)
                errors = f", {result['errors']:.0f} non-2xx" if result["errors"] else ""
                print(f"    {name:<24} {result['calls']:>6,.0f} calls  p50 {result['p50_ms']:.2f} ms  "
                      f"p99 {result['p99_ms']:.2f} ms{errors}")  # fmt: skip
        healthy = statistics.median(r["p99_ms"] for r in figures["paced"]["shadow healthy"])
        print("  primary's p99 against the healthy shadow's (median of rounds; budget: within 10%):")
        for name, _ in paced_cases[1:]:
            p99 = statistics.median(r["p99_ms"] for r in figures["paced"][name])
            figures[f"p99_ratio {name}"] = p99 / healthy if healthy else 0.0
            print(f"    {name:<24} p99 {p99:.2f} ms against {healthy:.2f} ms: {p99 / healthy - 1:+.0%}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
