"""HTTP/2 pass-through speed: shadowtap against nginx, measured in one run with ``h2load``.

A fast upstream (nginx, 1 worker, a 60-byte JSON ``return``) listens for h2c (prior knowledge) and
for HTTP/1.1. ``h2load -c32 -m10`` (32 connections, 10 streams each) runs against it directly,
through nginx (1 worker, ``listen ... http2`` and ``proxy_pass`` to the upstream's HTTP/1.1 port:
nginx cannot proxy plain HTTP/2 upstream), and through ``shadowtap proxy`` (1 worker) with an
``h2c://`` primary (streams multiplexed onto the upstream's h2c port) and with an ``http://`` primary
(streams translated to HTTP/1.1, as nginx does). On a shared machine the load moves between runs,
so the cases run in ``--rounds`` interleaved rounds (nginx, then each shadowtap case, each round) and
each shadowtap figure is printed with its ratio to the same round's nginx figure, then the median
ratio (the budget: at least 0.5x), and the CPU each shadowtap process spent per request after the
warm-up (what its own code costs, which the machine's load moves far less than requests/s). This
script prints figures; it never asserts on them.

``--tree DIR`` runs shadowtap from another checkout (a git worktree with its own ``make native``;
default: this one), and ``--before DIR`` adds that checkout's two shadowtap cases to each round, so
a change is measured beside the code before it in the same minutes.

    .venv/bin/python bench/h2_bench.py [--duration 6] [--rounds 3] [--tree DIR] [--before DIR] [--json OUT]

Needs nginx and h2load (``scripts/ensure-system-deps.sh nginx h2load``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy_bench import (  # noqa: E402
    BODY,
    PYTHON,
    ROOT,
    SHADOWTAP,
    free_port,
    interpreter,
    nginx,
    process,
    process_tree_cpu_s,
)

H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"


def run_h2load(port: int, duration_s: float, warmup_s: float = 1.0, cpu_pid: int | None = None) -> dict[str, float]:
    """h2load over h2c (prior knowledge): requests/s and the mean request time; with ``cpu_pid``, the
    CPU that process spent per request after the warm-up (a figure the machine's load moves far less
    than requests/s: the proxy's own work, not its share of two busy cores)."""
    argv = [H2LOAD, "-c32", "-m10", "-t1", f"-D{duration_s:g}", f"--warm-up-time={warmup_s:g}",
            f"http://127.0.0.1:{port}/"]  # fmt: skip
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        cpu_start = 0.0
        if cpu_pid is not None:
            time.sleep(warmup_s)
            cpu_start = process_tree_cpu_s(cpu_pid)
        text, stderr = proc.communicate(timeout=duration_s + warmup_s + 60)
        cpu_s = process_tree_cpu_s(cpu_pid) - cpu_start if cpu_pid is not None else 0.0
    rate = re.search(r"finished in [^,]+, ([\d.]+) req/s", text)
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", text)
    if rate is None or status is None:
        raise RuntimeError(f"h2load output not understood:\n{text}\n{stderr}")
    result = {
        "req_per_s": float(rate.group(1)),
        "ok": float(status.group(1)),
        "errors": float(sum(int(status.group(i)) for i in (2, 3, 4))),
        "mean_request": _ms(mean.group(1)) if mean else float("nan"),
    }
    if cpu_pid is not None and result["ok"]:
        result["cpu_us_per_request"] = cpu_s * 1e6 / result["ok"]
    return result


def tree_data_path(tree: Path) -> str:
    """Whether ``tree``'s data path runs compiled, asked the way its proxy processes start."""
    return subprocess.run(
        [PYTHON, "-c", "import shadowtap.proxy; from shadowtap.wire import native; print(native.STATUS)"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
    ).stdout.strip()


def _ms(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per h2load run (default 6)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose shadowtap runs (default: this)")
    parser.add_argument("--before", type=Path, help="a checkout to run beside it (its cases are named 'before:')")
    args = parser.parse_args()
    for tool in (shutil.which("nginx") or "/usr/sbin/nginx", H2LOAD):
        if not os.path.exists(tool):
            print(f"h2_bench: {tool} is not installed (scripts/ensure-system-deps.sh nginx h2load)", file=sys.stderr)
            return 2
    ports = {
        name: free_port() for name in ("origin_h1", "origin_h2", "nginx_h2", "tap_h2", "tap_h1", "old_h2", "old_h1")
    }
    results: dict[str, list[dict[str, float]]] = {}
    print(f"h2_bench: h2load -c32 -m10 -t1 -D{args.duration:g} (h2c), 1 worker each, {args.rounds} rounds")
    print(f"  cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f} (shared machine: ratios matter)")
    print(f"  {interpreter()}")
    trees = {"": args.tree.resolve()}
    if args.before is not None:
        trees["before: "] = args.before.resolve()
    for label, tree in trees.items():
        print(f"  {label or 'now: '}{tree}: {tree_data_path(tree)}")
    with tempfile.TemporaryDirectory(prefix="shadowtap-h2-bench-") as tmp:
        work = Path(tmp)
        answer = f"location / {{ default_type application/json; return 200 '{BODY}'; }}"
        origin = f"""
  server {{ listen 127.0.0.1:{ports["origin_h1"]}; {answer} }}
  server {{ listen 127.0.0.1:{ports["origin_h2"]} http2; http2_max_concurrent_streams 1024; {answer} }}
"""
        proxy = f"""
  upstream origin {{ server 127.0.0.1:{ports["origin_h1"]}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{ports["nginx_h2"]} http2;
    location / {{ proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://origin; }}
  }}
"""

        def tap(port: int, primary: str) -> list[str]:
            return [*SHADOWTAP, "proxy", "--listen", f"127.0.0.1:{port}", "--primary", primary,
                    "--admin", "off", "--workers", "1"]  # fmt: skip

        nginx_name = "nginx h2 proxy_pass (1 worker)"
        cases = [
            ("direct (nginx h2c upstream)", ports["origin_h2"]),
            (nginx_name, ports["nginx_h2"]),
        ]
        with contextlib.ExitStack() as stack:
            stack.enter_context(nginx(work / "origin", origin, ports["origin_h1"]))
            stack.enter_context(nginx(work / "proxy", proxy, ports["nginx_h2"]))
            pids: dict[int, int] = {}
            for label, tree in trees.items():
                h2_port, h1_port = (ports["old_h2"], ports["old_h1"]) if label else (ports["tap_h2"], ports["tap_h1"])
                env = {**os.environ, "PYTHONPATH": str(tree)}
                for name, port, primary in (
                    ("shadowtap, h2c primary (multiplexed)", h2_port, f"h2c://127.0.0.1:{ports['origin_h2']}"),
                    ("shadowtap, http/1.1 primary (translated)", h1_port, f"http://127.0.0.1:{ports['origin_h1']}"),
                ):
                    tap_proc = stack.enter_context(
                        process(tap(port, primary), ready_port=port, cwd=tree, env=env, stdout=subprocess.DEVNULL)
                    )
                    pids[port] = tap_proc.pid
                    cases.append((label + name, port))
            for round_index in range(args.rounds):
                print(f"  round {round_index + 1}:")
                for name, port in cases:
                    result = run_h2load(port, args.duration, cpu_pid=pids.get(port))
                    results.setdefault(name, []).append(result)
                    ratio = ""
                    if port in pids:
                        reference = results[nginx_name][-1]["req_per_s"]
                        result["ratio_to_nginx"] = result["req_per_s"] / reference if reference else 0.0
                        ratio = f"  {result['ratio_to_nginx']:.2f}x nginx"
                        if "cpu_us_per_request" in result:
                            ratio += f", {result['cpu_us_per_request']:.0f} us CPU/request"
                    errors = f", {result['errors']:.0f} non-2xx" if result["errors"] else ""
                    print(f"    {name:<44} {result['req_per_s']:>9,.0f} req/s  "
                          f"mean {result['mean_request']:.2f} ms{errors}{ratio}")  # fmt: skip
        print("  median ratio to nginx h2 proxy_pass (same round):")
        for name, _ in cases[2:]:
            ratios = [r["ratio_to_nginx"] for r in results[name]]
            listed = ", ".join(f"{r:.2f}" for r in ratios)
            cpu = statistics.median(r.get("cpu_us_per_request", float("nan")) for r in results[name])
            print(f"    {name:<44} {statistics.median(ratios):.2f}x  (rounds: {listed}), {cpu:.0f} us CPU/request")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
